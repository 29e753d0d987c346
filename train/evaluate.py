"""Scoring: each rank predicts its share of a split, the shares are gathered (every rank then
holds the whole split and computes the same metrics, so all ranks take the same decisions), and
``train.metrics`` scores them against the clean labels."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shards.errors import WsmlError
from shards.lists import LabelLists
from train import metrics
from train.context import Context, evaluating
from train.entry_metrics import EntryIndex, evaluate_annotated, evaluate_entries, group_map
from train.methods import gather_cat


def predict(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    ctx: Context,
    num_rows: int,
    gather: bool = True,
) -> tuple[Tensor, Tensor]:
    """(rows, probabilities) of a whole split in row order: sigmoid of the logits, float32, on
    the CPU; with ``gather=False`` only this rank's share (for a method that gathers itself)."""
    rows, probs = [], []
    with evaluating(model), ctx.autocast():
        for batch in batches:
            keep = batch["valid"]
            logits = model(batch["input"])
            rows.append(batch["row"][keep].cpu())
            probs.append(torch.sigmoid(logits[keep].float()).cpu())
    r, p = torch.cat(rows), torch.cat(probs)
    if not gather:
        return r, p
    r, p = gather_cat(r, p)
    order = torch.argsort(r)
    r, p = r[order], p[order]
    if len(r) != num_rows or not torch.equal(r, torch.arange(num_rows)):
        raise WsmlError(f"evaluation scored {len(r)} rows of {num_rows} (or some twice)")
    return r, p


def predict_entries(model: nn.Module, batches, ctx: Context, index: EntryIndex) -> np.ndarray:
    """The scores of a split's annotated entries (``index``'s order), a batch at a time: no
    (N, L) score matrix is kept. Every rank scores its share; the entries are gathered."""
    at, values = [], []
    with evaluating(model), ctx.autocast():
        for batch in batches:
            keep = batch["valid"]
            probs = torch.sigmoid(model(batch["input"])[keep].float()).cpu().numpy()
            a, v = index.take(batch["row"][keep].cpu().numpy(), probs)
            at.append(torch.from_numpy(a))
            values.append(torch.from_numpy(v))
    a, v = gather_cat(torch.cat(at), torch.cat(values))
    out = np.full(len(index), np.nan, dtype=np.float32)
    out[a.numpy()] = v.numpy()
    if len(a) != len(index) or len(np.unique(a.numpy())) != len(index):
        raise WsmlError(f"evaluation scored {len(a)} annotated entries of {len(index)}")
    return out


def score_entries(index: EntryIndex, entries: np.ndarray, threshold: float, groups=None) -> dict:
    """``score`` of a source with unknown labels from its annotated entries' scores alone."""
    out = evaluate_entries(index, entries, threshold=threshold)
    out["variant"] = "annotated"
    if groups is not None:
        out["groups"] = group_map(out["AP"], groups)
    return out


def score(
    probs: Any, labels: LabelLists | np.ndarray, threshold: float = 0.5, groups=None
) -> dict[str, Any]:
    """mAP, CP/CR/CF1/OP/OR/OF1 and per-class AP (x 100). Labels with unknown entries (0, e.g.
    Open Images) are scored with the OpenImages variant: annotated entries only, taken from the
    ragged labels (no (N, L) label matrix); fully labelled sources the dense way. ``groups``
    (classes of G1..G5) adds ``groups``: {"G1": mAP, …}."""
    if not isinstance(labels, LabelLists):
        labels = LabelLists.from_dense(labels)
    if labels.has_unknown():
        out = evaluate_annotated(probs, labels, threshold=threshold)
        out["variant"] = "annotated"
    else:
        out = metrics.evaluate(probs, labels.dense(), threshold=threshold)
        out["variant"] = "all"
    if groups is not None:
        out["groups"] = group_map(out["AP"], groups)
    return out


def evaluate_splits(
    models: dict[str, nn.Module], data, ctx: Context, splits: Iterable[str], threshold: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """{weights name: {split: scores + "probs"}} for each model (the trained weights, the EMA)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, model in models.items():
        out[name] = {}
        for split in splits:
            labels = data.labels(split)
            if labels.has_unknown():  # sized by annotations: no (N, L) scores kept
                index = data.entry_index(split)
                entries = predict_entries(model, data.eval_batches(split), ctx, index)
                out[name][split] = score_entries(index, entries, threshold, data.groups)
                continue
            n = data.num_rows(split)
            _, probs = predict(model, data.eval_batches(split), ctx, n)
            result = score(probs.numpy(), labels, threshold, data.groups)
            result["probs"] = probs
            out[name][split] = result
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
