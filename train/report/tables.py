"""The leaderboard's tables: finished runs grouped over seeds (one row per dataset, regime,
setting, inputs and method: test mAP mean, std and n, val mAP, CF1, OF1), the papers' numbers
beside them where dataset family, regime and setting match, and unfinished runs apart."""

from __future__ import annotations

import csv
import statistics
from functools import cache
from pathlib import Path
from typing import Any

from train.report.runs import RunInfo

GROUP_BY = ("dataset", "regime", "setting", "inputs", "method")
COLUMNS = (
    "method", "regime", "setting", "inputs", "lr", "batch", "n", "val mAP", "test mAP", "± std",
    "CF1", "OF1",
)  # fmt: skip
PAPER_COLUMNS = ("paper", "Δ")
UNFINISHED_COLUMNS = ("run", "method", "regime", "setting", "epoch", "val mAP", "test mAP")
GROUPS = ("G1", "G2", "G3", "G4", "G5")  # OpenImages' frequency groups (summary "groups")
PAPERS = Path(__file__).with_name("papers.csv")


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def std(values: list[float]) -> float | None:
    """Sample standard deviation; None for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else None


def group_runs(runs: list[RunInfo], paper_numbers: bool = True) -> list[dict[str, Any]]:
    """One row per group of finished runs, ranked by mean test mAP within each dataset."""
    groups: dict[tuple, list[RunInfo]] = {}
    for run in runs:
        key = run.key()
        groups.setdefault(tuple(str(key[k]) for k in GROUP_BY), []).append(run)
    rows = [_group_row(members, paper_numbers) for members in groups.values()]
    return sorted(rows, key=lambda r: (str(r["dataset"]), -r["test mAP"]))


def _group_row(members: list[RunInfo], paper_numbers: bool) -> dict[str, Any]:
    members = sorted(members, key=lambda r: (str(r.key()["seed"]), r.name))
    keys = [m.key() for m in members]
    summaries = [m.summary for m in members]
    tests = [s["test"]["mAP"] for s in summaries]
    row = {k: keys[0][k] for k in GROUP_BY}
    row.update(
        runs=[m.name for m in members],
        paths=[str(m.path) for m in members],
        seeds=[k["seed"] for k in keys],
        lr=_same([k["lr"] for k in keys]),
        batch=_same([k["batch"] for k in keys]),
        n=len(members),
        classes=len(members[0].config.get("classes") or ()),
        **{"val mAP": mean([s["val"]["mAP"] for s in summaries])},
        **{"test mAP": mean(tests), "± std": std(tests)},
        CF1=_mean_of([s["test"].get("CF1") for s in summaries]),
        OF1=_mean_of([s["test"].get("OF1") for s in summaries]),
    )
    # the test split's frequency groups (train/entry_metrics.py), as summary.json holds them
    groups = [s["test"].get("groups") or s.get("groups") or {} for s in summaries]
    for g in GROUPS:
        row[g] = _mean_of([gs.get(g) for gs in groups])
    if paper_numbers:
        paper = get_paper_number(row)
        row["paper"] = paper["mAP"] if paper else None
        row["paper source"] = paper["source"] if paper else None
        row["Δ"] = row["test mAP"] - paper["mAP"] if paper else None
    return row


def _same(values: list) -> Any:
    """The value all seeds share, else "varies" (a sweep may pick another lr per seed)."""
    return values[0] if all(v == values[0] for v in values) else "varies"


def _mean_of(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return mean(known) if known and len(known) == len(values) else None


@cache
def read_papers() -> tuple[dict[str, Any], ...]:
    """The papers' numbers (train/report/papers.csv): method, family, regime, setting, mAP,
    source."""
    lines = [line for line in PAPERS.read_text().splitlines() if not line.startswith("#")]
    rows = csv.DictReader(lines)
    return tuple({**r, "mAP": float(r["mAP"]), "classes": int(r["classes"])} for r in rows)


def get_paper_number(row: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's number for a row, where the dataset family (and its number of classes),
    regime and setting match."""
    from train.methods import dataset_family

    family = dataset_family(str(row["dataset"]))
    for paper in read_papers():
        theirs = [paper[k] for k in ("method", "family", "classes", "regime", "setting")]
        if theirs == [row["method"], family, row["classes"], row["regime"], row["setting"]]:
            return paper
    return None


def unfinished_rows(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """Runs still going (or killed): their epoch and the best scores so far, if any."""
    rows = []
    for run in sorted(runs, key=lambda r: str(r.path)):
        key, s = run.key(), run.summary or {}
        rows.append(
            {
                "run": str(run.path),
                **{k: key[k] for k in ("dataset", "method", "regime", "setting")},
                "epoch": run.epoch,
                "val mAP": (s.get("val") or {}).get("mAP"),
                "test mAP": (s.get("test") or {}).get("mAP"),
            }
        )
    return rows


def cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.0e}" if 0 < abs(v) < 0.01 else f"{v:.2f}"
    return str(v)


def table_columns(rows: list[dict[str, Any]], paper_numbers: bool) -> list[str]:
    """The columns of a dataset's table: G1–G5 only when some row has them."""
    columns = list(COLUMNS)
    columns += [g for g in GROUPS if any(r.get(g) is not None for r in rows)]
    if paper_numbers:
        columns += PAPER_COLUMNS
    return columns


def format_markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def by_dataset(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["dataset"]), []).append(row)
    return out


def leaderboard_markdown(
    rows: list[dict[str, Any]], unfinished: list[dict[str, Any]], paper_numbers: bool
) -> str:
    """One table per dataset, then the unfinished runs."""
    parts = []
    for dataset, mine in by_dataset(rows).items():
        parts.append(
            f"### {dataset}\n\nTest mAP (%), mean over seeds (n); the epoch is chosen on "
            f"validation mAP.\n\n{format_markdown(mine, table_columns(mine, paper_numbers))}"
        )
    if unfinished:
        parts.append(
            "### Unfinished runs (not ranked)\n\nBest scores so far, at the epoch reached.\n\n"
            + format_markdown(unfinished, list(UNFINISHED_COLUMNS))
        )
    return "\n".join(parts)
