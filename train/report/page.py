"""The report's two pages from one :class:`~train.report.write.Report`: ``index.html`` (static,
self-contained: inline style, figures beside it, no script) and ``report.md`` (the same tables,
its text escaped as the page's). Both end with the provenance of the report and of its runs."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from shards.base.fileio import write_bytes_atomic
from train.report.stats import SeedDrawTable
from train.report.tables import (
    TEXT,
    UNFINISHED_COLUMNS,
    by_table,
    cell,
    format_markdown,
    md_text,
    notes_of,
    table_columns,
)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; } td[title] { cursor: help; }
td { white-space: nowrap; } td.wrap { white-space: normal; }
td.wrap:last-child { font-size: 11px; color: #555; min-width: 14em; }
tr.unfinished td { color: #8a6d00; background: #fff8e0; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .small { font-size: 13px; color: #555; } .note { color: #8a4b00; }
footer { margin-top: 3em; border-top: 1px solid #ccc; font-size: 13px; color: #444; }
footer dt { font-weight: 600; } footer dd { margin: 0 0 0.4em 1.5em; font-family: monospace; }
"""
WRAP = {"inputs", "lr used", "protocol", "run"}  # long texts wrap; names and numbers do not
INTRO = (
    "Test mAP (%) of the epoch chosen on validation mAP, mean over seeds (n, ± sample standard "
    "deviation); val mAP is the mean of the values that chose the epochs. 95% CI: bootstrap "
    "over test images (1,000 draws; for several seeds, of their mean). lr used: the lr of each "
    "optimiser group (a method that scales its base lr, e.g. LL's head x 10, shows it; under a "
    "schedule: the base lr and how the groups scale it). Full-label rows are apart, as the "
    "reference."
)
PAPERS = (
    " Paper: the published number where dataset, regime, setting and protocol (backbone, "
    'resolution, validation split) match, Δ = ours - paper; "different protocol" where the '
    "paper's differs (its protocol on hover and below the table)."
)


def write_pages(report, out: Path) -> Path:
    """Write index.html and report.md into ``out``; returns index.html's path."""
    write_bytes_atomic(out / "report.md", markdown(report).encode())
    write_bytes_atomic(out / "index.html", html(report, out).encode())
    return out / "index.html"


def _intro(report) -> str:
    return INTRO + (PAPERS if report.paper_numbers else "")


def html_table(rows: list[dict], columns: list[str], row_class: str = "leaderboard") -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            kind = ("text wrap" if c in WRAP else "text") if c in TEXT else "num"
            hover = (
                f' title="{escape(r["paper note"])}"'
                if c == "paper" and r.get("paper note")
                else ""
            )
            cells.append(f'<td class="{kind}"{hover}>{escape(cell(r.get(c)))}</td>')
        body.append(f'<tr class="{row_class}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html(report, out: Path | None = None) -> str:
    parts = [f"<h1>wsml report</h1><p>{escape(_intro(report))}</p>"]
    for title, table in by_table(report.rows).items():
        parts.append(f"<h2>Leaderboard: {escape(title)}</h2>")
        for part, heading in (("main", ""), ("full", "<h3>Full labels (the reference)</h3>")):
            if table[part]:
                columns = table_columns(table[part], report.paper_numbers)
                parts.append(heading + html_table(table[part], columns))
        notes = notes_of(table["main"] + table["full"])
        if notes:
            parts.append('<ul class="small">' + "".join(f"<li>{escape(n)}</li>" for n in notes)
                         + "</ul>")  # fmt: skip
        parts.append(html_paired(report.paired.get(title)))
    if report.unfinished:
        parts.append("<h2>Unfinished runs (not ranked)</h2><p>Best scores so far, at the epoch "
                     "reached.</p>" + html_table(report.unfinished, list(UNFINISHED_COLUMNS),
                                                 "unfinished"))  # fmt: skip
    if report.sources:
        items = "".join(f"<li>{escape(s)}</li>" for s in report.sources)
        parts.append(f"<h3>Papers' numbers from</h3><ul>{items}</ul>")
    parts += [html_seed_draws(t) for t in report.seed_draws]
    for section in report.sections:
        parts.append(f"<h2>{escape(section.title)}</h2>")
        parts += [f'<p class="note">{escape(n)}</p>' for n in section.notes]
        for files, caption in section.figures:
            png, *others = files
            links = " · ".join(f'<a href="{escape(f)}">{escape(f.rsplit(".", 1)[1].upper())}</a>'
                               for f in others)  # fmt: skip
            parts.append(
                f'<figure><img src="{escape(png)}"{_width(out, png)} alt="{escape(caption)}">'
                f"<figcaption>{escape(caption)} {links}</figcaption></figure>"
            )
    if report.problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
        parts.append(f'<h2>Problems</h2><ul class="note">{items}</ul>')
    parts.append(html_provenance(report.provenance))
    body = "\n".join(p for p in parts if p)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>wsml report</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


SCREEN_DPI = 140  # a figure's inches shown at this many pixels each (a 7 in figure: 980 px)


def _width(out: Path | None, png: str) -> str:
    """The figure's display width from its PNG's size (300 dpi), so a one-column figure shows
    at half the width of a two-column one."""
    from train.report.style import DPI

    try:
        head = (out / png).read_bytes()[:24] if out is not None else b""
    except OSError:
        return ""
    if len(head) < 24 or not head.startswith(b"\x89PNG"):
        return ""
    return f' width="{int.from_bytes(head[16:20], "big") * SCREEN_DPI // DPI}"'


PAIRED = ("Paired comparisons on the same test images (bootstrap, 1,000 draws): row minus "
          "column, mean difference of test mAP [95% interval], and the share of draws in which "
          "the row beats the column.")  # fmt: skip


def paired_cells(matrix: dict) -> list[list[str]]:
    out = []
    for label, row in zip(matrix["labels"], matrix["cells"], strict=True):
        texts = ["–" if c is None else f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}], "
                 f"{c['wins']:.0f}%" for c in row]  # fmt: skip
        out.append([label, *texts])
    return out


