"""A leaderboard of runs: finished runs grouped over seeds, one row per dataset, regime, setting,
inputs and method, ranked by mean test mAP of the epochs selected on validation (one table per
dataset); unfinished runs listed apart with their epoch, never ranked."""

from __future__ import annotations

from pathlib import Path

from shards.errors import WsmlError
from shards.fileio import dumps_json, write_bytes_atomic
from train.report.runs import read_runs
from train.report.tables import group_runs, leaderboard_markdown, unfinished_rows


def collect_runs(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """(grouped rows of the finished runs, rows of the unfinished ones) under ``folder``."""
    runs = read_runs([folder])
    if not runs.finished:
        raise WsmlError(f"{folder} holds no finished run (no */summary.json of a finished run)")
    return group_runs(runs.finished, paper_numbers=False), unfinished_rows(runs.unfinished)


def write_leaderboard(folder: str | Path) -> tuple[list[dict], str]:
    """Collect the runs, write ``leaderboard.md`` and ``leaderboard.json`` beside them."""
    rows, unfinished = collect_runs(folder)
    table = leaderboard_markdown(rows, unfinished, paper_numbers=False)
    root = Path(folder)
    write_bytes_atomic(root / "leaderboard.md", table.encode())
    data = {"rows": rows, "unfinished": unfinished}
    write_bytes_atomic(root / "leaderboard.json", dumps_json(data).encode())
    return rows, table
