"""The one training loop, for every method, both settings and sweeps (``train.run.train(config)``
enters it).

Per epoch: train on the regime's observed labels, let the method end its epoch (with an eval
pass over the training split when it asks for one), score val (clean labels) and test, keep the
epoch with the best validation mAP (never selected on test) and stop early by the method's
protocol. A run trains one configuration (one :class:`~train.build.Track`); a sweep's group
trains several at once, stacked (train/sweep.py), through the same steps. Rank 0 writes the run
folder (train/runfolder.py); ``--resume`` continues from the last checkpoint and, on the CPU
with a fixed seed, ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from pipelines.distributed import all_reduce_mean
from train.bootstrap import write_test_ci
from train.build import Run, Track
from train.context import Context, cpu_threads
from train.evaluate import epoch_record, evaluate_splits, predict, selected_summary
from train.runfolder import TensorBoardLog, json_safe

# (epoch, [(track, logged scalars, {weights: {split: scores}})], seconds) after every epoch
EpochHook = Callable[[int, list[tuple[Track, dict, dict]], float], None]


def fit(run: Run, ctx: Context) -> dict[str, Any]:
    """Train a run to its end (or its ``stop_after_epochs``); write and return its summary."""
    log = None
    if run.plan.config.tensorboard and ctx.is_main:
        log = TensorBoardLog(run.folder.path, resume_epoch=run.state.epoch)
    try:
        score_untrained(run, ctx)  # a method that trains nothing: epoch 0 only
        stopped = fit_epochs([run], ctx, None if log is None else _log_epoch(log))
    finally:
        if log is not None:
            log.close()
    if stopped is not None:
        return {"interrupted_after_epoch": stopped, "run": str(run.folder.path)}
    summary = {**run.folder.read_summary(), **final_fields(run.tracks[0])}
    if ctx.is_main:
        summary.update(write_test_ci(run.folder.path, run.data.labels("test")))
        run.folder.write_summary(summary)
    return summary


def _log_epoch(log: TensorBoardLog) -> EpochHook:
    def hook(epoch, outcomes, seconds):
        for _, record, _ in outcomes:
            log.add(json_safe(record))

    return hook


def fit_epochs(runs: list[Run], ctx: Context, on_epoch: EpochHook | None = None) -> int | None:
    """Train ``runs`` (one run, or a sweep's groups) epoch by epoch, side by side, until every
    configuration has stopped; returns the epoch after which ``stop_after_epochs`` interrupted
    (None: trained to the end)."""
    while live := [run for run in runs if run.active]:
        epoch = 1 + max(t.state.epoch for run in live for t in run.tracks if t.active)
        t0 = time.perf_counter()
        logged = train_runs(live, ctx, epoch)
        for run, per_track in zip(live, logged, strict=True):
            ended = {**end_epoch(run, ctx, epoch), **run.method.read_label_counts()}
            for i, scalars in enumerate(per_track):
                scalars.update({k: v[i] if isinstance(v, list) else v for k, v in ended.items()})
        t1 = time.perf_counter()
        outcomes = []
        for run, per_track in zip(live, logged, strict=True):
            outcomes += select_epoch(run, ctx, epoch, per_track, (t1 - t0, t1))
        if on_epoch is not None and ctx.is_main:
            on_epoch(epoch, outcomes, time.perf_counter() - t0)
        stop = runs[0].plan.config.stop_after_epochs
        if epoch == stop and any(run.active for run in runs):
            return epoch
    return None


def train_runs(runs: list[Run], ctx: Context, epoch: int) -> list[list[dict[str, float]]]:
    """One epoch of every run. On a CPU, several runs (a sweep's groups) train side by side,
    one thread per core, each running its ops single-threaded: a linear step is a few small
    ops, where OpenMP's barriers cost more than they gain, while the groups are independent.
    Longest first; on a GPU one after another (its kernels run asynchronously anyway)."""
    workers = min(torch.get_num_threads(), len(runs)) if ctx.device.type == "cpu" else 1
    if workers <= 1:
        return [train_epoch(run, ctx, epoch) for run in runs]
    order = sorted(range(len(runs)), key=lambda i: -len(runs[i].tracks) * _steps(runs[i]))
    out: list = [None] * len(runs)
    with cpu_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="wsml-train") as pool:
        futures = {i: pool.submit(train_epoch, runs[i], ctx, epoch) for i in order}
        for i in order:
            out[i] = futures[i].result()  # re-raises a run's error (e.g. a non-finite loss)
    return out


def _steps(run: Run) -> int:
    return run.data.steps_per_epoch


def train_epoch(run: Run, ctx: Context, epoch: int) -> list[dict[str, float]]:
    """One pass over this rank's share of the training split; for each track, the mean of each
    logged scalar over the epoch's steps and the ranks."""
    net, method = run.net, run.method
    net.train()
    method.train()
    method.start_epoch(epoch)
    steps = run.data.steps_per_epoch
    totals: dict[str, torch.Tensor] = {}
    bar = ctx.bar(steps, f"epoch {epoch}/{run.tracks[0].config.epochs}")
    batches = iter(run.data.train_batches(epoch))
    with cpu_threads(run.plan.setting.step_threads(ctx)):
        for _ in range(steps):  # the count comes from the manifest, never from len(batches)
            train_step(run, ctx, next(batches), epoch, totals)
            bar.update()
    bar.close()
    method.flush_checks()  # finiteness checks a GPU run defers
    for track in run.tracks:
        if track.active:
            track.state.step = run.step
    names = sorted(totals)
    if not names:
        return [{} for _ in run.tracks]
    means = torch.stack([totals[k] for k in names]).cpu() / max(1, steps)  # (K, tracks)
    means = all_reduce_mean(means, ctx.device)
    return [dict(zip(names, column, strict=True)) for column in means.T.tolist()]


def train_step(run: Run, ctx: Context, batch, epoch: int, totals: dict) -> None:
    """One optimiser step; the method's scalars (one per track) added to ``totals``."""
    step, opt = run.step, run.optimizer
    run.schedule.apply(opt.param_groups, step)
    autocast = run.plan.setting.autocast
    out = run.method.training_step(
        run.net, batch, epoch=epoch, step=step, autocast=lambda: autocast(ctx)
    )
    opt.zero_grad(set_to_none=True)
    out["loss"].sum().backward()  # stacked tracks: each track's loss, its own gradient
    run.method.after_backward()
    opt.step()
    if run.ema is not None:
        run.ema.update()
    run.method.after_step()
    run.step += 1
    width = len(run.tracks)
    for k, v in out.items():
        totals[k] = totals.get(k, 0) + v.detach().float().reshape(-1).expand(width)


def end_epoch(run: Run, ctx: Context, epoch: int) -> dict[str, Any]:
    """The method's end of epoch, with its eval-mode pass over the training split if asked
    (stacked tracks: member-major rows, as in training)."""
    if not run.method.wants_epoch_pass(epoch):
        return run.method.end_epoch(epoch)
    n = run.data.num_rows("train")
    batches = run.data.eval_batches("train")
    rows, probs = predict(run.model, batches, ctx, n, gather=False)
    tracks = probs.shape[0]
    rows = (torch.arange(tracks).unsqueeze(1) * n + rows).reshape(-1)
    probs = probs.reshape(-1, probs.shape[-1])
    return run.method.end_epoch(epoch, (rows.to(ctx.device), probs.to(ctx.device)))


def select_epoch(run: Run, ctx: Context, epoch: int, logged: list[dict], times) -> list:
    """Score every active track on val and test, update its selection, write its metrics line
    (and its summary and predictions when it improved) and the run's checkpoint."""
    seconds = (times[0], time.perf_counter() - times[1])
    results = evaluate_splits(
        run.eval_models(),
        run.data,
        ctx,
        ("val", "test"),
        run.plan.config.threshold,
        scored=[t.active for t in run.tracks],
    )
    outcomes = []
    for i, track in enumerate(run.tracks):
        if not track.active:
            continue
        mine = {name: per[i] for name, per in results.items()}  # {weights: {split: scores}}
        vals = {name: r["val"]["mAP"] for name, r in mine.items()}
        improved = track.state.update(epoch, vals, track.config)
        lrs = _track_lrs(run, i)
        record = epoch_record(epoch, track.state, lrs, logged[i], mine, seconds)
        if ctx.is_main and track.folder is not None:
            track.folder.path.mkdir(parents=True, exist_ok=True)
            track.folder.append_metrics(json_safe(record))
            if improved:
                write_best(run, track, mine[track.state.best_weights])
        outcomes.append((track, record, mine))
    if run.folder is not None:
        loaders = ctx.on_all(run.data.state_dict)  # every rank's, into rank 0's checkpoint
        if ctx.is_main:
            best = run.state.best_epoch == epoch
            run.folder.save_checkpoint(run.checkpoint(loaders), best=best)
    ctx.barrier()
    return outcomes


def _track_lrs(run: Run, i: int) -> dict[str, float]:
    """The lr of each optimiser group, as track ``i``'s separate run would log it."""
    lrs = getattr(run.optimizer, "track_lrs", None)
    if lrs is not None:
        return lrs(i)
    return {g.get("name", str(k)): g["lr"] for k, g in enumerate(run.optimizer.param_groups)}


def write_best(run: Run, track: Track, results: dict[str, dict[str, Any]]) -> None:
    """A track's selected epoch: its summary and predictions (rank 0)."""
    plan = run.plan
    # a run's own folder keeps val and test predictions; a sweep member test's (the sweep
    # keeps its chosen member's, for the report's precision-recall curves)
    for split in ("val", "test") if track.folder is run.folder else ("test",):
        if "probs" in results[split]:  # none where scored by annotations (no (N, L) scores)
            track.folder.write_predictions(split, results[split]["probs"].numpy())
    meta = track.meta or {
        "method": plan.config.method,
        "setting": plan.config.setting,
        "dataset": plan.dataset,
        "regime": plan.view,
        "seed": plan.config.seed,
    }
    summary = selected_summary(meta, track.state, results, list(plan.classes))
    track.folder.write_summary(json_safe({**summary, **final_fields(track)}))


def final_fields(track: Track) -> dict[str, Any]:
    state = track.state
    done = state.stopped is not None or state.epoch >= track.config.epochs
    return {"epochs_trained": state.epoch, "stopped": state.stopped, "finished": done}


def score_untrained(run, ctx) -> None:
    """Score val and test as epoch 0, record it, write the predictions, summary (with the
    method's ``untrained_report``) and the checkpoint; a no-op once done (resume)."""
    track = run.tracks[0]
    state = track.state
    if run.plan.info.trains or state.best_val > -float("inf"):
        return
    t0 = time.perf_counter()
    results = evaluate_splits(
        run.eval_models(), run.data, ctx, ("val", "test"), run.plan.config.threshold
    )
    mine = {name: per[0] for name, per in results.items()}  # {weights: {split: scores}}
    state.update(0, {name: r["val"]["mAP"] for name, r in mine.items()}, track.config)
    report: dict[str, Any] = run.method.untrained_report(run.data)
    record = epoch_record(0, state, {}, report, mine, (0.0, time.perf_counter() - t0))
    if ctx.is_main:
        run.folder.append_metrics(json_safe(record))
        write_best(run, track, mine[state.best_weights])
        run.folder.write_summary(json_safe({**run.folder.read_summary(), **report}))
        run.folder.save_checkpoint(run.checkpoint(), best=True)
    ctx.barrier()
