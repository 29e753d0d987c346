"""Bootstrap confidence intervals of test mAP, and paired comparisons of two runs on the same
test images (numpy only).

A draw resamples the N test images with replacement (``numpy.random.default_rng(seed)
.integers(0, N, (draws, N))``, so every run of one test split gets the same draws, and two runs
compare image for image). A draw's mAP is the field's (train/metrics.py: scikit-learn's AP per
class, 0 for a class without positives, mean over all classes) on the resampled images. It is
computed without resampling anything: a draw is a count per image, and a class's AP over the
resampled set is a count-weighted sum in the class's one score order (a tie group is one
threshold, as in scikit-learn), so each class is sorted once and the draws are cumulative sums.
Draws are kept per run (``bootstrap-test.npy``), so seeds' means and paired differences come
from the stored draws alone.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.base.fileio import write_bytes_atomic

DRAWS, SEED, LEVEL = 1000, 0, 95.0
FILE = "bootstrap-test.npy"  # a run folder's per-draw test mAPs (float64, DRAWS,)
_CHUNK_ENTRIES = 1 << 24  # draws x images held at once


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def draw_counts(n: int, draws: int = DRAWS, seed: int = SEED):
    """Per chunk of draws, (k, n) int32 counts of each image in each draw: the draws of
    ``default_rng(seed).integers(0, n, (draws, n))``, generated a chunk at a time."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_ENTRIES // max(1, n))
    for start in range(0, draws, step):
        k = min(step, draws - start)
        idx = rng.integers(0, n, size=(k, n))
        flat = (idx + np.arange(k)[:, None] * n).ravel()
        yield np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.int32)


def bootstrap_map(
    probs: np.ndarray, labels: np.ndarray, draws: int = DRAWS, seed: int = SEED
) -> np.ndarray:
    """(draws,) mAP (x 100) of each bootstrap draw of the rows of ``probs`` (N, L) against the
    clean ``labels`` (N, L; positive where 1)."""
    probs, pos = np.asarray(probs, dtype=np.float64), np.asarray(labels) == 1
    n, classes = probs.shape
    orders = [_class_order(probs[:, j], pos[:, j]) for j in range(classes)]
    out = []
    for counts in draw_counts(n, draws, seed):
        by_image = np.ascontiguousarray(counts.T)  # (n, k): a class's gather copies rows
        ap = np.zeros((len(counts), classes))
        for j, (order, hits, ends, upto) in enumerate(orders):
            if len(hits):
                ap[:, j] = _weighted_ap(by_image[order], hits, ends, upto)
        out.append(100.0 * ap.mean(1))
    return np.concatenate(out)


def _class_order(scores: np.ndarray, positive: np.ndarray):
    """Positions in descending score order: (the order, the positives' positions, the last
    position of each positive's tie group, and how many positives sit at or before it)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last position of each tie group
    ends = np.flip(np.minimum.accumulate(np.flip(np.where(last, np.arange(len(s)), len(s)))))
    hits = np.flatnonzero(positive[order])
    return order, hits, ends[hits], np.searchsorted(hits, ends[hits], side="right")


def _weighted_ap(w: np.ndarray, hits, ends, upto) -> np.ndarray:
    """AP of each draw (columns of ``w``: (n, k) counts in score order): the count-weighted
    mean over the positives of #positives / #images scoring at least the positive's score."""
    cut, back = np.unique(ends, return_inverse=True)
    starts = np.r_[0, cut[:-1] + 1]
    seen = np.cumsum(np.add.reduceat(w[: cut[-1] + 1], starts, axis=0), axis=0)[back]  # (P, k)
    wp = w[hits]
    found = np.cumsum(wp, axis=0)[upto - 1]
    total = wp.sum(0)
    ap = (wp * (found / np.maximum(seen, 1))).sum(0)
    return np.where(total > 0, ap / np.maximum(total, 1), 0.0)


def interval(values: np.ndarray, level: float = LEVEL) -> Interval:
    """The percentile interval holding ``level`` % of the draws."""
    tail = (100.0 - level) / 2
    low, high = np.percentile(np.asarray(values), [tail, 100.0 - tail])
    return Interval(float(low), float(high))


def compare(
    a: np.ndarray, b: np.ndarray, observed: float | None = None, level: float = LEVEL
) -> dict[str, float]:
    """Paired bootstrap of mAP(A) - mAP(B) over the same draws: the difference (``observed``
    on the test set itself where given, else the draws' mean), its interval, and the share (%)
    of draws in which A beats B (a tie counts half, so identical predictions give 50)."""
    d = np.asarray(a) - np.asarray(b)
    ci = interval(d, level)
    wins = float(np.mean(d > 0) + 0.5 * np.mean(d == 0))
    diff = float(d.mean()) if observed is None else float(observed)
    return {"diff": diff, "low": ci.low, "high": ci.high, "wins": 100.0 * wins}


def summary_entry(values: np.ndarray, rows: int, draws: int = DRAWS, seed: int = SEED) -> dict:
    """What summary.json records of a run's bootstrap (``test_ci``)."""
    ci = interval(values)
    return {"low": ci.low, "high": ci.high, "level": LEVEL, "draws": draws, "seed": seed,
            "rows": rows, "file": FILE}  # fmt: skip


def same_draws(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two runs' stored draws resampled the same images (same rows, draws and seed)."""
    keys = ("rows", "draws", "seed")
    return bool(a and b) and all(a.get(k) == b.get(k) for k in keys)


def write_test_ci(folder: Path, labels) -> dict[str, Any]:
    """A run's end: the bootstrap draws of its selected epoch's test predictions
    (``predictions/test.npy``) against the clean test ``labels`` (LabelLists), written to
    ``FILE`` in ``folder``; returns ``{"test_ci": …}`` for summary.json, or {} where the run
    keeps no (N, L) predictions (scored by annotated entries, e.g. Open Images)."""
    probs_file = Path(folder) / "predictions" / "test.npy"
    if labels.has_unknown() or not probs_file.is_file():
        return {}
    values = bootstrap_map(np.load(probs_file), labels.dense())
    buffer = io.BytesIO()
    np.save(buffer, values)
    write_bytes_atomic(Path(folder) / FILE, buffer.getvalue())
    return {"test_ci": summary_entry(values, len(labels))}


def read_draws(folder: Path, entry: dict[str, Any] | None) -> np.ndarray | None:
    """A run's stored draws, or None when it has none (or they do not match its summary)."""
    path = Path(folder) / FILE
    if not entry or not path.is_file():
        return None
    try:
        values = np.load(path)
    except (OSError, ValueError):
        return None
    return values if values.shape == (entry.get("draws"),) else None
