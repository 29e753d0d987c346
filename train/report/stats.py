"""The report's statistics from the runs' stored bootstrap draws (train/bootstrap.py): a
group's 95 % interval (over test images; for several seeds, of their mean), paired comparisons
of a table's best groups on the same test images, and the variance of test mAP over training
seeds set apart from its variance over draws of the single positive labels."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from train.bootstrap import Interval, compare, interval, read_draws, same_draws
from train.report.runs import RunInfo

BEST = 5  # groups of a table compared pairwise


def _entry(run: RunInfo) -> dict[str, Any] | None:
    return (run.summary or {}).get("test_ci")


def group_draws(members: list[RunInfo]) -> np.ndarray | None:
    """Per bootstrap draw, the mean test mAP of the group's runs (None unless every run kept
    its draws, all over the same resampled images)."""
    entries = [_entry(m) for m in members]
    if not all(same_draws(entries[0], e) for e in entries):
        return None
    draws = [read_draws(m.path, e) for m, e in zip(members, entries, strict=True)]
    if any(d is None for d in draws):
        return None
    return np.mean(draws, axis=0)


def group_interval(members: list[RunInfo]) -> Interval | None:
    """The 95 % bootstrap interval of a group's (mean) test mAP; a single run's from its
    summary when its draws are gone."""
    values = group_draws(members)
    if values is not None:
        return interval(values, _entry(members[0]).get("level", 95.0))
    entry = _entry(members[0]) if len(members) == 1 else None
    return Interval(entry["low"], entry["high"]) if entry else None


def paired_matrix(rows: list[dict[str, Any]], runs: dict[str, RunInfo]) -> dict | None:
    """The best ``BEST`` rows of a table (those with draws) compared pairwise on the same test
    images: cell [i][j] = {diff, low, high, wins} of row i against row j."""
    picked, labels = [], []
    for row in rows:
        members = [runs[p] for p in row["paths"]]
        values = group_draws(members)
        first = _entry(members[0])
        if values is None or (picked and not same_draws(picked[0][1], first)):
            continue
        picked.append((values, first, row["test mAP"]))
        labels.append(row_label(row, rows[0]))
        if len(picked) == BEST:
            break
    if len(picked) < 2:
        return None
    cells = [[None if i == j else compare(a, b, ma - mb) for j, (b, _, mb) in enumerate(picked)]
             for i, (a, _, ma) in enumerate(picked)]  # fmt: skip
    return {"labels": labels, "cells": cells}


def row_label(row: dict[str, Any], first: dict[str, Any]) -> str:
    """A row's short name: its method, its setting unless linear, its regime where it differs
    from the table's first row's."""
    label = str(row["method"])
    if not str(row["setting"]).startswith("linear"):
        label += f" ({row['setting']})"
    if row["regime"] != first["regime"]:
        label += f", {row['regime']}"
    return label


@dataclass
class SeedDrawTable:
    """Test mAP of one configuration over training seeds (rows) and label draws (columns)."""

    title: str
    seeds: list[Any]
    draws: list[str]
    values: list[list[float | None]]
    stds: dict[str, float | None] = field(default_factory=dict)


def seed_draw_tables(runs: list[RunInfo]) -> list[SeedDrawTable]:
    """For every configuration trained on at least two seeds and two draws of its observed
    labels (views that differ only in their seed, e.g. ``train --seeds 0,1 --view-seeds 0,1``):
    the grid and the standard deviations it separates."""
    families: dict[str, list[RunInfo]] = {}
    for run in runs:
        family = draw_family(run)
        if family is not None:
            families.setdefault(family, []).append(run)
    out = []
    for members in families.values():
        seeds = sorted({m.key()["seed"] for m in members}, key=str)
        draws = sorted({_view(m)["name"] for m in members}, key=lambda v: (len(v), v))
        if len(seeds) < 2 or len(draws) < 2:
            continue
        grid = {(m.key()["seed"], _view(m)["name"]): m.summary["test"]["mAP"] for m in members}
        values = [[grid.get((s, d)) for d in draws] for s in seeds]
        key = members[0].key()
        title = f"{key['method']} ({key['setting']}, {key['inputs']}) on {key['table']}"
        table = SeedDrawTable(title, seeds, draws, values)
        table.stds = separate_variance(values, [_test_std(m) for m in members])
        out.append(table)
    return out


def _view(run: RunInfo) -> dict[str, Any]:
    return run.provenance.get("view") or {}


def draw_family(run: RunInfo) -> str | None:
    """What runs of one configuration on draws of one regime share: the data, the run's
    settings but its seed and view, the method config, the view's regime parameters but their
    seed; None for a run without a recorded drawn view (full labels, older runs)."""
    view = _view(run)
    params = dict(view.get("params") or {})
    if not view.get("regime") or "seed" not in params:
        return None
    params.pop("seed")
    settings = {k: v for k, v in (run.config.get("run") or {}).items()
                if k not in ("out", "shards", "seed", "regime")}  # fmt: skip
    parts = [run.data_id, settings, run.config.get("method"), view["regime"], params]
    return json.dumps(parts, sort_keys=True, default=str)


def _test_std(run: RunInfo) -> float | None:
    values = read_draws(run.path, _entry(run))
    return None if values is None else float(np.std(values, ddof=1))


def separate_variance(values: list[list[float | None]], test_stds: list[float | None]) -> dict:
    """Standard deviations of test mAP: over training seeds (within each draw, pooled), over
    label draws (within each seed, pooled), over every run, and over test images (the runs'
    bootstrap, averaged)."""
    cols = [[r[j] for r in values if r[j] is not None] for j in range(len(values[0]))]
    rows = [[v for v in r if v is not None] for r in values]
    every = [v for r in rows for v in r]
    known = [s for s in test_stds if s is not None]
    return {
        "training seeds": _pooled(cols),
        "label draws": _pooled(rows),
        "all runs": statistics.stdev(every) if len(every) > 1 else None,
        "test images": float(np.sqrt(np.mean(np.square(known)))) if known else None,
    }


def _pooled(groups: list[list[float]]) -> float | None:
    """The pooled sample standard deviation of the groups with two values or more."""
    parts = [(len(g) - 1, statistics.variance(g)) for g in groups if len(g) > 1]
    dof = sum(d for d, _ in parts)
    return float(np.sqrt(sum(d * v for d, v in parts) / dof)) if dof else None
