"""Per-class decision thresholds chosen on a run's validation split (``--threshold val-f1``).

For each class the threshold maximises that class's F1 on the validation predictions of the
selected epoch (``predictions/val.npy``, clean labels); candidates are the midpoints between
consecutive distinct scores. A class with fewer than ``MIN_POSITIVES`` validation positives
keeps the run's global threshold. Computed once and stored as ``thresholds.json`` in the run
folder, with the CF1/OF1 the thresholds give on the test split.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shards.errors import WsmlError
from shards.fileio import write_bytes_atomic
from train.evaluate import score

THRESHOLDS = "thresholds.json"
MIN_POSITIVES = 2  # fewer validation positives: the class keeps the global threshold
VAL_F1 = "val-f1"


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold`` for one class; ties: the
    highest threshold (fewest positive predictions)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order].astype(np.float64), positive[order].astype(np.float64)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    predicted = last + 1.0
    f1 = 2 * tp / (predicted + y.sum())
    k = int(np.argmax(f1))
    below = s[last[k] + 1] if last[k] + 1 < len(s) else s[last[k]] - 1e-6
    return float((s[last[k]] + below) / 2), float(f1[k])


def fit_thresholds(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], fallback: float
) -> dict[str, Any]:
    """Per-class thresholds (and which classes kept ``fallback``) from validation scores."""
    values, kept = [], []
    for c, name in enumerate(classes):
        known = labels[:, c] != 0
        pos = labels[known, c] == 1
        if pos.sum() < MIN_POSITIVES:
            values.append(fallback)
            kept.append(name)
            continue
        values.append(best_f1_threshold(probs[known, c], pos)[0])
    return {"thresholds": dict(zip(classes, values, strict=True)), "global": kept}


def get_thresholds(run) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The run's per-class thresholds (L,), and the new record to store (:func:`store`) when
    the run has none yet (stored only once the predictions are written)."""
    path = run.folder.path / THRESHOLDS
    if not path.is_file():
        stored = create_thresholds(run)
        return np.array(list(stored["thresholds"].values()), dtype=np.float32), stored
    stored = json.loads(path.read_text())
    if list(stored["thresholds"]) != run.classes:
        raise WsmlError(f"{path} was made for other classes: delete it to compute it again")
    return np.array([stored["thresholds"][c] for c in run.classes], dtype=np.float32), None


def store(run, stored: dict[str, Any], echo) -> None:
    """Write ``thresholds.json`` in the run folder and say what it holds."""
    path = run.folder.path / THRESHOLDS
    write_bytes_atomic(path, (json.dumps(stored, indent=1) + "\n").encode())
    for line in threshold_lines(stored, str(path)):
        echo(line)


def create_thresholds(run) -> dict[str, Any]:
    """Fit on the run's validation predictions; score on its test predictions."""
    val = run.folder.path / "predictions" / "val.npy"
    if "val" not in run.shards.splits or not val.is_file():
        raise WsmlError(
            f"--threshold {VAL_F1} needs the run's validation predictions ({val}) and a val "
            f"split in {run.shards.root}; this run has none: pass a number, e.g. --threshold 0.5"
        )
    stored = fit_thresholds(np.load(val), run.shards.full_labels("val"), run.classes, run.threshold)
    test = run.folder.path / "predictions" / "test.npy"
    if test.is_file():
        t = np.array(list(stored["thresholds"].values()))
        labels = run.shards.full_labels("test")
        per_class = score(np.load(test), labels, t)
        plain = score(np.load(test), labels, run.threshold)
        stored["test"] = {k: per_class[k] for k in ("CF1", "OF1", "CP", "CR", "OP", "OR")}
        stored["test_global"] = {k: plain[k] for k in ("CF1", "OF1")}
    stored.update(fallback=run.threshold, min_positives=MIN_POSITIVES, rule=VAL_F1)
    return stored


def threshold_lines(stored: dict[str, Any], where: str) -> list[str]:
    lines = [f"per-class thresholds (max F1 on val) written to {where}"]
    if stored["global"]:
        lines.append(
            f"  fewer than {MIN_POSITIVES} val positives, global threshold "
            f"{stored['fallback']:g} kept: {', '.join(stored['global'])}"
        )
    if "test" in stored:
        t, g = stored["test"], stored["test_global"]
        lines.append(
            f"  on test: CF1 {t['CF1']:.2f}  OF1 {t['OF1']:.2f}  (global {stored['fallback']:g}: "
            f"CF1 {g['CF1']:.2f}  OF1 {g['OF1']:.2f})"
        )
    return lines
