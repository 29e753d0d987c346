"""The one training loop, for every method and both settings: ``train(run_config) -> summary``.

Per epoch: train on the regime's observed labels, let the method end its epoch (with an eval
pass over the training split when it asks for one), score val (clean labels) and test, keep the
epoch with the best validation mAP (never selected on test) and stop early by the method's
protocol. Rank 0 writes the run folder (train/runfolder.py); ``--resume`` continues from the last
checkpoint and, on the CPU with a fixed seed, ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from train.build import Run, prepare
from train.config import RunConfig
from train.context import Context, cpu_threads
from train.evaluate import epoch_record, evaluate_splits, predict, selected_summary
from train.runfolder import Scalars, json_safe


def train(config: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run ``config`` describes; returns its summary."""
    ctx = Context.create(config.device, config.progress)
    try:
        if config.sweep:
            from train.sweep import train_sweep

            return train_sweep(config, ctx)
        return fit(prepare(config, ctx), ctx)
    finally:
        ctx.close()


def fit(run: Run, ctx: Context) -> dict[str, Any]:
    scalars = None
    if run.config.tensorboard and ctx.is_main:
        scalars = Scalars(run.folder.path, resume_epoch=run.state.epoch)
    try:
        return fit_epochs(run, ctx, scalars)
    finally:
        if scalars is not None:
            scalars.close()


def fit_epochs(run: Run, ctx: Context, scalars: Scalars | None) -> dict[str, Any]:
    cfg, state = run.method.config, run.state
    while state.epoch < cfg.epochs and state.stopped is None:
        epoch = state.epoch + 1
        t0 = time.perf_counter()
        logged = train_epoch(run, ctx, epoch)
        logged.update(end_epoch(run, ctx, epoch))
        t1 = time.perf_counter()
        results = evaluate_splits(
            run.eval_models(), run.data, ctx, ("val", "test"), run.config.threshold
        )
        vals = {name: r["val"]["mAP"] for name, r in results.items()}
        improved = state.update(epoch, vals, cfg)
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(run.optimizer.param_groups)}
        times = (t1 - t0, time.perf_counter() - t1)
        record = epoch_record(epoch, state, lrs, logged, results, times)
        if ctx.is_main:
            run.folder.append_metrics(json_safe(record))
            if scalars is not None:
                scalars.add(json_safe(record))
            if improved:
                write_best(run, results[state.best_weights])
            run.folder.save_checkpoint(run.checkpoint(), best=improved)
        ctx.barrier()
        if epoch == run.config.stop_after_epochs and state.epoch < cfg.epochs:
            return {"interrupted_after_epoch": epoch, "run": str(run.folder.path)}
    summary = {**run.folder.read_summary(), **final_fields(run)}
    if ctx.is_main:
        run.folder.write_summary(summary)
    return summary


def train_epoch(run: Run, ctx: Context, epoch: int) -> dict[str, float]:
    """One pass over this rank's share of the training split; the mean of each logged scalar
    over the epoch's steps and the ranks."""
    net, method = run.net, run.method
    net.train()
    method.train()
    method.start_epoch(epoch)
    steps = run.data.steps_per_epoch
    totals: dict[str, torch.Tensor] = {}
    bar = ctx.bar(steps, f"epoch {epoch}/{method.config.epochs}")
    batches = iter(run.data.train_batches(epoch))
    with cpu_threads(run.step_threads):
        for _ in range(steps):  # the count comes from the manifest, never from len(batches)
            train_step(run, ctx, next(batches), epoch, totals)
            bar.update()
    bar.close()
    names = sorted(totals)
    means = torch.stack([totals[k] for k in names]).cpu() / max(1, steps) if names else None
    if means is not None and ctx.world_size > 1:
        means = means.to(ctx.device)
        dist.all_reduce(means)
        means = means.cpu() / ctx.world_size
    return {k: float(v) for k, v in zip(names, means.tolist() if names else [], strict=True)}


def train_step(run: Run, ctx: Context, batch, epoch: int, totals: dict) -> None:
    step, opt = run.state.step, run.optimizer
    run.schedule.apply(opt.param_groups, step)
    out = run.method.training_step(run.net, batch, epoch=epoch, step=step, autocast=ctx.autocast)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    run.method.after_backward()
    opt.step()
    if run.ema is not None:
        run.ema.update()
    run.method.after_step()
    run.state.step += 1
    for k, v in out.items():
        totals[k] = totals.get(k, 0) + v.detach().float()


def end_epoch(run: Run, ctx: Context, epoch: int) -> dict[str, float]:
    """The method's end of epoch, with its eval-mode pass over the training split if asked."""
    if not run.method.wants_epoch_pass(epoch):
        return run.method.end_epoch(epoch)
    batches = run.data.eval_batches("train")
    rows, probs = predict(run.model, batches, ctx, run.data.num_rows("train"), gather=False)
    return run.method.end_epoch(epoch, (rows.to(ctx.device), probs.to(ctx.device)))


def write_best(run: Run, results: dict[str, dict[str, Any]]) -> None:
    """The selected epoch's summary and predictions (rank 0)."""
    for split in ("val", "test"):
        if "probs" in results[split]:  # none where scored by annotations (no (N, L) scores)
            run.folder.write_predictions(split, results[split]["probs"].numpy())
    meta = {
        "method": run.config.method,
        "setting": run.config.setting,
        "dataset": run.resolved["dataset"],
        "regime": run.resolved["regime"]["view"],
        "seed": run.config.seed,
    }
    summary = selected_summary(meta, run.state, results, run.resolved["classes"])
    run.folder.write_summary(json_safe({**summary, **final_fields(run)}))


def final_fields(run: Run) -> dict[str, Any]:
    done = run.state.stopped is not None or run.state.epoch >= run.method.config.epochs
    return {"epochs_trained": run.state.epoch, "stopped": run.state.stopped, "finished": done}
