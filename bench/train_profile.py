"""Where a sweep step's time goes (``bench train --profile-steps N``): each batch-size group of
the grid, as ``--sweep`` builds it, runs N steps of the loop's own ``train_step`` on one thread
with its parts timed in this thread's CPU time (``time.thread_time``, which a loaded machine
distorts less than wall time): the batch, the forward, the loss, the optimizer, and the rest of
the step (backward, schedule, totals)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

from torch import nn

from train.context import cpu_threads

PARTS = ("batch", "forward", "loss", "backward and the rest", "optimizer")
WARMUP = 20  # steps before the timed ones (first-touch allocations, caches)


class _Clock:
    """Thread CPU seconds per part, added up by the wrappers below."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.on = False

    def timed(self, part: str, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.on:
                    self.seconds[part] += time.thread_time() - t

        return call

    def batches(self, it: Iterator) -> Iterator:
        while True:
            t = time.thread_time()
            batch = next(it)
            if self.on:
                self.seconds["batch"] += time.thread_time() - t
            yield batch


class _TimedNet(nn.Module):
    """The group's model, its forward passes timed."""

    def __init__(self, net: nn.Module, clock: _Clock):
        super().__init__()
        self.net, self.clock = net, clock

    def forward(self, x):
        return self.clock.timed("forward", self.net)(x)


def profile_sweep(plan, data, ctx, steps: int) -> list[dict]:
    """Per group of the plan's grid (its ``batch_size`` and ``members``): thread CPU seconds
    of each part over ``steps`` training steps (after ``WARMUP``), and ``ms_per_step``."""
    from train.loop import train_step
    from train.runfolder import RunFolder
    from train.sweep import create_groups

    folder = RunFolder(tempfile.mkdtemp(prefix="wsml-bench-profile-"))
    out = []
    try:
        for group in create_groups(plan, data, folder, ctx):
            clock = _Clock()
            group.net = _TimedNet(group.net, clock)
            group.method.forward = clock.timed("loss", group.method.forward)
            group.optimizer.step = clock.timed("optimizer", group.optimizer.step)
            group.net.train()
            group.method.train()
            group.method.start_epoch(1)
            batches = clock.batches(iter(group.data.train_batches(1)))
            totals: dict = {}
            warmup = min(WARMUP, group.data.steps_per_epoch // 2)
            n = min(steps, group.data.steps_per_epoch - warmup)
            if n < 1:
                continue
            with cpu_threads(1):
                for i in range(warmup + n):
                    clock.on = i >= warmup
                    t = time.thread_time()
                    train_step(group, ctx, next(batches), 1, totals)
                    if clock.on:
                        clock.seconds["backward and the rest"] += time.thread_time() - t
            timed = clock.seconds
            inside = sum(timed[p] for p in ("forward", "loss", "optimizer"))
            timed["backward and the rest"] -= inside
            ms = 1e3 * sum(timed.values()) / n
            shape = {"batch_size": group.data.batch_size, "members": len(group.tracks)}
            out.append({**shape, **timed, "ms_per_step": ms})
    finally:
        shutil.rmtree(folder.path, ignore_errors=True)
    return out


def profile_methods(plans: dict, data, grid, steps: int, echo: Callable[[str], None]) -> dict:
    """Each method's sweep over ``grid`` (lrs, batches) profiled (``profile_sweep``); a line
    per group with each part's share."""
    out = {}
    for method, plan in plans.items():
        out[method] = groups = profile_sweep(sweep_plan(plan, *grid), data, data.ctx, steps)
        for g in groups:
            total = sum(g[p] for p in PARTS)
            shares = ", ".join(f"{p} {100 * g[p] / total:.0f}%" for p in PARTS)
            echo(f"{method:<8} sweep step, batch {g['batch_size']}, {g['members']} members: "
                 f"{g['ms_per_step']:.2f} ms thread CPU: {shares}")  # fmt: skip
    return out


def sweep_plan(plan, lrs, batches):
    """``plan`` as a ``--sweep`` over ``batches`` x ``lrs``."""
    config = dataclasses.replace(
        plan.config, sweep=True, sweep_lrs=tuple(lrs), sweep_batches=tuple(batches)
    )
    return dataclasses.replace(plan, config=config)
