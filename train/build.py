"""A run built from its plan (train/plan.py): the data, model, method, optimiser, schedule and
EMA, and the state of a resumed run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shards.errors import WsmlError
from shards.shardset import ShardSet
from train.config import (
    RunConfig,
)
from train.context import Context
from train.data import FeatureData, ImageData, e2e_preset, read_clip_text
from train.entry_metrics import create_class_groups
from train.methods import Method, MethodConfig, MethodInfo, ModelSpec, get_method
from train.model import Ema, create_classifier
from train.optim import Schedule, create_optimizer, create_schedule, param_groups
from train.plan import resolve
from train.runfolder import RunFolder, set_rng_state

CHECKPOINT_FORMAT = "wsml-checkpoint"


@dataclass
class LoopState:
    """Where the run stands after its last completed epoch; travels in every checkpoint."""

    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best_val: float = -math.inf
    best_weights: str = "model"
    since_best: int = 0
    stopped: str | None = None

    def update(self, epoch: int, val_maps: dict[str, float], cfg: MethodConfig) -> bool:
        """Record epoch ``epoch``'s val mAP of each set of weights; returns whether it is the
        new best. Stops as Zhou (``stop_patience`` epochs without a better val mAP) or Kim
        (val mAP more than ``stop_drop`` points below the best)."""
        name, val = max(val_maps.items(), key=lambda kv: kv[1])  # ties: the trained weights
        improved = val > self.best_val
        if improved:
            self.best_epoch, self.best_val, self.best_weights = epoch, val, name
            self.since_best = 0
        else:
            self.since_best += 1
        if cfg.stop_patience and self.since_best >= cfg.stop_patience:
            self.stopped = f"no better val mAP for {self.since_best} epoch(s) (stop_patience)"
        elif cfg.stop_drop and val < self.best_val - cfg.stop_drop:
            self.stopped = f"val mAP {val:.2f} fell more than {cfg.stop_drop} below the best"
        self.epoch = epoch
        return improved


@dataclass
class Run:
    config: RunConfig
    resolved: dict[str, Any]
    folder: RunFolder
    data: FeatureData | ImageData
    model: nn.Module  # the plain module (checkpoints, EMA): Classifier, CamClassifier or own
    net: nn.Module  # what trains: compiled and/or DDP-wrapped
    method: Method
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ema: Ema | None = None
    state: LoopState = field(default_factory=LoopState)
    step_threads: int = 0  # intra-op threads while training (0: unchanged)

    def eval_models(self) -> dict[str, nn.Module]:
        models: dict[str, nn.Module] = {"model": self.model}
        if self.ema is not None:
            models["ema"] = self.ema.module
        return models

    def checkpoint(self) -> dict[str, Any]:
        from train.runfolder import rng_state

        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.resolved,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "loop": dataclasses.asdict(self.state),
            "rng": rng_state(),
        }


def prepare(config: RunConfig, ctx: Context) -> Run:
    config, resolved, ss = resolve(config, ctx)
    info = get_method(config.method)
    mcfg = info.resolve(resolved["dataset"], config.method_options)
    torch.manual_seed(config.seed)
    model = None
    if config.setting == "e2e":
        model, provenance = build_model(config, resolved, ss, info, mcfg)
        resolved["backbone"] = provenance
    folder = RunFolder(config.run_dir)
    saved = folder.check_reuse(resolved, resume=config.resume, overwrite=config.overwrite)
    ctx.barrier()  # every rank has looked at the folder before rank 0 writes to it
    data = create_data(config, ss, mcfg, ctx, model)
    text = None
    if info.needs_clip:
        text = torch.from_numpy(read_clip_text(ss, config.clip, info.name)).float()
    run = assemble(config, resolved, folder, data, info, mcfg, ctx, model=model, text=text)
    if saved is not None:
        restore(run, folder.load_checkpoint(device=ctx.device))
        if ctx.is_main:
            folder.keep_metrics(run.state.epoch)
    elif ctx.is_main:
        folder.start(resolved)
    ctx.barrier()
    run.net = ctx.wrap(torch.compile(run.model) if config.compile else run.model)
    return run


def build_model(
    config: RunConfig,
    resolved: dict[str, Any],
    ss: ShardSet,
    info: MethodInfo,
    mcfg: MethodConfig,
    weights: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The e2e model and its weights' provenance: the method's own (``info.build_model``) or a
    backbone with the run's head. ``weights`` overrides the run's (``"none"`` to load a
    checkpoint into). Sets ``resolved["feature_dim"]`` for backbone + head."""
    weights = config.weights if weights is None else weights
    num_classes = len(resolved["classes"])
    if info.build_model is not None:
        if config.head != "linear":
            raise WsmlError(f"method {info.name} brings its own model; --head does not apply")
        spec = ModelSpec(
            ss, tuple(resolved["classes"]), mcfg, config.backbone, weights, config.seed
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = info.build_model(spec)
        return model, dict(getattr(model, "weights_info", None) or {"backbone": config.backbone})
    from models.backbones import create_backbone

    backbone, binfo = create_backbone(config.backbone, weights=weights)
    resolved["feature_dim"] = binfo.feature_dim
    model = create_classifier(
        binfo.feature_dim, num_classes, config.seed, backbone, config.head, config.boostlu_alpha
    )
    return model, {"weights": binfo.weights, "sha256": binfo.weights_sha256}


def create_run_method(info, cfg, data, num_classes: int, text, seed: int, device):
    """A run's method (or a sweep member's): state sized to the training split, seeded, on the
    device before the optimiser that holds its parameters is built."""
    return info.create(
        data.num_rows("train"),
        num_classes,
        cfg,
        observed=data.observed("train") if info.needs_observed else None,
        text_embeddings=text,
        generator=torch.Generator().manual_seed(seed),
    ).to(device)


def assemble(
    config: RunConfig,
    resolved: dict[str, Any],
    folder: RunFolder | None,
    data: FeatureData | ImageData,
    info: MethodInfo,
    mcfg: MethodConfig,
    ctx: Context,
    *,
    model: nn.Module | None = None,
    text: torch.Tensor | None = None,
) -> Run:
    """Model (default: a linear head on ``data``'s features), method (on the device before the
    optimiser is built), optimiser with the model's and the method's groups, schedule and EMA
    around ``data``."""
    num_classes = len(resolved["classes"])
    e2e = model is not None
    if model is None:
        model = create_classifier(resolved["feature_dim"], num_classes, config.seed)
    model.to(ctx.device)
    if e2e and ctx.device.type == "cuda":  # with channels_last batches
        model.to(memory_format=torch.channels_last)
    method = create_run_method(info, mcfg, data, num_classes, text, config.seed, ctx.device)
    method.bind_model(model)
    if hasattr(model, "param_groups"):
        groups = model.param_groups(mcfg)
    else:
        groups = param_groups(model, model.head, mcfg)
    groups += method.extra_parameters()
    return Run(
        config=config,
        resolved=resolved,
        folder=folder,
        data=data,
        model=model,
        net=model,
        method=method,
        optimizer=create_optimizer(groups, mcfg),
        schedule=create_schedule(mcfg, data.steps_per_epoch),
        ema=Ema(model, mcfg.ema) if mcfg.ema else None,
        step_threads=1 if isinstance(data, FeatureData) and ctx.device.type == "cpu" else 0,
    )


def create_data(config, ss, mcfg, ctx, model=None) -> FeatureData | ImageData:
    data = _read_data(config, ss, mcfg, ctx, model)
    data.groups = create_class_groups(ss, config.groups)  # G1..G5 to report, or None
    return data


def _read_data(config, ss, mcfg, ctx, model=None) -> FeatureData | ImageData:
    if config.setting == "linear":
        return FeatureData.read(
            ss,
            config.features,
            config.regime,
            ctx,
            seed=config.seed,
            batch_size=mcfg.batch_size,
            clip=config.clip,
            eval_rows=config.eval_batch_size,
        )
    cfg = model.pretrained_cfg  # timm's: the mean/std the backbone was trained with
    preset = e2e_preset(config.preset, config.image_size, cfg)
    return ImageData(
        ss,
        config.regime,
        ctx,
        preset=preset,
        seed=config.seed,
        batch_size=mcfg.batch_size,
        clip=config.clip,
        backend=config.loader,
        eval_batch=config.eval_batch_size,
    )


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WsmlError(f"{run.folder.path} holds a checkpoint of another format")
    run.model.load_state_dict(ckpt["model"])
    run.method.load_state_dict(ckpt["method"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["ema"])
    run.state = LoopState(**ckpt["loop"])
    set_rng_state(ckpt["rng"])
