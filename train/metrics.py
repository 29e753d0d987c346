"""Evaluation metrics of the field (METHODS.md §0.4, §9, §12.10), numpy only.

mAP (Cole et al.'s, shared by Zhou, LL, BoostLU and VLPL): per class, scikit-learn's average
precision on the clean labels (positive iff label == 1), i.e. sum over distinct score thresholds
of (R_k - R_{k-1}) P_k, so tied scores form one threshold; a class without positives gets AP 0
and stays in the mean; mAP = 100 x mean over all classes.
OpenImages variant (LL): per class only annotated entries (label != 0; 1 positive, -1 negative)
are scored; a class without annotated entries is skipped, one without positives gets AP 0.
``style="asl"`` is the ASL-code AP used by ASL, SPLC, HSPNet and PU-MLC: the mean of the
precision at each positive's own rank (ties broken by row order), over (positives + 1e-8).
Thresholded CP, CR, CF1, OP, OR, OF1 follow the standard definitions (score >= threshold is a
predicted positive); per class 0/0 counts as 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shards.base.errors import WsmlError

STYLES = ("sklearn", "asl")
_CHUNK_ENTRIES = 1 << 22  # entries sorted at once; classes are processed in column chunks


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise WsmlError(f"{name} must be a 2-d (images x classes) array, got shape {arr.shape}")
    return arr


def _inputs(scores: Any, labels: Any, *, keep_float32: bool = False):
    """(scores, labels) as arrays of one shape; scores as float64, or kept as float32 where
    they are (ranking them is exact in either, and float32 sorts faster)."""
    s = _as_numpy(scores, "scores")
    if not (keep_float32 and s.dtype == np.float32):
        s = s.astype(np.float64)
    y = _as_numpy(labels, "labels")
    if s.shape != y.shape:
        raise WsmlError(f"scores {s.shape} and labels {y.shape} differ in shape")
    if np.isnan(s).any():
        raise WsmlError("scores contain NaN")
    return s, y


def _chunk_ap(s: np.ndarray, pos: np.ndarray, scored: np.ndarray, style: str) -> np.ndarray:
    """AP of each column; ``scored`` marks the entries that count (all, or annotated)."""
    if style == "sklearn":
        return _sklearn_ap(s, pos, scored)
    n = s.shape[0]
    # ASL's AP breaks ties by row order: precision at each positive's own rank.
    order = np.argsort(-s, axis=0, kind="stable")
    hit = np.take_along_axis(pos & scored, order, 0)
    counted = np.cumsum(np.take_along_axis(scored, order, 0), axis=0)
    tp = np.cumsum(hit, axis=0)
    precision = np.divide(tp, counted, out=np.zeros((n, s.shape[1])), where=counted > 0)
    return (precision * hit).sum(0) / (hit.sum(0) + 1e-8)


def _sklearn_ap(s: np.ndarray, pos: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """scikit-learn's AP of each column without ranking every entry: a tie group is one
    threshold, so each positive counts the precision at its own score,
    #positives >= s / #scored >= s, and AP is the mean of those over the positives. Needs the
    scored entries sorted (values only) and the positives' scores sorted."""
    s_t, pos_t, scored_t = (np.ascontiguousarray(a.T) for a in (s, pos & scored, scored))
    full = bool(scored_t.all())
    ranked = np.sort(s_t, axis=1) if full else None  # (C, N) ascending, every entry scored
    out = np.zeros(s_t.shape[0])
    for j in range(len(out)):
        p = np.sort(s_t[j][pos_t[j]])
        if p.size == 0:
            continue  # no positive: AP 0
        col = ranked[j] if full else np.sort(s_t[j][scored_t[j]])
        counted = len(col) - np.searchsorted(col, p, side="left")  # scored entries >= each p
        tp = len(p) - np.searchsorted(p, p, side="left")  # positives >= each p
        out[j] = np.mean(tp / counted)
    return out


def average_precision(
    scores: Any, labels: Any, *, annotated_only: bool = False, style: str = "sklearn"
) -> np.ndarray:
    """AP per class in [0, 1] (L,); NaN marks a class the OpenImages variant skips."""
    if style not in STYLES:
        raise WsmlError(f"unknown AP style {style!r}; choices: {', '.join(STYLES)}")
    s, y = _inputs(scores, labels, keep_float32=True)
    pos = y == 1
    scored = y != 0 if annotated_only else np.ones_like(pos)
    out = np.empty(s.shape[1])
    step = max(1, _CHUNK_ENTRIES // max(1, s.shape[0]))
    for a in range(0, s.shape[1], step):
        b = min(s.shape[1], a + step)
        out[a:b] = _chunk_ap(s[:, a:b], pos[:, a:b], scored[:, a:b], style)
    if annotated_only:
        out[~scored.any(0)] = np.nan
    return out


def mean_average_precision(
    scores: Any, labels: Any, *, annotated_only: bool = False, style: str = "sklearn"
) -> float:
    """mAP x 100 (see the module docstring for the two variants)."""
    ap = average_precision(scores, labels, annotated_only=annotated_only, style=style)
    kept = ap[~np.isnan(ap)]
    if kept.size == 0:
        raise WsmlError("no class has an annotated entry; mAP is undefined")
    return float(100.0 * kept.mean())


def safe_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.shape(a)), where=np.asarray(b) > 0)


def f1_score(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def threshold_metrics(
    scores: Any, labels: Any, *, threshold: float = 0.5, annotated_only: bool = False
) -> dict[str, float]:
    """CP, CR, CF1 (per-class means) and OP, OR, OF1 (over all entries), x 100."""
    s, y = _inputs(scores, labels)
    scored = y != 0 if annotated_only else np.ones(y.shape, dtype=bool)
    pred = (s >= threshold) & scored
    gt = (y == 1) & scored
    n_pred, n_gt, n_tp = pred.sum(0), gt.sum(0), (pred & gt).sum(0)
    keep = scored.any(0)
    cp = float(safe_ratio(n_tp, n_pred)[keep].mean()) if keep.any() else 0.0
    cr = float(safe_ratio(n_tp, n_gt)[keep].mean()) if keep.any() else 0.0
    op = float(safe_ratio(n_tp.sum(), n_pred.sum()))
    orr = float(safe_ratio(n_tp.sum(), n_gt.sum()))
    out = {
        "CP": cp,
        "CR": cr,
        "CF1": f1_score(cp, cr),
        "OP": op,
        "OR": orr,
        "OF1": f1_score(op, orr),
    }
    return {k: 100.0 * v for k, v in out.items()}


def evaluate(
    scores: Any,
    labels: Any,
    *,
    threshold: float = 0.5,
    annotated_only: bool = False,
    style: str = "sklearn",
) -> dict[str, Any]:
    """Everything a run reports for one split: mAP, the thresholded metrics and ``AP`` per class
    (x 100, NaN for skipped classes)."""
    ap = average_precision(scores, labels, annotated_only=annotated_only, style=style)
    kept = ap[~np.isnan(ap)]
    if kept.size == 0:
        raise WsmlError("no class has an annotated entry; mAP is undefined")
    out: dict[str, Any] = {"mAP": float(100.0 * kept.mean())}
    out.update(
        threshold_metrics(scores, labels, threshold=threshold, annotated_only=annotated_only)
    )
    out["AP"] = 100.0 * ap
    return out
