"""Per-class decision thresholds chosen on a run's validation split (``--threshold val-f1``).

For each class the threshold maximises that class's F1 on the validation predictions of the
selected epoch (``predictions/val.npy``, clean labels); candidates are the midpoints between
consecutive distinct scores, except below the lowest (a threshold that labels every validation
image positive says nothing). A class keeps the run's global threshold when its validation split
has fewer than ``min_positives`` positives (default 3), or when no candidate is left (every
score equal). Computed once and stored as ``thresholds.json`` in the run folder: per class the
threshold, its val F1, its val positives and whether it fell back, and the CF1/OF1 they give on
the test split.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shards.base.errors import WsmlError
from shards.base.fileio import write_bytes_atomic
from train.evaluate import score

THRESHOLDS = "thresholds.json"
MIN_POSITIVES = 3  # fewer validation positives: the class keeps the global threshold
VAL_F1 = "val-f1"
FEW = "few positives"
FLAT = "no threshold labels fewer than every val image"


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float] | None:
    """(threshold, F1) maximising F1 of ``scores >= threshold`` for one class, among the
    midpoints between consecutive distinct scores (ties: the highest threshold, fewest positive
    predictions); None when the scores hold one value (any cut labels all or none)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order].astype(np.float64), positive[order].astype(np.float64)
    last = np.nonzero(np.diff(s))[0]  # the last index of each distinct score but the lowest
    if not len(last):
        return None
    tp = np.cumsum(y)[last]
    f1 = 2 * tp / (last + 1.0 + y.sum())
    k = int(np.argmax(f1))
    return float((s[last[k]] + s[last[k] + 1]) / 2), float(f1[k])


def f1_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    total = predicted.sum() + positive.sum()
    return float(2 * (predicted & positive).sum() / total) if total else 0.0


def fit_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    fallback: float,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:
    """Per-class thresholds and their record (val F1 in %, val positives, fallback and why)
    from validation scores; unknown label entries (0) are left out."""
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        known = labels[:, c] != 0
        scores, pos = probs[known, c], labels[known, c] == 1
        found = best_f1_threshold(scores, pos) if pos.sum() >= min_positives else None
        why = None if found else (FEW if pos.sum() < min_positives else FLAT)
        t = found[0] if found else fallback
        per_class[name] = {
            "threshold": t,
            "val_f1": 100 * f1_at(scores, pos, t),
            "val_positives": int(pos.sum()),
            "fallback": why is not None,
            **({"why": why} if why else {}),
        }
    return {
        "thresholds": {name: r["threshold"] for name, r in per_class.items()},
        "classes": per_class,
        "global": [name for name, r in per_class.items() if r["fallback"]],
    }


def get_thresholds(run, min_positives: int = MIN_POSITIVES) -> tuple[np.ndarray, dict | None]:
    """The run's per-class thresholds (L,), and the new record to store (:func:`store`) when
    the run has none yet, or one made by other rules (stored once the predictions are)."""
    path = run.folder.path / THRESHOLDS
    stored = json.loads(path.read_text()) if path.is_file() else None
    if stored is not None and list(stored["thresholds"]) != run.classes:
        raise WsmlError(f"{path} was made for other classes: delete it to compute it again")
    if stored is None or "classes" not in stored or stored["min_positives"] != min_positives:
        stored = create_thresholds(run, min_positives)
        return np.array(list(stored["thresholds"].values())), stored
    return np.array([stored["thresholds"][c] for c in run.classes]), None


def store(run, stored: dict[str, Any], echo) -> bool:
    """Say what the thresholds are, then write ``thresholds.json`` in the run folder; on
    storage that cannot be written, say so (they are computed again next time). Returns
    whether it was written."""
    path = run.folder.path / THRESHOLDS
    for line in threshold_lines(stored, str(path)):
        echo(line)
    try:
        write_bytes_atomic(path, (json.dumps(stored, indent=1) + "\n").encode())
    except OSError as e:
        echo(
            f"could not save {path} ({e.strerror or e}): the thresholds above were used, and "
            "are computed again next time"
        )
        return False
    return True


def create_thresholds(run, min_positives: int = MIN_POSITIVES) -> dict[str, Any]:
    """Fit on the run's validation predictions; score on its test predictions."""
    val = run.folder.path / "predictions" / "val.npy"
    if not val.is_file():
        raise WsmlError(
            f"--threshold {VAL_F1} needs the run's validation predictions ({val}); this run "
            "has none: pass a number, e.g. --threshold 0.5"
        )
    ss = run.shards
    if "val" not in ss.splits:
        raise WsmlError(f"--threshold {VAL_F1} needs a val split in {ss.root}")
    stored = fit_thresholds(
        np.load(val), ss.full_labels("val"), run.classes, run.threshold, min_positives
    )
    test = run.folder.path / "predictions" / "test.npy"
    if test.is_file():
        t = np.array(list(stored["thresholds"].values()))
        labels = ss.full_labels("test")
        per_class = score(np.load(test), labels, t)
        plain = score(np.load(test), labels, run.threshold)
        stored["test"] = {k: per_class[k] for k in ("CF1", "OF1", "CP", "CR", "OP", "OR")}
        stored["test_global"] = {k: plain[k] for k in ("CF1", "OF1")}
    stored.update(fallback=run.threshold, min_positives=min_positives, rule=VAL_F1)
    return stored


def threshold_lines(stored: dict[str, Any], where: str) -> list[str]:
    lines = [f"per-class thresholds (max F1 on val) for {where}"]
    for why, said in ((FEW, f"fewer than {stored['min_positives']} val positives"), (FLAT, FLAT)):
        names = [n for n, r in stored["classes"].items() if r.get("why") == why]
        if names:
            lines.append(
                f"  {said}, global threshold {stored['fallback']:g} kept: {', '.join(names)}"
            )
    if "test" in stored:
        t, g = stored["test"], stored["test_global"]
        lines.append(
            f"  on test: CF1 {t['CF1']:.2f}  OF1 {t['OF1']:.2f}  (global {stored['fallback']:g}: "
            f"CF1 {g['CF1']:.2f}  OF1 {g['OF1']:.2f})"
        )
    return lines
