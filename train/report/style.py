"""One look for every figure of the report: each method keeps one colour, marker and line style
in every figure (by its place in the method registry: tab10's colours x 7 markers x 4 dashes,
so 70 methods stay apart and neighbours differ in colour and marker), sizes and fonts that fit
a two-column paper (7 in wide, 7-8 pt text), axes whose ticks are always labelled, and every
figure written three ways: a 300-dpi PNG for the page, an SVG and a PDF for print."""

from __future__ import annotations

import zlib
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    SymmetricalLogLocator,
)

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)  # fmt: skip  (tab10)
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DASHES = ("-", "--", "-.", ":")
WIDTH = 7.0  # inches: the text width of a two-column paper (a figure spans both columns)
DPI = 300
FORMATS = ("png", "svg", "pdf")
RC = {
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "svg.fonttype": "none", "svg.hashsalt": "wsml-report", "pdf.fonttype": 42,
}  # fmt: skip


matplotlib.rcParams.update(RC)  # this module owns matplotlib in the report's process


@cache
def method_order() -> dict[str, int]:
    """Method name -> its place in the registry (registration order)."""
    from train.methods import METHODS

    return {name: i for i, name in enumerate(METHODS.in_order())}


def method_style(method: str, linear: bool = True) -> dict[str, Any]:
    """The method's colour, marker and line style (matplotlib keyword arguments); a method
    outside the registry gets a fixed place after it. Not linear (end to end): hollow marker."""
    order = method_order()
    i = order.get(method, len(order) + zlib.crc32(method.encode()) % 97)
    style = {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
             "linestyle": DASHES[(i // len(PALETTE)) % len(DASHES)]}  # fmt: skip
    if not linear:
        style["markerfacecolor"] = "none"
    return style


def new_figure(panels: int = 1, height: float = 2.7, width: float = WIDTH):
    fig, axes = plt.subplots(1, panels, figsize=(width, height), layout="constrained",
                             squeeze=False)  # fmt: skip
    return fig, list(axes[0])


def save(fig, stem: Path, legend: bool = True) -> list[str]:
    """Write ``stem``.png (300 dpi), .svg and .pdf (no dates inside: the same figure gives the
    same bytes); returns the files' names. ``legend``: the axes' labelled artists in one legend
    below the panels."""
    if legend:
        add_legend(fig)
    names = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        meta = {"png": {"Software": None}, "svg": {"Date": None}}.get(fmt, {"CreationDate": None})
        fig.savefig(path, dpi=DPI, metadata=meta)
        names.append(path.name)
    plt.close(fig)
    return names


def add_legend(fig) -> None:
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:  # as many columns as fit the figure's width (7 pt text: ~3.9 pt a character)
        width = fig.get_figwidth() * 72
        column = max(len(lab) for lab in labels) * 3.9 + 36  # text, handle and spacing (pt)
        ncol = max(1, min(len(labels), 6, int(width // column)))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, handlelength=2.2,
                   columnspacing=1.2)  # fmt: skip


def epoch_axis(ax, epochs: list[float]) -> None:
    """Whole epochs on the x axis; one epoch (a method that trains nothing) centred in [e-1, e+1]."""
    known = [e for e in epochs if e is not None]
    if known and max(known) - min(known) < 2:
        ax.set_xlim(min(known) - 1, max(known) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))


def value_axis(ax, values: list[float], label: str) -> str:
    """A readable y scale for values of any range: log (positive, over 1.5 decades), symlog
    (signed or with zeros, over 1.5 decades beside the smallest non-zero size), else linear;
    ticks at 1, 2, 5 x powers of ten, printed plainly; where fewer than two ticks would be
    labelled, linear. Returns the scale's name for the axis label."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    ax.set_ylabel(label)
    if len(v) == 0:
        return "linear"
    small = np.abs(v[v != 0]).min() if (v != 0).any() else 1.0
    decades = np.log10(np.abs(v).max() / small) if (v != 0).any() else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)  # over 3 decades: powers of ten only
    fmt = FuncFormatter(lambda x, _: f"{x:g}")
    if decades >= 1.5 and v.min() > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        scale = "log"
    elif decades >= 1.5:
        thresh = float(10 ** np.floor(np.log10(small)))
        ax.set_yscale("symlog", linthresh=thresh)
        ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=thresh, subs=subs))
        scale = "symlog"
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=2))
        return "linear"
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    low, high = ax.get_ylim()
    shown = [t for t in ax.yaxis.get_majorticklocs() if low <= t <= high]
    if len(shown) < 2:
        ax.set_yscale("linear")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=2))
        return "linear"
    return scale
