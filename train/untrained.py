"""A run of a method that trains nothing (``MethodInfo.trains`` False, e.g. clip-zeroshot):
scored once, as epoch 0, selected and written like any epoch of a trained run."""

from __future__ import annotations

import time
from typing import Any

from train.evaluate import epoch_record, evaluate_splits
from train.runfolder import json_safe


def check_untrained(info, config) -> None:
    """A method that trains nothing has no lr x batch grid to sweep: refused before any work."""
    if not info.trains and config.sweep:
        from shards.base.errors import WsmlError

        raise WsmlError(f"method {info.name} trains nothing: --sweep does not apply")


def score_untrained(run, ctx) -> None:
    """Score val and test as epoch 0, record it, write the predictions, summary (with the
    method's ``untrained_report``) and the checkpoint; a no-op once done (resume)."""
    from train.loop import write_best

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


def report_lines(summary: dict[str, Any]) -> list[str]:
    """What train prints of an untrained run's report (clip-zeroshot's pseudo-label quality)."""
    q = summary.get("vlpl_pseudo_labels")
    if not q:
        return []
    return [
        f"  VLPL pseudo-positives on train (s > {q['threshold']:g}, T {q['temperature']:g}): "
        f"{q['pseudo_positives']} made, {q['clean_positives']} clean positives; precision "
        f"{q['precision']:.2f}  recall {q['recall']:.2f}"
    ]
