"""A run planned before any work: options, regime and view, caches and dimensions checked, and
the resolved config that the run folder records."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from shards import embeddings as emb
from shards.errors import WsmlError
from shards.shardset import ShardSet, open_shard_set
from train.config import (
    DEFAULT_BACKBONE,
    DEFAULT_PRESET,
    RunConfig,
    run_dict,
    split_options,
    with_run_options,
)
from train.context import Context
from train.data import read_clip_text
from train.methods import MethodInfo, config_dict, get_method
from train.runfolder import require_tensorboard
from train.scale import check_scale


def resolve_regime(
    ss: ShardSet, info: MethodInfo, view: str | None, fraction: float = 0.1
) -> tuple[str, str]:
    """(view, kind): the observed view to train on and its regime kind. ``full`` labels with
    unknown entries (Open Images) count as partial. ``partial`` names the view of PU-MLC's
    partial labels with ``fraction`` (``cli.py observe DIR partial --fraction F``)."""
    if view == "partial":
        from shards.regimes import Partial

        view = Partial(fraction=fraction).view_name()
        if view not in ss.regimes:
            raise WsmlError(
                f"{ss.root} has no partial view with fraction {fraction:g} ({view}): make it "
                f"with `cli.py observe {ss.root} partial --fraction {fraction:g}` "
                f"(views: {', '.join(['full', *ss.regimes])})"
            )
    if view is None:
        view = default_view(ss, info, fraction)
    if view in ("full", "clean"):
        kind = "partial" if ss.full_lists("train").has_unknown() else "full"
    elif view in ss.regimes:
        kind = ss.regimes[view]["regime"]
    else:
        ss.observed_lists(view, "train")  # raises, listing the views
        raise AssertionError("unreachable")
    info.check_regime(kind)
    return view, kind


def default_view(ss: ShardSet, info: MethodInfo, fraction: float = 0.1) -> str:
    """The view a method trains on when no --regime is given: the first of its regimes (in the
    order it declares them, its paper's first) that the shard set has; for partial labels the
    view with ``fraction``, else any partial view."""
    views = {v: m["regime"] for v, m in ss.regimes.items()}
    for kind in info.regimes:
        if kind == "full":
            return "full"
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


def _cache_dim(ss: ShardSet, tag: str, what: str) -> int:
    meta = emb.get_cache(ss.root, tag)
    missing = [s for s in ("train", "val", "test") if s not in meta["splits"]]
    if missing:
        raise WsmlError(f"{what} {tag!r} of {ss.root} lack split(s) {', '.join(missing)}")
    return int(meta["dim"])


def _clip_tag(ss: ShardSet, info: MethodInfo, config: RunConfig) -> str | None:
    if not info.needs_clip:
        return None
    tag = config.clip or config.features
    if tag is None:
        raise WsmlError(
            f"method {info.name} needs a CLIP cache (image and class-text embeddings): make "
            f"one with `cli.py cache-clip --shards {ss.root}` and pass --clip TAG "
            f"(caches here: {', '.join(emb.list_caches(ss.root)) or 'none'})"
        )
    _cache_dim(ss, tag, "CLIP embeddings")
    return tag


def _check_e2e(config: RunConfig) -> None:
    from pipelines.loader import BACKENDS
    from pipelines.presets import get_preset

    if not config.image_size:
        get_preset(config.preset)
    if config.loader != "auto":
        BACKENDS.get(config.loader)


def resolve(config: RunConfig, ctx: Context) -> tuple[RunConfig, dict[str, Any], ShardSet]:
    """Check everything that needs no data: options, regime, caches, dimensions; returns the
    config with the run options of ``-o`` applied and the resolved config to save."""
    ss = open_shard_set(config.shards)
    config = dataclasses.replace(config, shards=str(ss.root.resolve()))
    info = get_method(config.method)
    info.check_setting(config.setting)
    if config.tensorboard:
        require_tensorboard()
    names = [f.name for f in dataclasses.fields(info.config)]
    method_opts, run_opts = split_options(names, config.method_options)
    config = with_run_options(dataclasses.replace(config, method_options=method_opts), run_opts)
    if config.setting == "e2e":  # the method's protocol picks backbone and preset if not given
        config = dataclasses.replace(
            config,
            backbone=config.backbone or info.run_defaults.get("backbone", DEFAULT_BACKBONE),
            preset=config.preset or info.run_defaults.get("preset", DEFAULT_PRESET),
        )
    view, kind = resolve_regime(ss, info, config.regime, config.fraction)
    mcfg = info.resolve(ss.manifest["dataset"], method_opts)
    check_scale(ss, info, mcfg, view, config.features)
    ctx.local_batch(mcfg.batch_size)
    clip = _clip_tag(ss, info, config)
    if clip is not None:
        read_clip_text(ss, clip, info.name)
    resolved: dict[str, Any] = {
        "format": "wsml-run",
        "version": 1,
        "run": run_dict(dataclasses.replace(config, regime=view, clip=clip)),
        "method": config_dict(mcfg),
        "method_paper": info.paper,
        "dataset": ss.manifest["dataset"],
        "classes": list(ss.classes),
        "regime": {"view": view, "kind": kind},
        "rows": {s: int(ss.split(s)["num_samples"]) for s in ("train", "val", "test")},
        "world_size": ctx.world_size,
        "versions": {"torch": torch.__version__},
    }
    if config.setting == "linear":
        resolved["feature_dim"] = _cache_dim(ss, config.features, "features")
    else:
        _check_e2e(config)
    config = dataclasses.replace(config, regime=view, clip=clip)
    return config, resolved, ss
