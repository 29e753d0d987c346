"""A leaderboard of finished runs: one row per run folder under a directory, ranked by the test
mAP of the epoch selected on validation, with the setting each row used."""

from __future__ import annotations

import json
from pathlib import Path

from shards.errors import WsmlError
from shards.fileio import dumps_json, write_bytes_atomic

COLUMNS = (
    "method", "regime", "setting", "inputs", "lr", "batch", "epoch",
    "val mAP", "test mAP", "CF1", "OF1",
)  # fmt: skip


GROUP_COLUMNS = ("G1", "G2", "G3", "G4", "G5")  # frequency groups, rarest first, when reported


def collect_runs(folder: str | Path) -> list[dict]:
    """Rows for every run folder directly under ``folder`` that has a summary.json."""
    root = Path(folder)
    if not root.is_dir():
        raise WsmlError(f"{root} is not a folder of runs")
    rows = []
    for summary in sorted(root.glob("*/summary.json")):
        s = json.loads(summary.read_text())
        config = json.loads((summary.parent / "config.json").read_text())
        run, hyper = config.get("run", {}), config.get("method", {})
        linear = str(s.get("setting", "")).startswith("linear")
        inputs = run.get("features") if linear else run.get("backbone")
        if not linear and run.get("weights") == "none":
            inputs = f"{inputs} (random init)"
        rows.append(
            {
                "run": summary.parent.name,
                "method": s.get("method"),
                "regime": s.get("regime"),
                "setting": s.get("setting"),
                "inputs": inputs,
                "dataset": s.get("dataset"),
                "lr": s.get("lr", hyper.get("lr")),  # a sweep's chosen member, else the run's
                "batch": s.get("batch_size", hyper.get("batch_size")),
                "epoch": s.get("best_epoch"),
                "val mAP": s["val"]["mAP"],
                "test mAP": s["test"]["mAP"],
                "CF1": s["test"].get("CF1"),
                "OF1": s["test"].get("OF1"),
                **(s["test"].get("groups") or {}),  # test mAP of G1..G5 (OpenImages)
            }
        )
    if not rows:
        raise WsmlError(f"{root} holds no finished run (no */summary.json)")
    return sorted(rows, key=lambda r: -r["test mAP"])


def format_table(rows: list[dict]) -> str:
    """A Markdown table (it reads as plain text too)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.0e}" if 0 < abs(v) < 0.01 else f"{v:.2f}"
        return str(v)

    columns = COLUMNS + tuple(g for g in GROUP_COLUMNS if any(g in r for r in rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_leaderboard(folder: str | Path) -> tuple[list[dict], str]:
    """Collect the runs, write ``leaderboard.md`` and ``leaderboard.json`` beside them."""
    rows = collect_runs(folder)
    datasets = sorted({str(r["dataset"]) for r in rows})
    title = f"Test mAP (%) on {', '.join(datasets)}; the epoch is chosen on validation mAP.\n\n"
    table = title + format_table(rows)
    root = Path(folder)
    write_bytes_atomic(root / "leaderboard.md", table.encode())
    write_bytes_atomic(root / "leaderboard.json", dumps_json(rows).encode())
    return rows, table
