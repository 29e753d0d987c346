"""The report's figures, drawn with matplotlib's headless Agg backend (imported here and in
style.py only: ``--help`` and the other commands never load it). Each function draws one figure
for one (shard set, regime), writes it as PNG, SVG and PDF (style.save) and returns the files'
names, or [] when there is nothing to draw. A group of several seeds is drawn as its mean with
a ± one standard deviation band; every method keeps its style (style.method_style)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.report.style import epoch_axis, new_figure, save, value_axis

MAX_BARS = 60  # classes; more are drawn as lines
MARKS = 10  # markers on a curve at most (about: every k-th epoch)


@dataclass
class Curve:
    """One group's per-epoch values, one list per run (a sweep: its chosen member's)."""

    label: str
    style: dict[str, Any]
    runs: list[dict[int, float]]  # per run: {epoch: value}
    finished: bool = True


def mean_band(runs: list[dict[int, float]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(epochs, mean, std) over the runs that reached each epoch (std 0 where one did)."""
    epochs = sorted({e for r in runs for e in r})
    values = [[r[e] for r in runs if e in r and r[e] is not None] for e in epochs]
    mean = np.array([np.mean(v) if v else np.nan for v in values])
    std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    return epochs, mean, std


def draw_curve(ax, curve: Curve, label: bool = True) -> list[float]:
    """The group's mean line, and its band where several runs have an epoch; returns the
    values drawn (for the axis' scale)."""
    epochs, mean, std = mean_band(curve.runs)
    if not epochs or np.isnan(mean).all():
        return []
    style = dict(curve.style)
    if not curve.finished:
        style["linestyle"] = ":"
    ax.plot(epochs, mean, label=curve.label if label else None, gid=f"curve:{curve.label}",
            markevery=max(1, len(epochs) // MARKS), **style)  # fmt: skip
    if len(curve.runs) > 1 and (std > 0).any():
        ax.fill_between(epochs, mean - std, mean + std, color=style["color"], alpha=0.18, lw=0)
    return [*(mean - std).tolist(), *(mean + std).tolist()]


def plot_curves(val: list[Curve], loss: list[Curve], stem: Path) -> list[str]:
    """Val mAP and training loss per epoch (mean ± std over seeds)."""
    if not any(c.runs for c in val + loss):
        return []
    fig, (left, right) = new_figure(2)
    drawn = [draw_curve(left, c) for c in val]
    values = [v for c in loss for v in draw_curve(right, c, label=False)]
    if not any(drawn) and not values:
        return []
    epochs = [e for c in val + loss for r in c.runs for e in r]
    left.set(xlabel="epoch", ylabel="val mAP (%)", title="validation mAP")
    scale = value_axis(right, values, "training loss")
    right.set(xlabel="epoch", title="training loss" + ("" if scale == "linear" else f" ({scale})"))
    for ax in (left, right):
        epoch_axis(ax, epochs)
    return save(fig, stem)


def plot_per_class(
    series: dict[str, tuple[dict[str, Any], dict[str, float]]], frequency: dict | None, stem: Path
) -> list[str]:
    """AP per class of a few methods (bars, classes by the first method's AP), and AP against
    the class's training frequency (log scale) where the shard set is at hand."""
    if not series:
        return []
    first = next(iter(series.values()))[1]
    classes = sorted(first, key=lambda c: -(first[c] if first[c] is not None else -1))
    fig, axes = new_figure(2 if frequency else 1, height=2.8)
    bars = axes[0]
    width = 0.8 / len(series)
    x = np.arange(len(classes))
    for k, (label, (style, ap)) in enumerate(series.items()):
        values = [ap.get(c) if ap.get(c) is not None else np.nan for c in classes]
        if len(classes) <= MAX_BARS:
            hatch = style.get("hatch")
            bars.bar(x + k * width, values, width, label=label, gid=f"bars:{label}", hatch=hatch,
                     color="white" if hatch else style["color"], edgecolor=style["color"],
                     linewidth=0.6)  # fmt: skip
        else:  # thousands of bars draw slowly and read as noise: one line per method
            bars.plot(x, values, lw=0.8, color=style["color"], label=label, gid=f"line:{label}")
        if frequency:
            f = [frequency.get(c, 0) for c in classes]
            hollow = style.get("markerfacecolor") == "none"
            axes[1].scatter(f, values, s=12, marker=style["marker"], edgecolors=style["color"],
                            facecolors="none" if hollow else style["color"], alpha=0.85,
                            gid=f"points:{label}")  # fmt: skip
    bars.set(ylabel="test AP (%)", title="AP per class (sorted by the first)")
    if len(classes) <= 30:
        bars.set_xticks(x + 0.4 - width / 2, classes, rotation=90)
    else:
        bars.set_xlabel("class, by the first method's AP")
    if frequency:
        axes[1].set_xscale("log")
        axes[1].set(xlabel="training positives of the class", ylabel="test AP (%)",
                    title="AP against training frequency")  # fmt: skip
    return save(fig, stem)


def plot_precision_recall(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], ap: dict[str, float], title: str,
    stem: Path,
) -> list[str]:  # fmt: skip
    """Precision-recall curves of the best, median and worst class by test AP (entries of
    unknown truth, 0, left out)."""
    from sklearn.metrics import precision_recall_curve

    scored = sorted((v, c) for c, v in ap.items() if v is not None and c in classes)
    if not scored or probs.shape != labels.shape:
        return []
    picks = {"best": scored[-1], "median": scored[len(scored) // 2], "worst": scored[0]}
    fig, (ax,) = new_figure(1, height=2.8, width=3.4)  # one column of a two-column paper
    for (which, (value, name)), color, dash in zip(
        picks.items(), ("#1b9e77", "#7570b3", "#d95f02"), ("-", "--", ":"), strict=True
    ):
        j = classes.index(name)
        known = labels[:, j] != 0
        y = labels[known, j] == 1
        if not y.any():
            continue
        precision, recall, _ = precision_recall_curve(y, probs[known, j])
        ax.step(recall, precision, where="post", color=color, linestyle=dash,
                label=f"{which}: {name} (AP {value:.1f})")  # fmt: skip
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    return save(fig, stem)


@dataclass
class LabelCurves:
    """One method's label changes of one kind: per run {epoch: (precision %, changed)}."""

    label: str
    style: dict[str, Any]
    precision: list[dict[int, float]]
    changed: list[dict[int, float]]
    recall: list[dict[int, float]] | None = None  # where the method reports it (AEVLP)


def plot_label_state(curves: list[LabelCurves], chance: dict[str, float], stem: Path) -> list[str]:
    """Per epoch, for each method and kind of label change: the share of changed entries that
    the clean labels confirm (mean ± std over seeds; dotted: the share of the entries it could
    have changed that it changed rightly, its recall, where the method reports it) against
    chance (``chance``: line label -> %), and how many entries were changed."""
    if not curves:
        return []
    fig, (left, right) = new_figure(2)
    counts = []
    for c in curves:
        draw_curve(left, Curve(c.label, c.style, c.precision))
        if c.recall and any(c.recall):
            dotted = {**c.style, "linestyle": ":", "marker": "x"}
            draw_curve(left, Curve(f"{c.label} recall", dotted, c.recall), label=False)
        counts += draw_curve(right, Curve(c.label, c.style, c.changed), label=False)
    for (name, value), dash in zip(chance.items(), ("--", "-."), strict=False):
        left.axhline(value, color="#444444", linestyle=dash, lw=0.9, label=name, gid="chance")
    epochs = [e for c in curves for r in c.precision for e in r]
    left.set(xlabel="epoch", ylabel="right by the clean labels (%)", ylim=(0, 102),
             title="precision of the label changes"
             + (" (dotted: recall)" if any(c.recall for c in curves) else ""))  # fmt: skip
    scale = value_axis(right, counts, "entries changed in the epoch")
    right.set(xlabel="epoch", title="label changes" + ("" if scale == "linear" else f" ({scale})"))
    for ax in (left, right):
        epoch_axis(ax, epochs)
    return save(fig, stem)
