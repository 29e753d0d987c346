"""A finished run as one network for use on new images (``cli.py predict`` and ``export``):
normalised NCHW float batch -> (N, L) logits, with the run's evaluation preprocessing.

Linear runs: the encoder that made the run's feature cache, rebuilt from its ``meta.json``
(``models/rebuild.py``), then the trained head. End-to-end runs: the model rebuilt from the
checkpoint, as ``cli.py eval`` does (its EMA weights when those were selected).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipelines.presets import Preset
from shards.errors import WsmlError
from shards.shardset import ShardSet, open_shard_set
from train.config import RunConfig
from train.runfolder import BEST, RunFolder


class EncoderHead(nn.Module):
    """A linear run's whole network: the cache's encoder, then the trained classifier."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module):
        super().__init__()
        self.encoder, self.classifier = encoder, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, L)
        return self.classifier(self.encoder(x))


@dataclass
class RunNetwork:
    """What predict and export need from a run folder."""

    net: nn.Module  # eval mode, on the device
    preset: Preset  # the run's evaluation preprocessing
    classes: list[str]
    config: RunConfig
    saved: dict[str, Any]  # the run's config.json
    shards: ShardSet
    folder: RunFolder

    @property
    def threshold(self) -> float:
        return self.config.threshold


def read_run(run_dir: str | os.PathLike) -> tuple[RunFolder, dict[str, Any], RunConfig]:
    """The run folder, its saved config and the RunConfig it was trained with."""
    from train.run import saved_run_config

    folder = RunFolder(run_dir)
    saved = folder.read_config()
    if saved is None:
        raise WsmlError(f"{run_dir} holds no run (no config.json): pass a run folder of train")
    return folder, saved, saved_run_config(saved, run_dir)


def load_network(
    run_dir: str | os.PathLike, device: str = "cpu", weights: str | None = None
) -> RunNetwork:
    """The run's selected checkpoint as one network (``weights``: the file the feature cache's
    encoder was made with, when it was made with a local file)."""
    folder, saved, config = read_run(run_dir)
    if config.sweep:
        raise WsmlError(
            f"{run_dir} is a --sweep run, which keeps no checkpoint: train its chosen member "
            "alone (its lr and batch size are in summary.json) and use that run"
        )
    if not (folder.path / BEST).is_file():
        raise WsmlError(f"{run_dir} has no checkpoint ({BEST}): the run has not finished an epoch")
    ckpt = folder.load_checkpoint(BEST)
    ss = open_shard_set(config.shards)
    classes = list(saved["classes"])
    if config.setting == "e2e":
        net, preset = _e2e_network(config, saved, ckpt, ss)
    else:
        net, preset = _linear_network(config, saved, ckpt, ss, weights)
    if hasattr(net, "inference_module"):  # constants folded (HSPNet's class features)
        with torch.no_grad():
            net = net.eval().inference_module()
    _check_classes(net, preset, len(classes), run_dir)
    net = net.to(device).eval().requires_grad_(False)
    return RunNetwork(net, preset, classes, config, saved, ss, folder)


def _state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    return ckpt["ema"] if ckpt["loop"]["best_weights"] == "ema" else ckpt["model"]


def _e2e_network(config, saved, ckpt, ss) -> tuple[nn.Module, Preset]:
    from train.data import e2e_preset
    from train.run import plan_saved_run

    plan = plan_saved_run(config.run_dir, saved)  # the run as planned, against its shard set
    model, _ = plan.setting.create_model(plan, weights="none")
    try:
        model.load_state_dict(_state(ckpt))
    except RuntimeError as e:  # shapes that differ: another number of classes, another model
        raise WsmlError(
            f"the checkpoint does not fit the model of the run's config.json "
            f"({len(saved['classes'])} classes): {' '.join(str(e).split())[:300]}"
        ) from e
    preset = e2e_preset(config.preset, config.image_size, model.pretrained_cfg)
    return model, preset


def _linear_network(config, saved, ckpt, ss, weights) -> tuple[nn.Module, Preset]:
    from models.heads import create_classifier
    from models.rebuild import create_cache_encoder
    from shards import embeddings as emb

    meta = emb.get_cache(ss.root, config.features)
    encoder, preset = create_cache_encoder(meta, config.features, weights)
    state = {k: v for k, v in _state(ckpt).items() if k.startswith("head.")}
    rows, dim = state["head.weight"].shape
    if dim != int(meta["dim"]):
        raise WsmlError(
            f"the run's head takes {dim} features, cache {config.features!r} gives {meta['dim']}"
        )
    classifier = create_classifier(dim, rows, config.seed)
    classifier.load_state_dict(state)
    return EncoderHead(encoder, classifier), preset


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


def describe_preprocessing(preset: Preset) -> dict[str, Any]:
    """What an application must do to an image before the network (export's sidecar)."""
    return {
        "preset": preset.name,
        "size": preset.size,
        "resize": preset.summary,
        "interpolation": next((i for i in ("bicubic", "bilinear") if i in preset.summary), ""),
        "mean": list(preset.mean),
        "std": list(preset.std),
        "scale": "RGB in [0, 1], then (x - mean) / std, NCHW float32",
    }
