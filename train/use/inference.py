"""A finished run as one network for use on new images (``cli.py predict`` and ``export``):
normalised NCHW float batch -> (N, L) logits, with the run's evaluation preprocessing, built
once (channels-last: the layout the caches were made in, and the fastest on a CPU).

The run's setting builds the network (``Setting.create_network``, from a :class:`TrainedRun`).
Linear runs: the encoder that made the run's feature cache, rebuilt from the recipe the run's
``config.json`` keeps (``models/rebuild.py``; older runs: the cache's ``meta.json``), then the
trained head; no shard set is needed. End-to-end runs: the model rebuilt from the checkpoint,
as ``cli.py eval`` does (its EMA weights when those were selected), planned against the shard
set. A sweep gives its pick (or, with ``member``, a member kept by ``--keep-members``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipelines.presets import Preset
from shards.base.errors import WsmlError
from shards.shardset import ShardSet, open_shard_set
from train.config import RunConfig
from train.runfolder import BEST, CONFIG, MEMBERS, RunFolder
from train.settings import get_setting

if TYPE_CHECKING:
    from train.plan import RunPlan


@dataclass(frozen=True)
class NetworkOptions:
    device: str = "cpu"
    weights: str | None = None  # the feature cache's weights file, when it was made with one
    shards: str | None = None  # where the run's shard set is now (None: where it was)
    member: str | None = None  # a sweep's member, "lr=…,batch=…" (None: the sweep's pick)


@dataclass
class RunNetwork:
    """What predict and export need from a run folder. ``folder`` holds the predictions and
    thresholds of the network (a sweep's member: its own folder)."""

    net: nn.Module  # eval mode, on the device
    preset: Preset  # the run's evaluation preprocessing
    classes: list[str]
    config: RunConfig
    saved: dict[str, Any]  # the run's config.json
    folder: RunFolder
    provenance: dict[str, Any] = field(default_factory=dict)
    shards_path: str | None = None

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @cached_property
    def shards(self) -> ShardSet:
        """The run's shard set (validation labels for thresholds), opened when first needed."""
        return open_run_shards(self.config, self.shards_path)


@dataclass
class TrainedRun:
    """A finished run as its setting rebuilds one network from it
    (``Setting.create_network``): its config, ``config.json`` and selected checkpoint; its
    shard set and plan are opened only when asked for (a linear run's network needs neither)."""

    config: RunConfig
    saved: dict[str, Any]  # the run's config.json
    ckpt: dict[str, Any]
    options: NetworkOptions

    @cached_property
    def shard_set(self) -> ShardSet:
        return open_run_shards(self.config, self.options.shards)

    @cached_property
    def plan(self) -> RunPlan:
        """The run as planned, against its shard set where it is now."""
        from train.run import plan_saved_run

        moved = {**self.saved, "run": {**self.saved["run"], "shards": str(self.shard_set.root)}}
        return plan_saved_run(self.config.run_dir, moved)

    def encoder_recipe(self) -> dict[str, Any]:
        """The feature cache's recipe: kept in config.json (runs since 2026-12), else read from
        the cache's meta.json in the shard set."""
        if "encoder" in self.saved:
            return self.saved["encoder"]
        from shards import caches

        return caches.get_cache(self.shard_set.root, self.config.features)


def read_run(run_dir: str | os.PathLike) -> tuple[RunFolder, dict[str, Any], RunConfig]:
    """The run folder, its saved config and the RunConfig it was trained with."""
    from train.run import saved_run_config

    folder = RunFolder(run_dir)
    saved = folder.read_config()
    if saved is None:
        raise WsmlError(f"{run_dir} holds no run (no config.json): pass a run folder of train")
    return folder, saved, saved_run_config(saved, run_dir)


def open_run_shards(config: RunConfig, given: str | None) -> ShardSet:
    """The shard set at ``given`` (``--shards``), else where the run recorded it."""
    if given is not None:
        return open_shard_set(given)
    try:
        return open_shard_set(config.shards)
    except WsmlError as e:
        raise WsmlError(
            f"the run's shard set cannot be opened where it was trained ({e}): pass --shards "
            "DIR where it is now"
        ) from None


def load_network(
    run_dir: str | os.PathLike, options: NetworkOptions = NetworkOptions()
) -> RunNetwork:
    """The run's selected checkpoint (a sweep's pick, or ``options.member``) as one network,
    built once."""
    folder, saved, config = read_run(run_dir)
    home, member = _home(folder, config, options.member)
    ckpt_path = home.path / BEST
    if not ckpt_path.is_file():
        raise WsmlError(f"{run_dir} has no checkpoint ({BEST}): the run has not finished an epoch")
    ckpt = home.load_checkpoint(BEST)
    classes = list(saved["classes"])
    trained = TrainedRun(config, saved, ckpt, options)
    net, preset = get_setting(config.setting).create_network(trained)
    if hasattr(net, "inference_module"):  # constants folded (HSPNet's class features)
        with torch.no_grad():
            net = net.eval().inference_module()
    _check_classes(net, preset, len(classes), run_dir)
    net = net.to(options.device).eval().requires_grad_(False)
    net = net.to(memory_format=torch.channels_last)
    provenance = _provenance(folder, ckpt_path, member, ckpt)
    run = RunNetwork(net, preset, classes, config, saved, home, provenance, options.shards)
    if "shard_set" in vars(trained):  # opened by the setting (e2e): thresholds read the same
        run.shards = trained.shard_set
    return run


def _home(folder: RunFolder, config: RunConfig, member: str | None):
    """(the folder of the network's checkpoint and predictions, the member's name or None)."""
    if member is not None and not config.sweep:
        raise WsmlError(f"--member picks a member of a --sweep run; {folder.path} is not one")
    if not config.sweep:
        return folder, None
    summary = folder.read_summary()
    if member is None:
        if not (folder.path / BEST).is_file():
            raise WsmlError(
                f"{folder.path} is a --sweep run that kept no weights (trained before sweeps "
                f"kept their pick's): train its chosen member alone ({summary.get('chosen')}) "
                "or the sweep again"
            )
        return folder, summary["chosen"]
    name = find_member(summary, member)
    home = RunFolder(folder.path / MEMBERS / name)
    if not (home.path / BEST).is_file():
        raise WsmlError(
            f"member {name} of {folder.path} kept no weights (only the pick, "
            f"{summary['chosen']}, is kept): train the sweep with --keep-members"
        )
    return home, name


@dataclass(frozen=True)
class MemberChoice:
    lr: float | None = None
    batch: int | None = None
    seed: int | None = None


def find_member(summary: dict[str, Any], text: str) -> str:
    """The name of the member ``text`` (``lr=1e-4,batch=8``) names in a sweep's summary."""
    from shards.base.options import parse_fields

    pairs = dict(p.split("=", 1) if "=" in p else (p, "") for p in text.split(",") if p)
    try:
        want = MemberChoice(**parse_fields(MemberChoice, pairs, "--member"))
    except WsmlError as e:
        raise WsmlError(f"--member {text}: {e}") from None
    fits = [
        name
        for name, m in summary["members"].items()
        if (want.lr is None or abs(m["lr"] - want.lr) <= 1e-12 * abs(want.lr))
        and (want.batch is None or m["batch_size"] == want.batch)
        and (want.seed is None or name.endswith(f"-s{want.seed}"))
    ]
    if len(fits) != 1:
        have = ", ".join(
            f"lr={m['lr']:g},batch={m['batch_size']}" for m in summary["members"].values()
        )
        what = "no member" if not fits else f"{len(fits)} members"
        raise WsmlError(f"--member {text}: {what} of the sweep fit (members: {have})")
    return fits[0]


def _provenance(folder: RunFolder, ckpt_path: Path, member: str | None, ckpt) -> dict[str, Any]:
    """Where the network comes from, for predictions' metadata and export's sidecar."""
    import shards
    from shards.base.fileio import sha256_file

    return {
        "run": str(folder.path.resolve()),
        "config_sha256": sha256_file(folder.path / CONFIG),
        "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "epoch": ckpt.get("epoch"),
        "member": member,
        "wsml_version": shards.__version__,
    }


def _check_classes(net: nn.Module, preset: Preset, num_classes: int, run_dir) -> None:
    """One tiny forward: the network must give one logit per class of the run."""
    x = torch.zeros(1, 3, preset.size, preset.size)
    with torch.no_grad():
        out = net.eval()(x)
    if tuple(out.shape) != (1, num_classes):
        raise WsmlError(
            f"the checkpoint of {run_dir} gives {out.shape[-1]} outputs, the run has "
            f"{num_classes} classes: the checkpoint belongs to another run"
        )


READER_RULES = (
    "RGB uint8 by wsml's image reader (shards/convert/images.py rgb_image, copied into "
    "preprocess.py): EXIF orientation applied; 16-bit samples to 8 bits by their high byte; "
    "grey, palette and CMYK converted to RGB; alpha dropped (the colour under it kept)"
)


def describe_preprocessing(preset: Preset) -> dict[str, Any]:
    """What an application must do to an image before the network, completely (export's
    sidecar; ``preprocess.py`` follows it): read, geometry, scale, mean and std."""
    from pipelines.presets import eval_geometry

    geometry = eval_geometry(preset)
    return {
        "preset": preset.name,
        "size": preset.size,
        "resize": preset.summary,
        "interpolation": geometry["interpolation"],
        "read": READER_RULES,
        "geometry": geometry,
        "channels": "RGB",
        "layout": "NCHW float32",
        "scale": "x / 255 (uint8 to [0, 1]), then (x - mean) / std per channel",
        "mean": list(preset.mean),
        "std": list(preset.std),
    }