def html_paired(matrix: dict | None) -> str:
    if not matrix:
        return ""
    head = "".join(f"<th>{escape(lab)}</th>" for lab in ["", *matrix["labels"]])
    body = "".join("<tr>" + "".join(f'<td class="{"text" if i == 0 else "num"}">{escape(t)}</td>'
                                    for i, t in enumerate(r)) + "</tr>"
                   for r in paired_cells(matrix))  # fmt: skip
    return (f"<h3>Paired comparisons</h3><p class=\"small\">{escape(PAIRED)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")  # fmt: skip


SEEDS = ("Test mAP (%) per training seed (rows) and draw of the observed labels (columns: the "
         "view, drawn by the same generator with another seed). Standard deviations: over "
         "training seeds within a draw and over draws within a seed (each pooled), over every "
         "run, and over test images (the runs' bootstrap).")  # fmt: skip


def seed_draw_rows(t: SeedDrawTable) -> tuple[list[str], list[list[str]], list[list[str]]]:
    head = ["seed", *t.draws]
    grid = [[str(s), *(cell(v) for v in row)] for s, row in zip(t.seeds, t.values, strict=True)]
    stds = [[k, cell(v)] for k, v in t.stds.items()]
    return head, grid, stds


def html_seed_draws(t: SeedDrawTable) -> str:
    head, grid, stds = seed_draw_rows(t)

    def table(h, rows):
        th = "".join(f"<th>{escape(x)}</th>" for x in h)
        body = "".join("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    return (f"<h2>Training seeds and label draws: {escape(t.title)}</h2><p class=\"small\">"
            f"{escape(SEEDS)}</p>{table(head, grid)}{table(['std of test mAP over', 'mAP'], stds)}")  # fmt: skip


def describe_runs(runs) -> dict[str, Any]:
    """What the runs' config.json files record of their provenance, each value once."""
    seen: dict[str, set] = {k: set() for k in ("wsml", "commit", "shard set", "cache", "machine",
                                               "date")}  # fmt: skip
    commands, missing = [], 0
    for run in runs:
        p = run.provenance
        if not p:
            missing += 1
            continue
        git = p.get("git") or {}
        seen["wsml"].add(str(p.get("wsml")))
        seen["commit"].add(f"{git['commit'][:12]}{' (uncommitted changes)' if git.get('dirty') else ''}"
                           if git else "no git checkout")  # fmt: skip
        ss = p.get("shard_set") or {}
        seen["shard set"].add(f"{ss.get('name')} ({ss.get('converter')}): manifest sha256 "
                              f"{str(ss.get('manifest_sha256'))[:16]}")  # fmt: skip
        for tag, c in (p.get("caches") or {}).items():
            seen["cache"].add(f"{tag}: meta.json sha256 {str(c.get('meta_sha256'))[:16]}")
        m = p.get("machine") or {}
        seen["machine"].add(f"{m.get('cpu')} ({m.get('cores')} cores)"
                            + (f", GPU {', '.join(m['gpu'])}" if m.get("gpu") else ""))  # fmt: skip
        seen["date"].add(str(p.get("date")))
        commands.append((str(run.path), str(p.get("command"))))
    out: dict[str, Any] = {k: sorted(v) for k, v in seen.items()}
    if out["date"]:
        out["date"] = [f"{out['date'][0]} to {out['date'][-1]}"]
    out["commands"] = sorted(commands)
    out["without provenance"] = missing
    return out


