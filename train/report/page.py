"""The report's two pages from one :class:`~train.report.write.Report`: ``index.html`` (static,
self-contained: inline style, PNGs beside it, no script) and ``report.md`` (the same tables)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from shards.fileio import write_bytes_atomic
from train.report.tables import (
    UNFINISHED_COLUMNS,
    by_dataset,
    cell,
    format_markdown,
    table_columns,
)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1180px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
tr.unfinished td { color: #8a6d00; background: #fff8e0; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; } .note { color: #8a4b00; }
"""
TEXT = {"method", "regime", "setting", "inputs", "run", "dataset"}


def html_table(rows: list[dict], columns: list[str], row_class: str = "leaderboard") -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="{"text" if c in TEXT else "num"}">{escape(cell(r.get(c)))}</td>'
            for c in columns
        )
        body.append(f'<tr class="{row_class}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_pages(report, out: Path) -> Path:
    """Write index.html and report.md into ``out``; returns index.html's path."""
    write_bytes_atomic(out / "report.md", markdown(report).encode())
    write_bytes_atomic(out / "index.html", html(report).encode())
    return out / "index.html"


def _intro(report) -> str:
    return (
        "Test mAP (%) of the epoch chosen on validation mAP, mean over seeds (n, ± sample "
        "standard deviation); val mAP is the mean of the values that chose the epochs."
        + (
            " Paper: the published number where dataset, regime and setting match; Δ = ours - "
            "paper."
            if report.paper_numbers
            else ""
        )  # fmt: skip
    )


def html(report) -> str:
    parts = [f"<h1>wsml report</h1><p>{escape(_intro(report))}</p>"]
    for dataset, rows in by_dataset(report.rows).items():
        columns = table_columns(rows, report.paper_numbers)
        parts.append(f"<h2>Leaderboard: {escape(dataset)}</h2>{html_table(rows, columns)}")
    if report.unfinished:
        parts.append("<h2>Unfinished runs (not ranked)</h2><p>Best scores so far, at the epoch "
                     "reached.</p>" + html_table(report.unfinished, list(UNFINISHED_COLUMNS),
                                                 "unfinished"))  # fmt: skip
    if report.sources:
        items = "".join(f"<li>{escape(s)}</li>" for s in report.sources)
        parts.append(f"<h3>Papers' numbers from</h3><ul>{items}</ul>")
    for section in report.sections:
        parts.append(f"<h2>{escape(section.title)}</h2>")
        parts += [f'<p class="note">{escape(n)}</p>' for n in section.notes]
        for name, caption in section.figures:
            parts.append(
                f'<figure><img src="{escape(name)}" alt="{escape(caption)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
    if report.problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
        parts.append(f'<h2>Problems</h2><ul class="note">{items}</ul>')
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>wsml report</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def markdown(report) -> str:
    parts = ["# wsml report\n", _intro(report) + "\n"]
    for dataset, rows in by_dataset(report.rows).items():
        columns = table_columns(rows, report.paper_numbers)
        parts.append(f"## Leaderboard: {dataset}\n\n{format_markdown(rows, columns)}")
    if report.unfinished:
        parts.append("## Unfinished runs (not ranked)\n\n"
                     + format_markdown(report.unfinished, list(UNFINISHED_COLUMNS)))  # fmt: skip
    if report.sources:
        parts.append("Papers' numbers from:\n\n" + "".join(f"- {s}\n" for s in report.sources))
    for section in report.sections:
        parts.append(f"## {section.title}\n")
        parts += [f"*{n}*\n" for n in section.notes]
        parts += [f"![{caption}]({name})\n\n{caption}\n" for name, caption in section.figures]
    if report.problems:
        parts.append("## Problems\n\n" + "".join(f"- {p}\n" for p in report.problems))
    return "\n".join(parts)
