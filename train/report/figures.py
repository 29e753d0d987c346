"""The report's figures, PNGs drawn with matplotlib's headless Agg backend (imported here only:
``--help`` and the other commands never load it). Each function draws one figure for one
(dataset, regime) and returns False when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from train.report.runs import RunInfo  # noqa: E402

DPI = 110
MAX_BARS = 60  # classes; more are drawn as lines


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path, epochs: bool = False) -> None:
    """Write the PNG; ``epochs``: whole numbers on every x axis."""
    if epochs:
        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_curves(groups: dict[str, list[RunInfo]], path: Path) -> bool:
    """Val mAP and training loss per epoch, one line per run, a colour per method (seeds share
    it); a sweep shows its chosen member."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for color, (label, runs) in zip(_colors(len(groups)), groups.items(), strict=True):
        for i, run in enumerate(runs):
            lines = run.curve_metrics
            epochs = [m["epoch"] for m in lines]
            val = [(m.get("val") or {}).get("mAP") for m in lines]
            loss = [(m.get("train") or {}).get("loss") for m in lines]
            name = label if i == 0 else None
            style = "-" if run.finished else ":"
            if any(v is not None for v in val):
                left.plot(epochs, _nan(val), style, marker="o", ms=3, color=color, label=name)
                drawn = True
            if any(v is not None for v in loss):
                right.plot(epochs, _nan(loss), style, marker="o", ms=3, color=color, label=name)
    left.set(xlabel="epoch", ylabel="val mAP (%)", title="validation mAP")
    right.set(xlabel="epoch", ylabel="training loss", title="training loss (symlog)")
    right.set_yscale("symlog", linthresh=0.1)  # summed losses (ASL, Hill) beside mean ones
    if drawn:
        left.legend(fontsize=7, ncol=2)
    _save(fig, path, epochs=True)
    return drawn


def _nan(values: list) -> list[float]:
    return [np.nan if v is None else v for v in values]


def plot_per_class(
    series: dict[str, dict[str, float]], frequency: dict[str, int] | None, path: Path
) -> bool:
    """AP per class of a few methods (bars, classes by the first method's AP), and AP against
    the class's training frequency (log scale) where the shard set is at hand."""
    if not series:
        return False
    first = next(iter(series.values()))
    classes = sorted(first, key=lambda c: -(first[c] if first[c] is not None else -1))
    panels = 2 if frequency else 1
    fig, axes = plt.subplots(1, panels, figsize=(11 if panels == 2 else 7, 4), squeeze=False)
    bars = axes[0][0]
    width = 0.8 / len(series)
    x = np.arange(len(classes))
    for k, (color, (label, ap)) in enumerate(
        zip(_colors(len(series)), series.items(), strict=True)
    ):
        values = [ap.get(c) if ap.get(c) is not None else np.nan for c in classes]
        if len(classes) <= MAX_BARS:
            bars.bar(x + k * width, values, width, color=color, label=label)
        else:  # thousands of bars draw slowly and read as noise: one line per method
            bars.plot(x, values, lw=0.8, color=color, label=label)
        if frequency:
            f = [frequency.get(c, 0) for c in classes]
            axes[0][1].scatter(f, values, s=14, color=color, label=label, alpha=0.8)
    bars.set(ylabel="test AP (%)", title="AP per class (sorted by the first)")
    if len(classes) <= 30:
        bars.set_xticks(x + 0.4 - width / 2, classes, rotation=90, fontsize=7)
    else:
        bars.set_xticks([])
    bars.legend(fontsize=7)
    if frequency:
        scatter = axes[0][1]
        scatter.set_xscale("log")
        scatter.set(xlabel="training positives of the class", ylabel="test AP (%)",
                    title="AP against training frequency")  # fmt: skip
        scatter.legend(fontsize=7)
    _save(fig, path)
    return True


def plot_precision_recall(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], ap: dict[str, float], title: str,
    path: Path,
) -> bool:  # fmt: skip
    """Precision-recall curves of the best, median and worst class by test AP (entries of
    unknown truth, 0, left out)."""
    from sklearn.metrics import precision_recall_curve

    scored = sorted((v, c) for c, v in ap.items() if v is not None and c in classes)
    if not scored or probs.shape != labels.shape:
        return False
    picks = {"best": scored[-1], "median": scored[len(scored) // 2], "worst": scored[0]}
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for color, (which, (value, name)) in zip(_colors(3), picks.items(), strict=True):
        j = classes.index(name)
        known = labels[:, j] != 0
        y = labels[known, j] == 1
        if not y.any():
            continue
        precision, recall, _ = precision_recall_curve(y, probs[known, j])
        ax.step(recall, precision, where="post", color=color,
                label=f"{which}: {name} (AP {value:.1f})")  # fmt: skip
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)
    return True


def plot_label_state(series: dict[str, list[tuple]], path: Path) -> bool:
    """Per epoch, for each method and kind of label change: the share of changed entries that
    the clean labels confirm (precision; dashed: recall, where the method reports it) and how
    many entries were changed. Points are (epoch, precision, changed[, recall])."""
    if not series:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for color, (label, points) in zip(_colors(len(series)), series.items(), strict=True):
        epochs = [p[0] for p in points]
        left.plot(epochs, [np.nan if p[1] is None else p[1] for p in points], marker="o", ms=3,
                  color=color, label=label)  # fmt: skip
        recall = [p[3] if len(p) > 3 and p[3] is not None else np.nan for p in points]
        if not np.isnan(recall).all():
            left.plot(epochs, recall, ls="--", marker="x", ms=3, color=color)
        right.plot(epochs, [p[2] for p in points], marker="o", ms=3, color=color, label=label)
    left.set(xlabel="epoch", ylabel="right by the clean labels (%)", ylim=(0, 102),
             title="precision (dashed: recall) of the label changes")  # fmt: skip
    right.set(xlabel="epoch", ylabel="entries changed in the epoch", title="label changes")
    right.set_yscale("symlog")
    left.legend(fontsize=7)
    _save(fig, path, epochs=True)
    return True
