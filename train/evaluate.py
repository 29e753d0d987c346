"""Scoring: each rank predicts its share of a split, the shares are gathered (every rank then
holds the whole split and computes the same metrics, so all ranks take the same decisions), and
``train.metrics`` scores them against the clean labels."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shards.errors import WsmlError
from train import metrics
from train.context import Context, evaluating
from train.methods import gather_cat


def predict(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    ctx: Context,
    num_rows: int,
    gather: bool = True,
    autocast: Callable[[], Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """(rows (N,), probabilities (T, N, L)) of a whole split in row order: sigmoid of the
    logits in float32, on the CPU, for each of the T configurations the model stacks (1 for a
    plain model, whose logits are (B, L) for a batch of B; a stacked one gives (T B, L),
    member-major); with ``gather=False`` only this rank's share (for a method that gathers
    itself). ``autocast`` is the precision of the forward pass (default: full)."""
    rows, probs = [], []
    with evaluating(model), (autocast or contextlib.nullcontext)():
        for batch in batches:
            keep = batch["valid"]
            logits = model(batch["input"])
            tracks = len(logits) // len(keep)
            rows.append(batch["row"][keep].cpu())
            stacked = logits.float().view(tracks, len(keep), -1)[:, keep]
            probs.append(torch.sigmoid(stacked).cpu())
    r, p = torch.cat(rows), torch.cat(probs, dim=1)
    if not gather:
        return r, p
    tracks, classes = p.shape[0], p.shape[2]
    r, p = gather_cat(r, p.transpose(0, 1).reshape(len(r), -1))
    order = torch.argsort(r)
    r, p = r[order], p[order].view(-1, tracks, classes).transpose(0, 1)
    if len(r) != num_rows or not torch.equal(r, torch.arange(num_rows)):
        raise WsmlError(f"evaluation scored {len(r)} rows of {num_rows} (or some twice)")
    return r, p


def score(probs: Any, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """mAP, CP/CR/CF1/OP/OR/OF1 and per-class AP (x 100). Labels with unknown entries (0, e.g.
    Open Images) are scored with the OpenImages variant: annotated entries only."""
    annotated_only = bool((labels == 0).any())
    out = metrics.evaluate(probs, labels, threshold=threshold, annotated_only=annotated_only)
    out["variant"] = "annotated" if annotated_only else "all"
    return out


def evaluate_splits(
    models: dict[str, nn.Module],
    data,
    ctx: Context,
    splits: Iterable[str],
    threshold: float,
    *,
    autocast: Callable[[], Any] | None = None,
    scored: Sequence[bool] | None = None,
) -> dict[str, list[dict[str, dict[str, Any]]]]:
    """{weights name: [{split: scores + "probs"} per stacked configuration]} for each model
    (the trained weights, the EMA); configurations not in ``scored`` (a mask) get no scores."""
    out: dict[str, list[dict[str, dict[str, Any]]]] = {}
    for name, model in models.items():
        per: list[dict[str, dict[str, Any]]] = []
        for split in splits:
            n = data.num_rows(split)
            _, probs = predict(model, data.eval_batches(split), ctx, n, autocast=autocast)
            labels = data.labels(split)
            if not per:
                per = [{} for _ in range(len(probs))]
            for i, p in enumerate(probs):
                if scored is None or scored[i]:
                    per[i][split] = {**score(p.numpy(), labels, threshold), "probs": p}
        out[name] = per
    return out


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The scalars of one split's scores (no per-class APs, no predictions)."""
    return {k: v for k, v in result.items() if k not in ("AP", "probs", "variant")}


def epoch_record(epoch, state, lrs, logged, results, times) -> dict[str, Any]:
    """One line of metrics.jsonl: train scalars, val/test scores (and the EMA's), times."""
    record = {
        "epoch": epoch,
        "step": state.step,
        "lr": lrs,
        "train": logged,
        **{k: headline(v) for k, v in results["model"].items()},
        "best_epoch": state.best_epoch,
        "time": {"train": round(times[0], 3), "eval": round(times[1], 3)},
    }
    if "ema" in results:
        record["ema"] = {k: headline(v) for k, v in results["ema"].items()}
    return record


def selected_summary(meta: dict, state, results, classes: list[str]) -> dict[str, Any]:
    """The summary of the selected epoch: its val and test scores and per-class APs."""
    return {
        **meta,
        "best_epoch": state.best_epoch,
        "weights": state.best_weights,
        "val": headline(results["val"]),
        "test": headline(results["test"]),
        "metric_variant": results["test"]["variant"],
        "test_ap": dict(zip(classes, results["test"]["AP"].tolist(), strict=True)),
        "val_ap": dict(zip(classes, results["val"]["AP"].tolist(), strict=True)),
    }
