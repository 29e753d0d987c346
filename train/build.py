"""A run built from its plan (``build_run(plan, ctx)``): data, model, method, optimiser, schedule
and EMA, and where each configuration it trains keeps its selection (:class:`Track`).
``start_run`` adds the run folder: a fresh run's ``config.json``, or the state of a resumed one."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shards.base.errors import WsmlError
from train.context import Context
from train.data import read_clip_text
from train.ema import Ema
from train.methods import Method, MethodConfig
from train.optim import (
    Schedule,
    create_optimizer,
    create_schedule,
    load_optimizer_state,
    param_groups,
)
from train.plan import RunPlan
from train.runfolder import RunFolder, rng_state, set_rng_state

CHECKPOINT_FORMAT = "wsml-checkpoint"


@dataclass
class LoopState:
    """Where a configuration stands after its last completed epoch; travels in every checkpoint."""

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
class Track:
    """One configuration a run trains, with its own selection and early stopping, and the
    folder its metrics and summary go to: a run has one; a sweep's stacked group one per
    member of the grid (train/sweep.py)."""

    name: str
    config: MethodConfig
    folder: RunFolder | None
    state: LoopState = field(default_factory=LoopState)
    meta: dict[str, Any] = field(default_factory=dict)  # what its summary names it by

    @property
    def active(self) -> bool:
        return self.state.stopped is None and self.state.epoch < self.config.epochs


@dataclass
class Run:
    plan: RunPlan
    record: dict[str, Any]  # config.json: the plan's record and the model's provenance
    data: Any  # train.data.FeatureData or ImageData (or what a bench gives)
    model: nn.Module  # the plain module (checkpoints, EMA)
    net: nn.Module  # what trains: compiled and/or DDP-wrapped
    method: Method
    optimizer: Any  # torch.optim.Optimizer, or the sweep's train.optim.MemberOptimizer
    schedule: Schedule
    tracks: list[Track]
    folder: RunFolder | None = None  # checkpoints (None: a sweep's group, not resumable)
    ema: Ema | None = None
    step: int = 0  # optimiser steps taken

    @property
    def state(self) -> LoopState:
        """The loop state of a run's one configuration."""
        return self.tracks[0].state

    @property
    def active(self) -> bool:
        return any(t.active for t in self.tracks)

    def eval_models(self) -> dict[str, nn.Module]:
        models: dict[str, nn.Module] = {"model": self.model}
        if self.ema is not None:
            models["ema"] = self.ema.module
        return models

    def checkpoint(self, loaders: list | None = None) -> dict[str, Any]:
        """What ``--resume`` continues from; ``loaders``: every rank's training loader state,
        by rank (``data.state_dict()``; None where the data keep none)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.record,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "loop": dataclasses.asdict(self.state),
            "rng": rng_state(),
            "loaders": loaders,
        }


def read_text_embeddings(plan: RunPlan) -> torch.Tensor | None:
    """The CLIP class-text embeddings of a method that needs them (None otherwise)."""
    if not plan.info.needs_clip or plan.shard_set is None:
        return None
    return torch.from_numpy(
        read_clip_text(plan.shard_set, plan.config.clip, plan.info.name)
    ).float()


def create_run_method(plan: RunPlan, data, text: torch.Tensor | None, device) -> Method:
    """A run's method (or a sweep member's): state sized to the training split, seeded, on the
    device before the optimiser that holds its parameters is built."""
    info = plan.info
    return info.create(
        data.num_rows("train"),
        plan.num_classes,
        plan.method,
        observed=data.observed("train") if info.needs_observed else None,
        text_embeddings=text,
        generator=torch.Generator().manual_seed(plan.config.seed),
        steps_per_epoch=data.steps_per_epoch,
    ).to(device)


def build_run(
    plan: RunPlan,
    ctx: Context,
    *,
    model: nn.Module | None = None,
    record: dict[str, Any] | None = None,
    data: Any = None,
    text: torch.Tensor | None = None,
    folder: RunFolder | None = None,
) -> Run:
    """The run ``plan`` describes, on ``ctx``'s device: model (the setting's unless given, with
    its record), data (the setting's unless given), method, optimiser with the model's and the
    method's groups, schedule and EMA."""
    if model is None:
        model, extra = plan.setting.create_model(plan)
        record = {**plan.to_json(), **extra}
    model = plan.setting.place(model, ctx)
    if data is None:
        data = plan.setting.create_data(plan, ctx, model)
    if text is None:
        text = read_text_embeddings(plan)
    method = create_run_method(plan, data, text, ctx.device)
    method.bind_model(model)
    mcfg = plan.method
    if hasattr(model, "param_groups"):
        groups = model.param_groups(mcfg)
    else:
        groups = param_groups(model, model.head, mcfg)
    groups += method.extra_parameters()
    return create_run(
        plan,
        data,
        model,
        method,
        create_optimizer(groups, mcfg),
        [Track("", mcfg, folder)],
        record=record if record is not None else plan.to_json(),
        folder=folder,
    )


def create_run(
    plan: RunPlan,
    data: Any,
    model: nn.Module,
    method: Method,
    optimizer: Any,
    tracks: list[Track],
    *,
    record: dict[str, Any],
    folder: RunFolder | None = None,
) -> Run:
    """The one place a :class:`Run`'s fields are filled (``build_run``'s runs and a sweep's
    groups): it trains ``model`` unwrapped until ``start_run`` wraps it, on the schedule of
    ``plan``'s method config, with an EMA of the model when that config asks."""
    mcfg = plan.method
    return Run(
        plan=plan,
        record=record,
        data=data,
        model=model,
        net=model,
        method=method,
        optimizer=optimizer,
        schedule=create_schedule(mcfg, data.steps_per_epoch),
        tracks=tracks,
        folder=folder,
        ema=Ema(model, mcfg.ema) if mcfg.ema else None,
    )


def start_run(plan: RunPlan, ctx: Context) -> Run:
    """A run with its folder: checked for reuse, then started afresh or restored from its last
    checkpoint (``--resume``); wrapped for DDP (and compiled) last."""
    config = plan.config
    torch.manual_seed(config.seed)
    model, extra = plan.setting.create_model(plan)
    record = {**plan.to_json(), **extra}
    folder = RunFolder(config.run_dir)
    saved = folder.check_reuse(record, resume=config.resume, overwrite=config.overwrite)
    ctx.barrier()  # every rank has looked at the folder before rank 0 writes to it
    run = build_run(plan, ctx, model=model, record=record, folder=folder)
    if saved is not None:
        ckpt = folder.load_checkpoint()  # to the CPU: RNG states must stay there
        restore(run, ckpt)
        restore_loader(run, ckpt.get("loaders"), ctx)
        if ctx.is_main:
            folder.keep_metrics(run.state.epoch)
    elif ctx.is_main:
        folder.start(with_provenance(record, plan))
    ctx.barrier()
    run.net = ctx.wrap(run.model, compile=config.compile)
    return run


def with_provenance(record: dict[str, Any], plan: RunPlan) -> dict[str, Any]:
    """config.json's content: the run's record and where it comes from (train/provenance.py;
    not part of the record a resumed run must match)."""
    from train.provenance import create_provenance

    return {**record, "provenance": create_provenance(plan)}


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WsmlError(f"{run.folder.path} holds a checkpoint of another format")
    run.model.load_state_dict(ckpt["model"])
    run.method.load_state_dict(ckpt["method"])
    load_optimizer_state(run.optimizer, ckpt["optimizer"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["ema"])
    run.tracks[0].state = LoopState(**ckpt["loop"])
    run.step = run.state.step
    set_rng_state(ckpt["rng"])


def restore_loader(run: Run, states: list | None, ctx: Context) -> None:
    """This rank's training loader goes on from its saved state (a DALI graph from DALI's
    checkpoint), or says why it cannot: a checkpoint from before loaders kept their state, or
    from another number of ranks. It then builds from (seed, epoch, rank), as before."""
    mine = states[ctx.rank] if states is not None and len(states) == ctx.world_size else None
    why = run.data.load_state_dict(mine)
    if why is not None and states is not None and len(states) != ctx.world_size:
        why = f"it was saved by {len(states)} ranks, not {ctx.world_size}"
    if why is not None and ctx.is_main:
        print(
            f"notice: {run.folder.path / 'checkpoint-last.pt'}: {why}; the training loader "
            f"builds its DALI graph again from (seed, epoch {run.state.epoch + 1}, rank), so "
            "from there on the run reads other batches than an uninterrupted one",
            file=sys.stderr,
        )
