"""Scoring: each rank predicts its share of a split, the shares are gathered (every rank then
holds the whole split and computes the same metrics, so all ranks take the same decisions), and
``train.metrics`` scores them against the clean labels."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipelines.distributed import gather_cat
from shards.base.errors import WsmlError
from shards.lists import LabelLists
from train import metrics
from train.context import Context, evaluating
from train.entry_metrics import EntryIndex, evaluate_annotated, evaluate_entries, group_map


def predict(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    ctx: Context,
    num_rows: int,
    gather: bool = True,
) -> tuple[Tensor, Tensor]:
    """(rows (N,), probabilities (T, N, L)) of a whole split in row order: sigmoid of the
    logits in float32, on the CPU, for each of the T configurations the model stacks (1 for a
    plain model, whose logits are (B, L) for a batch of B; a stacked one gives (T B, L),
    member-major); with ``gather=False`` only this rank's share (for a method that gathers
    itself). Full precision, never autocast: bf16 logits would tie thousands of scores and
    move mAP."""
    rows, probs = zip(*batch_probs(model, batches), strict=True)
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


def batch_probs(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> Iterator:
    """Per batch, (rows (b,), probabilities (T, b, L)) of its valid rows, on the CPU: sigmoid of
    the model's float32 logits in eval mode, one slice per stacked configuration."""
    with evaluating(model):
        for batch in batches:
            keep = batch["valid"]
            logits = model(batch["input"])
            stacked = logits.float().view(len(logits) // len(keep), len(keep), -1)[:, keep]
            yield batch["row"][keep].cpu(), torch.sigmoid(stacked).cpu()


def predict_entries(model: nn.Module, batches, ctx: Context, index: EntryIndex) -> np.ndarray:
    """The scores (T, E) of a split's annotated entries (``index``'s order) for each of the T
    configurations the model stacks, a batch at a time: no (N, L) score matrix is kept. Every
    rank scores its share; the entries are gathered. Full precision, as ``predict``."""
    at, values = [], []
    for rows, probs in batch_probs(model, batches):
        taken = [index.take(rows.numpy(), p.numpy()) for p in probs]
        at.append(torch.from_numpy(taken[0][0]))
        values.append(torch.from_numpy(np.stack([v for _, v in taken], 1)))  # (e, T)
    a, v = gather_cat(torch.cat(at), torch.cat(values))
    out = np.full((v.shape[1], len(index)), np.nan, dtype=np.float32)
    out[:, a.numpy()] = v.numpy().T
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
    models: dict[str, nn.Module],
    data,
    ctx: Context,
    splits: Iterable[str],
    threshold: float,
    *,
    scored: Sequence[bool] | None = None,
) -> dict[str, list[dict[str, dict[str, Any]]]]:
    """{weights name: [{split: scores} per stacked configuration]} for each model (the trained
    weights, the EMA); configurations not in ``scored`` (a mask) get no scores."""
    out: dict[str, list[dict[str, dict[str, Any]]]] = {}
    for name, model in models.items():
        per: list[dict[str, dict[str, Any]]] = []
        for split in splits:
            scores = score_split(model, data, ctx, split, threshold, scored)
            per = per or [{} for _ in scores]
            for i, result in enumerate(scores):
                if result is not None:
                    per[i][split] = result
        out[name] = per
    return out


def score_split(model, data, ctx: Context, split: str, threshold: float, scored=None) -> list:
    """Each stacked configuration's scores on ``split`` (None where ``scored`` says not to),
    with ``probs`` where they come from (N, L) scores; a source with unknown labels is scored
    from its annotated entries alone (sized by annotations, no (N, L) matrix)."""
    labels, groups = data.labels(split), data.groups
    wanted = (lambda i: True) if scored is None else (lambda i: bool(scored[i]))  # noqa: E731
    if labels.has_unknown():
        index = data.entry_index(split)
        entries = predict_entries(model, data.eval_batches(split), ctx, index)
        return [
            score_entries(index, e, threshold, groups) if wanted(i) else None
            for i, e in enumerate(entries)
        ]
    _, probs = predict(model, data.eval_batches(split), ctx, data.num_rows(split))
    return [
        {**score(p.numpy(), labels, threshold, groups), "probs": p} if wanted(i) else None
        for i, p in enumerate(probs)
    ]


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
