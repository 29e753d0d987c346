"""Optimisers and per-step schedules: Adam (fused) or SGD over a model's parameter groups, and the
learning-rate (and Adam beta1) factor of every step of a run, precomputed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.heads import StackedHeads
from train.methods import MethodConfig

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8  # torch.optim.Adam's defaults, as create_optimizer uses


# ASL's OneCycleLR(pct_start=0.2) with torch's other defaults
ONECYCLE = {"pct_start": 0.2, "div_factor": 25.0, "final_div_factor": 1e4}
ONECYCLE_BETA1 = (0.85, 0.95)  # OneCycleLR's cycled momentum (Adam's beta1): base, max


@dataclass(frozen=True)
class Schedule:
    """Per-step learning-rate factor (times each group's base lr) and Adam beta1, precomputed
    for every optimiser step of the run."""

    lr: tuple[float, ...]
    beta1: tuple[float, ...] | None = None  # None: keep the optimiser's

    def apply(self, groups: list[dict], step: int) -> float:
        """Set the optimiser groups' lr (and beta1) for global step ``step`` (0-based); returns
        the factor."""
        i = min(step, len(self.lr) - 1)
        for group in groups:
            group["lr"] = group["initial_lr"] * self.lr[i]
            if self.beta1 is not None:
                group["betas"] = (self.beta1[i], group["betas"][1])
        return self.lr[i]


POLY_POWER = 0.9  # Puzzle-CAM's PolyOptimizer


def create_schedule(config: MethodConfig, steps_per_epoch: int) -> Schedule:
    """``constant``; ``onecycle`` over ``schedule_epochs`` (default: the run's epochs) with the
    formula and defaults of torch's OneCycleLR (cosine, pct_start 0.2, beta1 cycled, which
    applies to Adam only); or ``poly``, (1 - step / total) ** 0.9 over the same steps."""
    epochs = config.schedule_epochs or config.epochs
    total = max(1, epochs * steps_per_epoch)
    run = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        return Schedule((1.0,) * run)
    if config.schedule == "poly":
        return Schedule(tuple((1 - s / total) ** POLY_POWER for s in range(min(run, total))))
    lr, beta1 = zip(*(onecycle(s, total) for s in range(min(run, total))), strict=True)
    return Schedule(tuple(lr), tuple(beta1) if config.optimizer == "adam" else None)


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def onecycle(step: int, total: int) -> tuple[float, float]:
    """(lr / max_lr, beta1) at ``step`` of ``total`` (torch.optim.lr_scheduler.OneCycleLR)."""
    initial = 1.0 / ONECYCLE["div_factor"]
    final = initial / ONECYCLE["final_div_factor"]
    low, high = ONECYCLE_BETA1
    phases = (
        (float(ONECYCLE["pct_start"] * total) - 1, initial, 1.0, high, low),
        (float(total - 1), 1.0, final, low, high),
    )
    start = 0.0
    for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return _cos(lr0, lr1, pct), _cos(m0, m1, pct)
        start = end
    raise AssertionError("unreachable")


def param_groups(model: nn.Module, head: nn.Module, config: MethodConfig) -> list[dict]:
    """Adam groups: backbone at lr, head at lr x head_lr_mult; weight decay on weights only
    (not biases or norm parameters, as timm's and ASL's add_weight_decay)."""
    head_ids = {id(p) for p in head.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.ndim > 1), []).append(p)
    out = []
    for (is_head, decays), params in sorted(groups.items()):
        lr = config.lr * (config.head_lr_mult if is_head else 1.0)
        wd = config.weight_decay if decays else 0.0
        name = ("head" if is_head else "backbone") + ("" if decays else "-no-decay")
        out.append({"params": params, "lr": lr, "weight_decay": wd, "name": name})
    return out


def create_optimizer(
    groups: list[dict], config: MethodConfig | None = None
) -> torch.optim.Optimizer:
    """Adam (fused: one pass per step; ROLE's dense estimator update is 12x cheaper on a CPU),
    or SGD with the config's momentum when ``config.optimizer`` is ``sgd``."""
    for g in groups:
        g.setdefault("initial_lr", g["lr"])
    if config is not None and config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=config.momentum)
    return torch.optim.Adam(groups, lr=groups[0]["lr"], fused=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimiser state, each per-parameter tensor (Adam's moments, SGD's
    momentum) laid out as its parameter is now. A run may resume on another device, and the
    model's layout follows the device (channels-last on a GPU); torch keeps the saved strides,
    and the fused Adam kernels walk memory in order: CUDA's refuses the mismatch, the CPU's
    pairs the wrong elements and trains silently wrong."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            saved = optimizer.state.get(p, {})
            for key, value in saved.items():
                if (
                    torch.is_tensor(value)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    saved[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class MemberOptimizer:
    """The members' Adam: torch's fused Adam kernel (what ``torch.optim.Adam(fused=True)`` runs
    for a separate run) on each member's blocks of the stacked parameters, with the member's own
    lr, step counts and moments; weight decay on the weight only, as a run's param groups have
    it. ``param_groups`` holds one group per member (lr, betas: the loop's schedule sets them),
    then the method's own groups (a separate torch Adam, as a run has them). A member whose
    track has stopped is left alone."""

    def __init__(self, heads: StackedHeads, tracks: list, extra: list[dict]):
        self.tracks = tracks
        cfg = tracks[0].config
        self.params = [heads.weight, heads.bias]
        self.decays = [cfg.weight_decay, 0.0]
        m = heads.members
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.blocks = [self._blocks(t, m) for t in (self.params, self.exp_avg, self.exp_avg_sq)]
        self.steps = [
            [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
            for _ in range(m)
        ]
        self.member_groups = [
            {"lr": lr, "initial_lr": lr, "betas": (0.9, ADAM_BETA2), "name": t.name}
            for t, lr in ((t, t.config.lr * t.config.head_lr_mult) for t in tracks)
        ]
        self.extra = create_optimizer(extra, cfg) if extra else None

    @staticmethod
    def _blocks(tensors: list[Tensor], members: int) -> list[list[Tensor]]:
        """[member][param] views."""
        per_param = [t.view(members, -1).unbind(0) for t in tensors]
        return [list(blocks) for blocks in zip(*per_param, strict=True)]

    @property
    def param_groups(self) -> list[dict]:
        return self.member_groups + (self.extra.param_groups if self.extra else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        if self.extra is not None:
            self.extra.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        params, avgs, sqs = self.blocks
        grads = self._blocks([p.grad for p in self.params], len(self.tracks))
        live = [i for i, t in enumerate(self.tracks) if t.active]
        torch._foreach_add_([s for i in live for s in self.steps[i]], 1)
        for i in live:
            group = self.member_groups[i]
            for wd in sorted(set(self.decays)):  # one call per weight decay
                js = [j for j, d in enumerate(self.decays) if d == wd]
                torch._fused_adam_(
                    [params[i][j] for j in js],
                    [grads[i][j] for j in js],
                    [avgs[i][j] for j in js],
                    [sqs[i][j] for j in js],
                    [],
                    [self.steps[i][j] for j in js],
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=group["betas"][0],
                    beta2=ADAM_BETA2,
                    weight_decay=wd,
                    eps=ADAM_EPS,
                    maximize=False,
                )
        if self.extra is not None:
            self.extra.step()

    def track_lrs(self, i: int) -> dict[str, float]:
        """The lr of each optimiser group member ``i``'s separate run would log."""
        lr = self.member_groups[i]["lr"]
        out = {"head-no-decay": lr, "head": lr}
        if self.extra is not None:
            out.update({g["name"]: g["lr"] for g in self.extra.param_groups})
        return out