def provenance_lines(prov: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(this report's (name, value) lines, the runs' lines)."""
    me = prov.get("report") or {}
    git = me.get("git") or {}
    machine = me.get("machine") or {}
    mine = [("wsml", str(me.get("wsml"))),
            ("git commit", f"{git['commit']}{' (uncommitted changes)' if git.get('dirty') else ''}"
             if git else "none (not a git checkout)"),
            ("date", str(me.get("date"))), ("command", str(me.get("command"))),
            ("machine", f"{machine.get('cpu')} ({machine.get('cores')} cores), {machine.get('os')}")]  # fmt: skip
    runs = prov.get("runs") or {}
    theirs = [(k, v) for k in ("wsml", "commit", "shard set", "cache", "machine", "date")
              for v in runs.get(k, [])]  # fmt: skip
    if runs.get("without provenance"):
        theirs.append(("runs without provenance", f"{runs['without provenance']} (older runs)"))
    return mine, theirs


def html_provenance(prov: dict[str, Any]) -> str:
    mine, theirs = provenance_lines(prov)
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in mine)
    runs = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in theirs)
    commands = "".join(f"<li><code>{escape(p)}</code>: <code>{escape(c)}</code></li>"
                       for p, c in (prov.get("runs") or {}).get("commands", []))  # fmt: skip
    return (f"<footer><h2>Provenance</h2><h3>This report</h3><dl>{dl}</dl><h3>Its runs</h3>"
            f"<dl>{runs}</dl><details><summary>Each run's command</summary><ul>{commands}</ul>"
            "</details></footer>")  # fmt: skip


def markdown(report) -> str:
    parts = ["# wsml report\n", md_text(_intro(report)) + "\n"]
    for title, table in by_table(report.rows).items():
        parts.append(f"## Leaderboard: {md_text(title)}\n")
        for part, heading in (("main", ""), ("full", "### Full labels (the reference)\n\n")):
            if table[part]:
                parts.append(heading + format_markdown(table[part], table_columns(
                    table[part], report.paper_numbers)))  # fmt: skip
        notes = notes_of(table["main"] + table["full"])
        if notes:
            parts.append("".join(f"- {md_text(n)}\n" for n in notes))
        matrix = report.paired.get(title)
        if matrix:
            parts.append(f"### Paired comparisons\n\n{md_text(PAIRED)}\n\n"
                         + _md_grid(["", *matrix["labels"]], paired_cells(matrix)))  # fmt: skip
    if report.unfinished:
        parts.append("## Unfinished runs (not ranked)\n\n"
                     + format_markdown(report.unfinished, list(UNFINISHED_COLUMNS)))  # fmt: skip
    if report.sources:
        parts.append(
            "Papers' numbers from:\n\n" + "".join(f"- {md_text(s)}\n" for s in report.sources)
        )
    for t in report.seed_draws:
        head, grid, stds = seed_draw_rows(t)
        parts.append(f"## Training seeds and label draws: {md_text(t.title)}\n\n{md_text(SEEDS)}"
                     f"\n\n{_md_grid(head, grid)}\n{_md_grid(['std of test mAP over', 'mAP'], stds)}")  # fmt: skip
    for section in report.sections:
        parts.append(f"## {md_text(section.title)}\n")
        parts += [f"*{md_text(n)}*\n" for n in section.notes]
        for files, caption in section.figures:
            links = ", ".join(f"[{f.rsplit('.', 1)[1].upper()}]({f})" for f in files[1:])
            parts.append(f"![{md_text(caption)}]({files[0]})\n\n{md_text(caption)} ({links})\n")
    if report.problems:
        parts.append("## Problems\n\n" + "".join(f"- {md_text(p)}\n" for p in report.problems))
    mine, theirs = provenance_lines(report.provenance)
    block = [f"{k}: {v}" for k, v in mine] + ["", "runs:"] + [f"  {k}: {v}" for k, v in theirs]
    block += [f"  command of {p}: {c}" for p, c in (report.provenance.get("runs") or {}).get(
        "commands", [])]  # fmt: skip
    parts.append("## Provenance\n\n```\n" + md_text("\n".join(block)) + "\n```\n")
    return "\n".join(parts)


def _md_grid(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md_text(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md_text(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
