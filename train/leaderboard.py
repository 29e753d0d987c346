"""A leaderboard of runs: finished runs grouped over seeds, one row per dataset, regime, setting,
inputs and method, ranked by mean test mAP of the epochs selected on validation (one table per
dataset); unfinished runs listed apart with their epoch, never ranked."""

from __future__ import annotations

from pathlib import Path

from shards.base.errors import WsmlError, os_error_message
from shards.base.fileio import dumps_json, write_bytes_atomic
from train.report.runs import read_runs
from train.report.tables import group_runs, leaderboard_markdown, unfinished_rows


def collect_runs(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """(grouped rows of the finished runs, rows of the unfinished ones) under ``folder``."""
    runs = read_runs([folder])
    if not runs.finished:
        raise WsmlError(f"{folder} holds no finished run (no */summary.json of a finished run)")
    return group_runs(runs.finished, paper_numbers=False), unfinished_rows(runs.unfinished)


def write_leaderboard(
    folder: str | Path, unsaved: list[str] | None = None
) -> tuple[list[dict], str]:
    """Collect the runs, write ``leaderboard.md`` and ``leaderboard.json`` beside them. Given a
    list ``unsaved``, a folder that cannot be written (read-only storage, a colleague's runs, a
    full disk) adds a line there instead of failing: the table is still the result."""
    rows, unfinished = collect_runs(folder)
    table = leaderboard_markdown(rows, unfinished, paper_numbers=False)
    root = Path(folder)
    data = {"rows": rows, "unfinished": unfinished}
    try:
        write_bytes_atomic(root / "leaderboard.md", table.encode())
        write_bytes_atomic(root / "leaderboard.json", dumps_json(data).encode())
    except OSError as e:
        message = os_error_message(e)
        if unsaved is None or message is None:
            raise
        unsaved.append(f"the leaderboard was not saved: {message}")
    return rows, table
