"""A run planned before any work: ``plan_run(config) -> RunPlan``, a frozen record of what the run
is (method and its config, shard set, view, classes, setting, feature dimension, CLIP cache),
with every option, regime, cache and dimension checked. ``RunPlan.to_json()`` is what the run
folder's ``config.json`` records; runs, sweeps, ``eval`` and the benches build from a plan."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from shards import caches
from shards.base.errors import WsmlError
from shards.shardset import ShardSet, open_shard_set
from shards.views import check_view_labels
from train.config import RunConfig, run_dict, split_options, with_run_options
from train.data import cache_dim, check_crops, read_clip_text
from train.integrity import check_global_batch, check_steps, data_identity
from train.methods import MethodConfig, MethodInfo, config_dict, get_method
from train.runfolder import require_tensorboard
from train.scale import check_scale
from train.settings import Setting, get_setting

RUN_FORMAT, RUN_VERSION = "wsml-run", 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RunPlan:
    """What a run is, decided and checked before any work. ``config`` has the run options of
    ``-o`` applied and the view, CLIP cache, backbone and preset filled in; ``method`` is the
    method's resolved config; ``rows`` the split sizes. A plan without a shard set (``shard_set``
    None) describes in-memory data (the benches)."""

    config: RunConfig
    info: MethodInfo
    method: MethodConfig
    setting: Setting
    dataset: str
    classes: tuple[str, ...]
    view: str
    kind: str  # the view's regime: full, single-positive or partial
    rows: dict[str, int]
    feature_dim: int | None = None  # linear: the cache's dimension
    world_size: int = 1
    shard_set: ShardSet | None = None
    data: dict[str, str] | None = None  # sha256 of what it reads (train/integrity.py)
    encoder: dict[str, Any] | None = None  # linear: the cache's meta.json but its splits

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_method(self, **values: Any) -> RunPlan:
        """The same run with method config fields replaced (a sweep member's lr and batch)."""
        return dataclasses.replace(self, method=dataclasses.replace(self.method, **values))

    def to_json(self) -> dict[str, Any]:
        """The run's record (``config.json``); a resumed run must match it."""
        out: dict[str, Any] = {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "run": run_dict(self.config),
            "method": config_dict(self.method),
            "method_paper": self.info.paper,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "regime": {"view": self.view, "kind": self.kind},
            "rows": dict(self.rows),
            "world_size": self.world_size,
            "versions": {"torch": str(torch.__version__)},  # not TorchVersion: plain data
        }
        if self.feature_dim is not None:
            out["feature_dim"] = self.feature_dim
        if self.data is not None:
            out["data"] = dict(self.data)
        if self.encoder is not None:  # what predict and export rebuild, with no shard set
            out["encoder"] = dict(self.encoder)
        if self.config.sweep:
            out["sweep"] = {
                "lrs": list(self.config.sweep_lrs),
                "batches": list(self.config.sweep_batches),
            }
        return out


def plan_run(config: RunConfig, world_size: int | None = None) -> RunPlan:
    """Check everything that needs no data (options, regime, caches, dimensions) and return the
    plan; ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    ss = open_shard_set(config.shards)
    config = dataclasses.replace(config, shards=str(ss.root.resolve()))
    info = get_method(config.method)
    info.check_setting(config.setting)
    check_untrained(info, config)  # clip-zeroshot and --sweep
    if config.tensorboard:
        require_tensorboard()
    names = [f.name for f in dataclasses.fields(info.config)]
    method_opts, run_opts = split_options(names, config.method_options)
    config = with_run_options(dataclasses.replace(config, method_options=method_opts), run_opts)
    setting = get_setting(config.setting)
    config = setting.complete(config, info)
    view, kind = choose_view(ss, info, config.regime, config.fraction)
    mcfg = info.create_config(ss.manifest["dataset"], method_opts)
    check_scale(ss, info, mcfg, view, config.features)
    check_global_batch(mcfg.batch_size, world)
    batches = list(config.sweep_batches) if config.sweep else [mcfg.batch_size]
    check_steps(int(ss.split("train")["num_samples"]), batches, world)
    clip = clip_tag(ss, info, config)
    if clip is not None:
        read_clip_text(ss, clip, info.name)
        if info.needs_crops:
            check_crops(ss, clip, mcfg.grid, info.name)
    feature_dim = setting.check(config, ss)
    return RunPlan(
        config=dataclasses.replace(config, regime=view, clip=clip),
        info=info,
        method=mcfg,
        setting=setting,
        dataset=ss.manifest["dataset"],
        classes=tuple(ss.classes),
        view=view,
        kind=kind,
        rows={s: int(ss.split(s)["num_samples"]) for s in SPLITS},
        feature_dim=feature_dim,
        world_size=world,
        shard_set=ss,
        data=data_identity(ss, view, config.features, clip),
        encoder=_encoder_recipe(ss, config.features) if feature_dim is not None else None,
    )


def _encoder_recipe(ss: ShardSet, tag: str) -> dict[str, Any]:
    """What made the feature cache (its meta.json without the per-split entries): kept in the
    run folder, so the encoder can be rebuilt for raw images after the data moved."""
    return {k: v for k, v in caches.get_cache(ss.root, tag).items() if k != "splits"}


def choose_view(
    ss: ShardSet, info: MethodInfo, view: str | None, fraction: float = 0.1
) -> tuple[str, str]:
    """(view, kind): the observed view to train on and its regime kind. ``full`` labels with
    unknown entries (Open Images) count as partial. ``partial`` names the view of PU-MLC's
    partial labels with ``fraction`` (``cli.py observe DIR partial --fraction F``)."""
    if view == "partial":
        from shards.regimes import Partial, exact

        view = Partial(fraction=fraction).view_name()
        if view not in ss.regimes:
            raise WsmlError(
                f"{ss.root} has no partial view with fraction {exact(fraction)} ({view}): make "
                f"it with `cli.py observe {ss.root} partial --fraction {exact(fraction)}` "
                f"(views: {', '.join(['full', *ss.regimes])})"
            )
    unknown = ss.has_unknown("train")  # read once: both the default and the kind need it
    if view is None:
        view = default_view(ss, info, fraction, unknown=unknown)
    if view in ("full", "clean"):
        kind = "partial" if unknown else "full"
    elif view in ss.regimes:
        kind = ss.regimes[view].get("trains_as", ss.regimes[view]["regime"])
        train = ss.observed_lists(view, "train")
        positives, negatives = (len(x.values) for x in (train.positives, train.negatives))
        check_view_labels(ss.root, view, positives, negatives, len(train))
    else:
        ss.observed_lists(view, "train")  # raises, listing the views
        raise AssertionError("unreachable")
    info.check_regime(kind)
    return view, kind


def default_view(
    ss: ShardSet, info: MethodInfo, fraction: float = 0.1, *, unknown: bool = False
) -> str:
    """The view a method trains on when no --regime is given: the first of its regimes (in the
    order it declares them, its paper's first) that the shard set has; for partial labels the
    source's own labels where they have unknown entries (``unknown``: Open Images), else the
    view with ``fraction``, else any partial view."""
    views = {v: m.get("trains_as", m["regime"]) for v, m in ss.regimes.items()}
    for kind in info.regimes:
        if kind == "full":
            return "full"
        if kind == "partial" and unknown:
            return "full"  # Open Images: its human labels are the partial labels (LL's setting)
        preferred = kind
        if kind == "partial":
            from shards.regimes import Partial

            preferred = Partial(fraction=fraction).view_name()
        if preferred in views:
            return preferred
        fits = [v for v, k in views.items() if k == kind]
        if fits:
            return fits[0]
    have = ", ".join(["full", *views])
    raise WsmlError(
        f"method {info.name} trains on {', '.join(info.regimes)} labels; {ss.root} has views: "
        f"{have} (make one with cli.py observe)"
    )


def clip_tag(ss: ShardSet, info: MethodInfo, config: RunConfig) -> str | None:
    if not info.needs_clip:
        return None
    tag = config.clip or config.features
    if tag is None:
        raise WsmlError(
            f"method {info.name} needs a CLIP cache (image and class-text embeddings): make "
            f"one with `cli.py cache-clip --shards {ss.root}` and pass --clip TAG "
            f"(caches here: {', '.join(caches.list_caches(ss.root)) or 'none'})"
        )
    cache_dim(ss, tag, "CLIP embeddings")
    return tag


def check_untrained(info, config) -> None:
    """A method that trains nothing has no lr x batch grid to sweep: refused before any work."""
    if not info.trains and config.sweep:
        from shards.base.errors import WsmlError

        raise WsmlError(f"method {info.name} trains nothing: --sweep does not apply")
