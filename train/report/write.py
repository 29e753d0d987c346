"""``cli.py report``: read run folders, group them, draw the figures of every (shard set, regime)
and write ``index.html`` (self-contained, figures beside it as PNG, SVG and PDF) and
``report.md`` with the same tables, into a new folder swapped in for ``--out`` at the end."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from shards.base.errors import WsmlError
from train.report.outdir import check_out, staged
from train.report.runs import RunInfo, read_runs
from train.report.stats import paired_matrix, seed_draw_tables
from train.report.tables import by_table, group_runs, unfinished_rows

BASELINES = ("an", "bce")  # shown beside the best method in the per-class figure


@dataclass
class Section:
    """One (shard set, regime): its figures (files, caption) and notes on what is missing."""

    title: str
    figures: list[tuple[list[str], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    rows: list[dict[str, Any]]
    unfinished: list[dict[str, Any]]
    sections: list[Section]
    problems: list[str]
    paper_numbers: bool
    sources: list[str]
    paired: dict[str, dict] = field(default_factory=dict)  # table title -> paired_matrix
    seed_draws: list = field(default_factory=list)  # stats.SeedDrawTable
    provenance: dict[str, Any] = field(default_factory=dict)


def write_report(
    folders: list[str], out: str | Path, paper_numbers: bool = True, overwrite: bool = False
) -> Path:
    """Write the report of the runs under ``folders`` to ``out``; returns index.html's path."""
    try:
        from train.report import figures
    except ImportError as e:
        raise WsmlError(f"the report needs matplotlib ({e}): pip install -e '.[report]'") from None
    from train.provenance import describe_invocation
    from train.report.page import describe_runs, write_pages

    out = Path(out)
    check_out(out, overwrite)
    runs = read_runs(folders)
    rows = group_runs(runs.finished, paper_numbers)
    report = Report(rows, unfinished_rows(runs.unfinished), [], runs.problems, paper_numbers, [])
    report.provenance = {"report": describe_invocation(), "runs": describe_runs(runs.runs)}
    finished = {str(run.path): run for run in runs.finished}
    for title, table in by_table(rows).items():
        report.paired[title] = paired_matrix(table["main"], finished)
    report.seed_draws = seed_draw_tables([finished[p] for r in rows for p in r["paths"]])
    if paper_numbers:
        report.sources = sorted({r["paper source"] for r in rows if r.get("paper source")})
    slugs: set[str] = set()
    with staged(out) as new:
        for (data, regime), mine in list_sections(runs.runs):
            section = Section(f"{mine[0].table_title}, {regime}")
            slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{mine[0].table_title}-{regime}").strip("-")
            if slug in slugs:  # two shard sets of one name
                slug += "-" + re.sub(r"[^A-Za-z0-9]+", "", data)[-8:]
            slugs.add(slug)
            draw_section(figures, section, new, slug, mine, rows, finished)
            report.sections.append(section)
        write_pages(report, new)
    return out / "index.html"


def list_sections(runs: list[RunInfo]) -> list[tuple[tuple[str, str], list[RunInfo]]]:
    """Runs by (shard set, regime): per shard set, the regime with the most runs first."""
    by_key: dict[tuple[str, str], list[RunInfo]] = {}
    for run in runs:
        k = run.key()
        by_key.setdefault((k["data"], str(k["regime"])), []).append(run)
    return sorted(by_key.items(), key=lambda kv: (kv[1][0].table_title, kv[0][0], -len(kv[1])))


