"""The leaderboard's rows: finished runs grouped over seeds by the data's identity (the shard
set's manifest hash, so two shard sets never merge and a copy of one in another folder still
groups), regime, setting, inputs and method; a folder that repeats another's run (same data,
config and seed: a copy) counted once and named. Plain Python and numpy: the leaderboard and
the report share it; report.md and leaderboard.md are formatted here."""

from __future__ import annotations

import re
import statistics
from html import escape
from typing import Any

from train.report.papers import DIFFERENT, describe, get_paper_number
from train.report.runs import RunInfo

GROUP_BY = ("data", "regime", "setting", "inputs", "method")
COLUMNS = (
    "method", "regime", "setting", "inputs", "lr used", "batch", "n", "val mAP", "test mAP",
    "± std", "95% CI", "CF1", "OF1",
)  # fmt: skip
PAPER_COLUMNS = ("paper", "Δ")
UNFINISHED_COLUMNS = ("run", "method", "regime", "setting", "epoch", "val mAP", "test mAP")
GROUPS = ("G1", "G2", "G3", "G4", "G5")  # OpenImages' frequency groups (summary "groups")
TEXT = {"method", "regime", "setting", "inputs", "run", "dataset", "lr used", "protocol"}


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def std(values: list[float]) -> float | None:
    """Sample standard deviation; None for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else None


def group_runs(runs: list[RunInfo], paper_numbers: bool = True) -> list[dict[str, Any]]:
    """One row per group of finished runs, ranked by mean test mAP within each table (a shard
    set); a row's ``duplicates`` names the folders counted once (copies of another run)."""
    distinct, copies = drop_duplicates(runs)
    groups: dict[tuple, list[RunInfo]] = {}
    for run in distinct:
        key = run.key()
        groups.setdefault(tuple(str(key[k]) for k in GROUP_BY), []).append(run)
    rows = [_group_row(members, paper_numbers) for members in groups.values()]
    for row in rows:
        row["duplicates"] = [f"{c} (same as {copies[c]})" for p in row["paths"]
                             for c in sorted(copies) if copies[c] == p]  # fmt: skip
    return sorted(rows, key=lambda r: (str(r["table"]), str(r["data"]), -r["test mAP"]))


def drop_duplicates(runs: list[RunInfo]) -> tuple[list[RunInfo], dict[str, str]]:
    """(the runs with each (data, config, seed) once, {copy's folder: the kept folder}); the
    first folder in path order is kept."""
    seen: dict[str, RunInfo] = {}
    copies: dict[str, str] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        ident = run.identity()
        if ident in seen:
            copies[str(run.path)] = str(seen[ident].path)
        else:
            seen[ident] = run
    return list(seen.values()), copies


def _group_row(members: list[RunInfo], paper_numbers: bool) -> dict[str, Any]:
    from train.report.stats import group_interval

    members = sorted(members, key=lambda r: (str(r.key()["seed"]), r.name))
    keys = [m.key() for m in members]
    summaries = [m.summary for m in members]
    tests = [s["test"]["mAP"] for s in summaries]
    row = {k: keys[0][k] for k in (*GROUP_BY, "table", "dataset", "kind")}
    ci = group_interval(members)
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
        ci=None if ci is None else [ci.low, ci.high],
        CF1=_mean_of([s["test"].get("CF1") for s in summaries]),
        OF1=_mean_of([s["test"].get("OF1") for s in summaries]),
        protocol_fields=members[0].provenance.get("protocol"),
    )
    row["95% CI"] = None if ci is None else f"{ci.low:.2f}–{ci.high:.2f}"
    row["protocol"] = describe(row["protocol_fields"])
    used = [_lrs_used(m, k["lr"]) for m, k in zip(members, keys, strict=True)]
    row["lr used"] = _same([u[0] for u in used])
    text = str(row["lr used"])
    if isinstance(row["lr"], float) and used[0][0] and cell(row["lr"]) not in text:
        row["lr used"] += f" (base {cell(row['lr'])})"  # a method that scales its lr
    if not used[0][1]:  # a method that trains nothing has no lr or batch
        row["batch"] = None
    # the test split's frequency groups (train/entry_metrics.py), as summary.json holds them
    groups = [s["test"].get("groups") or s.get("groups") or {} for s in summaries]
    for g in GROUPS:
        row[g] = _mean_of([gs.get(g) for gs in groups])
    if paper_numbers:
        add_paper_number(row)
    return row


