"""``cli.py report``: read run folders, group them, draw the figures of every (dataset, regime)
and write ``index.html`` (self-contained, PNGs beside it) and ``report.md`` with the same tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from shards.errors import WsmlError
from train.report.runs import RunInfo, read_runs
from train.report.tables import group_runs, unfinished_rows

BASELINES = ("an", "bce")  # shown beside the best method in the per-class figure


@dataclass
class Section:
    """One (dataset, regime): its figures (file, caption) and notes on what is missing."""

    title: str
    figures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    rows: list[dict[str, Any]]
    unfinished: list[dict[str, Any]]
    sections: list[Section]
    problems: list[str]
    paper_numbers: bool
    sources: list[str]


def write_report(folders: list[str], out: str | Path, paper_numbers: bool = True) -> Path:
    """Write the report of the runs under ``folders`` to ``out``; returns index.html's path."""
    try:
        from train.report import figures
    except ImportError as e:
        raise WsmlError(f"the report needs matplotlib ({e}): pip install -e '.[report]'") from None
    from train.report.page import write_pages

    runs = read_runs(folders)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_old_figures(out)
    rows = group_runs(runs.finished, paper_numbers)
    report = Report(rows, unfinished_rows(runs.unfinished), [], runs.problems, paper_numbers, [])
    by_key: dict[tuple[str, str], list[RunInfo]] = {}
    for run in runs.runs:
        k = run.key()
        by_key.setdefault((str(k["dataset"]), str(k["regime"])), []).append(run)
    # per dataset, the regime with the most runs first (the study's own, then bce's full labels)
    for (dataset, regime), mine in sorted(by_key.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        section = Section(f"{dataset}, {regime}")
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{dataset}-{regime}").strip("-")
        draw_section(figures, section, out, slug, mine, runs.runs, rows)
        report.sections.append(section)
    if paper_numbers:
        report.sources = sorted({r["paper source"] for r in rows if r.get("paper source")})
    return write_pages(report, out)


def remove_old_figures(out: Path) -> None:
    """The figures an earlier report in ``out`` referenced (other runs may not redraw them);
    nothing else in the folder is touched."""
    page = out / "index.html"
    if page.is_file():
        for name in re.findall(r'<img src="([^"/]+\.png)"', page.read_text(errors="replace")):
            (out / name).unlink(missing_ok=True)


def draw_section(figures, section: Section, out: Path, slug: str, runs, all_runs, rows) -> None:
    """The figures of one (dataset, regime) from its runs; ``all_runs`` and ``rows`` (every
    dataset's) give the baselines trained in another regime (bce)."""
    dataset, regime = section.title.split(", ", 1)
    groups: dict[str, list[RunInfo]] = {}
    for run in sorted(runs, key=lambda r: (str(r.key()["method"]), str(r.key()["seed"]))):
        groups.setdefault(_label(run.key()), []).append(run)
    _draw(section, out, f"{slug}-curves.png", "Learning curves: validation mAP and training "
          "loss per epoch (a sweep: its chosen member; dotted: unfinished).",
          lambda p: figures.plot_curves(groups, p))  # fmt: skip
    _draw(section, out, f"{slug}-labels.png", "Label state against the truth: per epoch, the "
          "share of the entries a method changed that the clean training labels confirm, and "
          "how many it changed.", lambda p: figures.plot_label_state(label_series(groups), p))  # fmt: skip
    mine = [r for r in rows if str(r["dataset"]) == dataset and r["regime"] == regime]
    if not mine:
        section.notes.append("No finished run yet: no per-class or precision-recall figure.")
        return
    best = max(mine, key=lambda r: r["test mAP"])
    finished = {str(run.path): run for run in all_runs if run.finished}
    series = {_label(best): mean_ap([finished[p] for p in best["paths"]])}
    for name in BASELINES:  # bce trains on the full labels: another regime, the same dataset
        for row in rows:
            same = str(row["dataset"]) == dataset and row["method"] == name and row is not best
            label = _label(row) + ("" if row["regime"] == regime else f" ({row['regime']})")
            if same and label not in series:
                series[label] = mean_ap([finished[p] for p in row["paths"]])
    first = finished[best["paths"][0]]
    frequency, labels = shard_set_labels(first, section.notes)
    _draw(section, out, f"{slug}-per-class.png", f"Per class: test AP of the best method "
          f"({_label(best)}) and of {', '.join(BASELINES)} where present"
          + ("; AP against the class's training frequency." if frequency else "."),
          lambda p: figures.plot_per_class(series, frequency, p))  # fmt: skip
    _draw_pr(figures, section, out, slug, first, labels, _label(best))


def _draw(section: Section, out: Path, name: str, caption: str, draw) -> None:
    if draw(out / name):
        section.figures.append((name, caption))
    else:
        (out / name).unlink(missing_ok=True)


def _draw_pr(figures, section, out, slug, run: RunInfo, labels, label) -> None:
    file = run.predictions_dir / "test.npy"
    if labels is None:
        return
    if not file.is_file():
        section.notes.append(f"{run.path} has no predictions/test.npy: no precision-recall curves.")
        return
    probs = np.load(file)
    classes = list(run.config.get("classes") or [])
    ap = run.summary.get("test_ap") or {}
    title = f"{label}, epoch {run.summary.get('best_epoch')}"
    _draw(section, out, f"{slug}-pr.png", f"Precision-recall curves of {label} ({run.name}) at "
          "its selected epoch, for the best, median and worst class by test AP.",
          lambda p: figures.plot_precision_recall(probs, labels, classes, ap, title, p))  # fmt: skip


def _label(key: dict[str, Any]) -> str:
    linear = str(key["setting"]).startswith("linear")
    return f"{key['method']}" if linear else f"{key['method']} ({key['setting']})"


def mean_ap(runs: list[RunInfo]) -> dict[str, float]:
    """Per-class test AP, the mean over seeds."""
    aps = [r.summary.get("test_ap") or {} for r in runs]
    out = {}
    for c in aps[0]:
        values = [a.get(c) for a in aps]
        out[c] = None if any(v is None for v in values) else float(np.mean(values))
    return out


def label_series(groups: dict[str, list[RunInfo]]) -> dict[str, list[tuple]]:
    """{"method: kind": [(epoch, precision, changed, recall or None)]} from the first run of
    each group."""
    series: dict[str, list[tuple]] = {}
    for label, runs in groups.items():
        for line in runs[0].curve_metrics:
            train = line.get("train") or {}
            for key, changed in train.items():
                if key.startswith("labels/") and key.endswith("/changed"):
                    kind = key.split("/")[1]
                    precision = train.get(f"labels/{kind}/precision")
                    recall = train.get(f"labels/{kind}/recall")
                    series.setdefault(f"{label}: {kind}", []).append(
                        (line["epoch"], precision, changed, recall)
                    )
    return series


def shard_set_labels(run: RunInfo, notes: list[str]) -> tuple[dict | None, np.ndarray | None]:
    """(training positives per class, the test split's clean labels) from the run's shard set;
    (None, None) with a note when it is not at hand."""
    shards = (run.config.get("run") or {}).get("shards")
    try:
        return _read_labels(str(shards), tuple(run.config.get("classes") or ()))
    except (WsmlError, OSError, KeyError, ValueError) as e:
        notes.append(f"Shard set {shards} not readable ({e}): no frequency or PR figures.")
        return None, None


@cache
def _read_labels(shards: str, classes: tuple[str, ...]) -> tuple[dict, np.ndarray]:
    from shards.shardset import open_shard_set

    ss = open_shard_set(shards)
    if tuple(ss.classes) != classes:
        raise WsmlError("its classes are not the run's")
    train = ss.full_labels("train")
    frequency = dict(zip(classes, (train == 1).sum(0).tolist(), strict=True))
    return frequency, ss.full_labels("test")