def draw_section(figures, section: Section, out: Path, slug: str, runs, rows, finished) -> None:
    """The figures of one (shard set, regime) from its runs; ``rows`` (every table's) and
    ``finished`` give the baselines trained in another regime (bce)."""
    groups = figure_groups(runs)
    seeds = max(len(g) for g in groups.values())
    band = f" Mean ± one standard deviation over seeds (up to {seeds})." if seeds > 1 else ""
    val, loss = learning_curves(groups)
    _draw(section, out, f"{slug}-curves", "Learning curves: validation mAP and training loss "
          f"per epoch (a sweep: its chosen member; dotted: unfinished).{band}",
          lambda p: figures.plot_curves(val, loss, p))  # fmt: skip
    curves = label_curves(groups, figures.LabelCurves)
    if curves:
        chance = chance_lines(runs[0], groups, section.notes)
        _draw(section, out, f"{slug}-labels", "Label state against the truth: per epoch, the "
              "share of the entries a method changed that the clean training labels confirm "
              "(every seed: mean ± std), against chance (the share of truly positive, or "
              "negative, entries among the unobserved ones a method may change), and how many "
              f"it changed.{band}", lambda p: figures.plot_label_state(curves, chance, p))  # fmt: skip
    key = runs[0].key()
    mine = [r for r in rows if r["data"] == key["data"] and r["regime"] == key["regime"]]
    if not mine:
        section.notes.append("No finished run yet: no per-class or precision-recall figure.")
        return
    best = max(mine, key=lambda r: r["test mAP"])
    series = {_label(best): (style_of(best), mean_ap([finished[p] for p in best["paths"]]))}
    for name in BASELINES:  # bce trains on the full labels: another regime, the same data
        for row in rows:
            same = row["data"] == key["data"] and row["method"] == name and row is not best
            label = _label(row) + ("" if row["regime"] == key["regime"] else f" ({row['regime']})")
            if same and label not in series:  # another regime: hatched, hollow
                style = style_of(row)
                if row["regime"] != key["regime"]:
                    style = {**style, "hatch": "////", "markerfacecolor": "none"}
                series[label] = (style, mean_ap([finished[p] for p in row["paths"]]))
    first = finished[best["paths"][0]]
    frequency, labels = shard_set_labels(first, section.notes)
    _draw(section, out, f"{slug}-per-class", f"Per class: test AP of the best method "
          f"({_label(best)}) and of {', '.join(BASELINES)} where present (mean over seeds)"
          + ("; AP against the class's training frequency." if frequency else "."),
          lambda p: figures.plot_per_class(series, frequency, p))  # fmt: skip
    _draw_pr(figures, section, out, slug, first, labels, _label(best))


def figure_groups(runs: list[RunInfo]) -> dict[str, list[RunInfo]]:
    """The section's runs by leaderboard group (method, setting, inputs), seeds together, each
    named by its method, with its setting (then inputs) where two groups share a method."""
    by_key: dict[tuple[str, str, str], list[RunInfo]] = {}
    for run in sorted(runs, key=lambda r: (str(r.key()["method"]), str(r.key()["seed"]))):
        k = run.key()
        by_key.setdefault((str(k["method"]), str(k["setting"]), str(k["inputs"])), []).append(run)
    out = {}
    for (method, setting, inputs), members in by_key.items():
        label = _label(members[0].key())
        if sum(m == method for m, _, _ in by_key) > 1:
            same = sum(m == method and s == setting for m, s, _ in by_key) > 1
            label = f"{method} ({setting}{', ' + inputs if same else ''})"
        out[label] = members
    return out


def group_style(groups: dict[str, list[RunInfo]], label: str) -> dict[str, Any]:
    """A group's style: its method's; a second group of the method (another setting or
    inputs) hollow."""
    key = groups[label][0].key()
    before = [g for g in groups if g != label and groups[g][0].key()["method"] == key["method"]]
    first = not before or list(groups).index(label) < list(groups).index(before[0])
    return style_of(key) if first else {**style_of(key), "markerfacecolor": "none"}


def _draw(section: Section, out: Path, stem: str, caption: str, draw) -> None:
    files = draw(out / stem)
    if files:
        section.figures.append((files, caption))


def style_of(key: dict[str, Any]) -> dict[str, Any]:
    from train.report.style import method_style

    return method_style(str(key["method"]), str(key["setting"]).startswith("linear"))