def add_paper_number(row: dict[str, Any]) -> None:
    """``paper``, ``paper source``, ``paper note`` and ``Δ`` of a row."""
    paper = get_paper_number(row)
    row["paper"] = row["paper source"] = row["paper note"] = row["Δ"] = None
    if paper is None:
        return
    if paper["mAP"] is None:
        row["paper"], row["paper note"] = DIFFERENT, paper["note"]
        return
    row["paper"], row["paper source"] = paper["mAP"], paper["source"]
    row["Δ"] = row["test mAP"] - paper["mAP"]
    if paper["also"]:
        row["paper note"] = "Also under this protocol: " + "; ".join(paper["also"])


def _lrs_used(run: RunInfo, base: Any) -> tuple[str | None, bool]:
    """(the lrs the run's optimiser groups used, e.g. ``1e-03`` or ``head 0.01, role-estimator
    0.10``; under a schedule, the base lr and how the groups scale it; whether the method trains
    at all)."""
    epochs = run.lrs_used()
    if epochs == []:
        return None, False
    if not epochs:
        return None if base is None else cell(base), True
    groups: dict[str, float] = {}
    for name, value in epochs[0].items():  # weight decay or not: one group's lr
        groups.setdefault(re.sub(r"-?(no-)?decay$", "", name) or "model", value)
    if any(e != epochs[0] for e in epochs):  # a schedule: the groups' ratios stay
        low = min(groups.values()) or 1.0
        scaled = [f"{n} x{v / low:g}" for n, v in groups.items() if abs(v / low - 1) > 1e-6]
        text = f"{cell(base)} scheduled" if isinstance(base, float) else "scheduled"
        return text + (f" ({', '.join(scaled)})" if scaled else ""), True
    if len(set(groups.values())) == 1:
        return cell(next(iter(groups.values()))), True
    return ", ".join(f"{name} {cell(v)}" for name, v in groups.items()), True


def _same(values: list) -> Any:
    """The value all seeds share, else "varies" (a sweep may pick another lr per seed)."""
    return values[0] if all(v == values[0] for v in values) else "varies"


def _mean_of(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return mean(known) if known and len(known) == len(values) else None


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


def md_text(text: Any) -> str:
    """Text in report.md escaped as the HTML page escapes it (a run named ``<img …>`` stays
    text), and a table cell's ``|`` kept in its cell."""
    return escape(str(text), quote=False).replace("|", "\\|")


def table_columns(rows: list[dict[str, Any]], paper_numbers: bool) -> list[str]:
    """The columns of a table: G1–G5 only when some row has them; the protocol last."""
    columns = list(COLUMNS)
    columns += [g for g in GROUPS if any(r.get(g) is not None for r in rows)]
    if paper_numbers:
        columns += PAPER_COLUMNS
    return [*columns, "protocol"]


def format_markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_text(cell(r.get(c))) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def by_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{table title: {"main": rows, "full": full-label rows (the reference)}}, one table per
    shard set (two shard sets of one name get their identity's start appended)."""
    titles: dict[str, str] = {}
    for row in rows:
        titles.setdefault(row["data"], row["table"])
    for title in set(titles.values()):
        same = [d for d, t in titles.items() if t == title]
        width = 8
        while len(same) > 1 and len({d[:width] for d in same}) < len(same):
            width += 4
        for d in same if len(same) > 1 else ():
            titles[d] = f"{title} [{d[:width]}]"
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        title = titles[row["data"]]
        part = "full" if row["kind"] == "full" else "main"
        out.setdefault(title, {"main": [], "full": []})[part].append(row)
    return out


def notes_of(rows: list[dict[str, Any]]) -> list[str]:
    """What a table says under it: copies counted once, and papers' protocols."""
    out = []
    for row in rows:
        out += [f"Counted once: {d}." for d in row.get("duplicates") or ()]
        if row.get("paper note"):
            out.append(f"Paper, {row['method']} ({row['setting']}): {row['paper note']}")
    return out


def leaderboard_markdown(
    rows: list[dict[str, Any]], unfinished: list[dict[str, Any]], paper_numbers: bool
) -> str:
    """One table per shard set (full labels apart, as the reference), then the unfinished."""
    parts = []
    for title, table in by_table(rows).items():
        text = (f"### {md_text(title)}\n\nTest mAP (%), mean over seeds (n); the epoch is chosen "
                "on validation mAP; 95% CI: bootstrap over test images.\n\n")  # fmt: skip
        for part, name in (("main", ""), ("full", "Full labels (the reference)\n\n")):
            if table[part]:
                columns = table_columns(table[part], paper_numbers)
                text += name + format_markdown(table[part], columns) + "\n"
        text += "".join(f"- {md_text(n)}\n" for n in notes_of(table["main"] + table["full"]))
        parts.append(text)
    if unfinished:
        parts.append(
            "### Unfinished runs (not ranked)\n\nBest scores so far, at the epoch reached.\n\n"
            + format_markdown(unfinished, list(UNFINISHED_COLUMNS))
        )
    return "\n".join(parts)
