"""Evaluation sized by annotations (the OpenImages variant of ``train.metrics``): per class only
the annotated entries' scores, taken from the ragged labels, so a split with millions of rows
and thousands of classes never builds an (N, L) label matrix; the numbers equal
``metrics.evaluate(..., annotated_only=True)`` exactly.

Frequency groups G1-G5 (the LL and BoostLU OpenImages tables; their exact rule is not
released): classes sorted by their number of annotated positives in the training split
(ascending, ties by class index), cut into five groups of consecutive classes, group g holding
sorted positions [g L / 5, (g + 1) L / 5) (integer division), so G1 is the rarest; a group's mAP
is the mean AP of its classes that have annotated entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shards.base.errors import WsmlError
from shards.lists import LabelLists
from train import metrics

GROUPS = 5


def list_entries(labels: LabelLists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every annotated entry as (row, class, positive), sorted by class then row."""
    n, n_cls = len(labels), labels.num_classes
    pos_rows = np.repeat(np.arange(n), np.diff(labels.positives.offsets))
    neg_rows = np.repeat(np.arange(n), np.diff(labels.negatives.offsets))
    rows = [pos_rows, neg_rows]
    cls = [labels.positives.values, labels.negatives.values]
    full = np.flatnonzero(labels.full_rows())
    if len(full):  # a null negatives row: every class that is not positive is negative
        grid = np.zeros((len(full), n_cls), dtype=bool)
        lookup = np.full(n, -1)
        lookup[full] = np.arange(len(full))
        in_full = lookup[pos_rows] >= 0
        grid[lookup[pos_rows[in_full]], labels.positives.values[in_full]] = True
        r, c = np.nonzero(~grid)
        rows.append(full[r])
        cls.append(c)
    positive = np.zeros(sum(len(r) for r in rows), dtype=bool)
    positive[: len(pos_rows)] = True
    rows, cls = np.concatenate(rows), np.concatenate(cls).astype(np.int64)
    order = np.lexsort((rows, cls))
    return rows[order], cls[order], positive[order]


class EntryIndex:
    """A split's annotated entries (``list_entries``) and, per row, where its entries sit, so
    scores can be kept entry by entry while a split is scored a chunk of rows at a time."""

    def __init__(self, labels: LabelLists):
        self.num_rows, self.num_classes = len(labels), labels.num_classes
        self.rows, self.classes, self.positive = list_entries(labels)
        self.by_row = np.argsort(self.rows, kind="stable")  # entries grouped by row
        self.row_start = np.zeros(self.num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.rows, minlength=self.num_rows), out=self.row_start[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entry positions, scores) of the annotated entries of ``rows`` from their (B, L)
        scores: what a chunk of a split keeps."""
        starts = self.row_start[rows]
        lengths = self.row_start[rows + 1] - starts
        local = np.repeat(np.arange(len(rows)), lengths)
        first = np.cumsum(lengths) - lengths
        at = self.by_row[np.repeat(starts - first, lengths) + np.arange(lengths.sum())]
        return at, probs[local, self.classes[at]]


def evaluate_annotated(probs: Any, labels: LabelLists, *, threshold: float = 0.5) -> dict:
    """mAP, the thresholded metrics and ``AP`` per class (x 100, NaN for a class without
    annotated entries) over annotated entries only, from an (N, L) score matrix."""
    s = probs.detach().float().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    if s.shape != (len(labels), labels.num_classes):
        raise WsmlError(f"scores {s.shape} and labels ({len(labels)}, {labels.num_classes}) differ")
    index = EntryIndex(labels)
    return evaluate_entries(index, s[index.rows, index.classes], threshold=threshold)


def evaluate_entries(index: EntryIndex, entry: np.ndarray, *, threshold: float = 0.5) -> dict:
    """The annotated variant from the annotated entries' scores alone (``index``'s order)."""
    cls, positive = index.classes, index.positive
    if np.isnan(entry).any():
        raise WsmlError("scores contain NaN")
    bounds = np.searchsorted(cls, np.arange(index.num_classes + 1))
    ap = np.full(index.num_classes, np.nan)
    for c in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[c], bounds[c + 1]
        ap[c] = _entry_ap(entry[lo:hi], positive[lo:hi])
    kept = ap[~np.isnan(ap)]
    if kept.size == 0:
        raise WsmlError("no class has an annotated entry; mAP is undefined")
    out: dict[str, Any] = {"mAP": float(100.0 * kept.mean())}
    out.update(_threshold_metrics(entry.astype(np.float64), cls, positive, bounds, threshold))
    out["AP"] = 100.0 * ap
    return out


def _entry_ap(scores: np.ndarray, positive: np.ndarray) -> float:
    """scikit-learn's AP of one class's annotated entries (``metrics._sklearn_ap``'s rule)."""
    p = np.sort(scores[positive])
    if p.size == 0:
        return 0.0
    col = np.sort(scores)
    counted = len(col) - np.searchsorted(col, p, side="left")
    tp = len(p) - np.searchsorted(p, p, side="left")
    return float(np.mean(tp / counted))


def _threshold_metrics(s, cls, positive, bounds, threshold) -> dict[str, float]:
    n_cls = len(bounds) - 1
    pred = s >= threshold
    n_pred = np.bincount(cls[pred], minlength=n_cls)
    n_gt = np.bincount(cls[positive], minlength=n_cls)
    n_tp = np.bincount(cls[pred & positive], minlength=n_cls)
    keep = np.diff(bounds) > 0
    ratio = metrics.safe_ratio
    cp = float(ratio(n_tp, n_pred)[keep].mean()) if keep.any() else 0.0
    cr = float(ratio(n_tp, n_gt)[keep].mean()) if keep.any() else 0.0
    op = float(ratio(n_tp.sum(), n_pred.sum()))
    orr = float(ratio(n_tp.sum(), n_gt.sum()))
    f1 = metrics.f1_score
    out = {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orr, "OF1": f1(op, orr)}
    return {k: 100.0 * v for k, v in out.items()}


def frequency_groups(train_positives: np.ndarray) -> list[np.ndarray]:
    """The classes of G1 .. G5: sorted by training positives (ties by index), five slices."""
    order = np.argsort(train_positives, kind="stable")
    n = len(order)
    return [order[g * n // GROUPS : (g + 1) * n // GROUPS] for g in range(GROUPS)]


def create_class_groups(ss, option: str = "") -> list[np.ndarray] | None:
    """The frequency groups of a run (``-o groups=frequency``; by default on OpenImages only),
    from the training split's clean positives; None for no groups."""
    if option == "none" or (not option and not ss.manifest["dataset"].startswith("openimages")):
        return None
    return frequency_groups(ss.full_lists("train").class_counts()[0])


def group_map(ap: np.ndarray, groups: list[np.ndarray]) -> dict[str, float | None]:
    """{"G1": mAP, …} from per-class APs (x 100, NaN: skipped); None for a group with no
    scored class."""
    out: dict[str, float | None] = {}
    for g, members in enumerate(groups, 1):
        kept = ap[members][~np.isnan(ap[members])]
        out[f"G{g}"] = float(kept.mean()) if kept.size else None
    return out