def learning_curves(groups: dict[str, list[RunInfo]]):
    """(val mAP curves, training loss curves): per group its finished runs together, and each
    unfinished run apart."""
    from train.report.figures import Curve

    val, loss = [], []
    for label, runs in groups.items():
        style = group_style(groups, label)
        for done, mine in ((True, [r for r in runs if r.finished]),
                           (False, [r for r in runs if not r.finished])):  # fmt: skip
            for part in [mine] if done else [[r] for r in mine]:
                if not part:
                    continue
                name = label if done else f"{label} (unfinished)"
                lines = [r.curve_metrics for r in part]
                val.append(Curve(name, style, [_per_epoch(x, "val", "mAP") for x in lines], done))
                loss.append(Curve(name, style, [_per_epoch(x, "train", "loss") for x in lines],
                                  done))  # fmt: skip
    return val, loss


def _per_epoch(lines: list[dict], part: str, name: str) -> dict[int, float]:
    out = {}
    for line in lines:
        value = (line.get(part) or {}).get(name)
        if value is not None:
            out[line["epoch"]] = value
    return out


def label_curves(groups: dict[str, list[RunInfo]], make) -> list:
    """Per group and kind of label change, its precision and count per epoch, every finished
    run (seed) of the group."""
    out = []
    for label, runs in groups.items():
        done = [r for r in runs if r.finished] or runs[:1]
        kinds = sorted({k.split("/")[1] for r in done for x in r.curve_metrics
                        for k in (x.get("train") or {}) if k.startswith("labels/")})  # fmt: skip
        for i, kind in enumerate(kinds):
            style = group_style(groups, label)
            if i:
                style = {**style, "linestyle": "--", "markerfacecolor": "none"}
            lines = [r.curve_metrics for r in done]
            out.append(make(f"{label}: {kind}", style,
                            [_per_epoch(x, "train", f"labels/{kind}/precision") for x in lines],
                            [_per_epoch(x, "train", f"labels/{kind}/changed") for x in lines],
                            [_per_epoch(x, "train", f"labels/{kind}/recall") for x in lines]))  # fmt: skip
    return out


def chance_lines(run: RunInfo, groups: dict[str, list[RunInfo]], notes: list[str]) -> dict:
    """{line label: %}: chance for the label kinds drawn, from the view's training split:
    among its unobserved entries (of known truth), the share truly positive (for kinds that set
    a positive) and truly negative (for kinds that set a negative)."""
    from train.methods import METHODS

    signs = set()
    for runs in groups.values():
        method = str(runs[0].key()["method"])
        if method in METHODS:
            signs |= set(METHODS.get(method).method_class.label_changes.values())
    shards = (run.config.get("run") or {}).get("shards")
    view = (run.config.get("regime") or {}).get("view") or run.key()["regime"]
    try:
        chance = read_chance(str(shards), str(view))
    except (WsmlError, OSError, KeyError, ValueError) as e:
        notes.append(f"Shard set {shards} not readable ({e}): no chance line.")
        return {}
    names = {1: "chance: truly positive", -1: "chance: truly negative"}
    return {f"{names[s]} ({chance[s]:.1f} %)": chance[s] for s in sorted(signs, reverse=True)
            if s in chance}  # fmt: skip


@cache
def read_chance(shards: str, view: str, chunk: int = 65536) -> dict[int, float]:
    """{1: % truly positive, -1: % truly negative} among the training split's entries that
    ``view`` leaves unobserved and whose clean label is known."""
    from shards.shardset import open_shard_set

    ss = open_shard_set(shards)
    observed, full = ss.observed_lists(view, "train"), ss.full_lists("train")
    pos = neg = 0
    for start in range(0, len(full), chunk):
        rows = np.arange(start, min(start + chunk, len(full)))
        unknown = observed.dense(rows) == 0
        truth = full.dense(rows)
        pos += int((unknown & (truth == 1)).sum())
        neg += int((unknown & (truth == -1)).sum())
    total = pos + neg
    return {1: 100.0 * pos / total, -1: 100.0 * neg / total} if total else {}


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
    _draw(section, out, f"{slug}-pr", f"Precision-recall curves of {label} ({run.name}) at "
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
