"""The benchmarks' markdown: a bench command run with ``--markdown DOC#BLOCK`` writes its tables
into the block BLOCK of DOC, between the markers ``<!-- bench:BLOCK begin -->`` and
``<!-- bench:BLOCK end -->``, and leaves every other line of DOC as it was. A block opens with
where its figures come from (date, commit, machine, the command); a figure that moved by more
than 20 % from the block's previous one keeps the old one beside it; the ``index`` block lists
every block with the date and commit of its figures. So no table in ``docs/`` is typed by hand,
and ``make bench-docs`` (``cli.py bench docs``) regenerates them all, or a few."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import click

from shards.base.errors import WsmlError
from shards.base.fileio import write_bytes_atomic

MOVED = 0.2  # a figure that moved by more than this share keeps its old value beside it
INDEX = "index"
MARKER = re.compile(r"^<!-- bench:(?P<name>[A-Za-z0-9_.-]+) (?P<side>begin|end) -->$", re.M)
ORIGIN = re.compile(
    r"^_(?P<how>Generated|Measured by hand) (?P<date>\d{4}-\d\d-\d\d)"
    r"(?: at commit (?P<commit>\S+))? on (?P<machine>[^:]*):"
)
FIGURE = re.compile(r"^\**([-+]?\d[\d,]*(?:\.\d+)?)")  # a cell's leading number (bold allowed)
WAS = re.compile(r" \(was [^()]*\)$")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Table:
    """One markdown table: ``headers``, ``rows`` of cells, a ``caption`` line above it. The
    first column names the rows; figures are matched between runs by (row name, header)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""

    def render(self) -> str:
        """Markdown; a column of figures is right-aligned, one of words left-aligned."""
        columns = list(zip(*self.rows, strict=True)) if self.rows else []
        align = ["---"] + [
            "---:" if sum(figure(c) is not None for c in col) * 2 > len(col) else "---"
            for col in columns[1:]
        ]
        align += ["---:"] * (len(self.headers) - len(align))
        lines = [_row(self.headers), _row(align), *(_row(r) for r in self.rows)]
        return (f"{self.caption}\n\n" if self.caption else "") + "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def read_tables(text: str) -> list[Table]:
    """The tables of a block's markdown, in order (captions left out)."""
    tables, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            lines.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif lines:
            if len(lines) >= 2:
                tables.append(Table(tuple(lines[0]), tuple(tuple(r) for r in lines[2:])))
            lines = []
    return tables


def figure(cell: str) -> float | None:
    """The figure a cell shows (its leading number: ``**3.47×**`` 3.47, ``4,302`` 4302), or
    None for a cell of words."""
    m = FIGURE.match(WAS.sub("", cell.strip()))
    return float(m.group(1).replace(",", "")) if m else None


def keep_moved(new: Table, old: Table | None, threshold: float = MOVED) -> Table:
    """``new`` with, beside each figure that moved by more than ``threshold`` from the figure
    at the same row and column of ``old``, the old one: ``0.55 (was 0.36)``."""
    if old is None:
        return new
    before = {(r[0], h): c for r in old.rows for h, c in zip(old.headers[1:], r[1:], strict=False)}
    rows = []
    for r in new.rows:
        cells = [r[0]]
        for h, cell in zip(new.headers[1:], r[1:], strict=True):
            prev = WAS.sub("", before.get((r[0], h), ""))
            a, b = figure(prev), figure(cell)
            moved = a is not None and b is not None and abs(b - a) > threshold * abs(a)
            was = prev.strip("*").split(" ")[0].strip("*")  # its figure, without notes
            cells.append(f"{cell} (was {was})" if moved else cell)
        rows.append(tuple(cells))
    return replace(new, rows=tuple(rows))


def describe_machine(load: float | None = None, gpu: str | None = None) -> str:
    """CPU, cores, RAM, the GPU a bench ran on (``gpu``, "no GPU"; None: a bench that uses
    none) and the 1-minute load average (``load``: the one when the bench started, so other
    work on the machine shows)."""
    from bench.harness import machine_info

    m = machine_info()
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else load
    parts = [m["cpu"], f"{m['nproc']} cores", f"{m['ram_gb']:.0f} GB RAM"]
    parts += [gpu] if gpu else []
    parts += [] if load is None else [f"load {load:.1f}"]
    return ", ".join(parts)


def current_commit() -> str:
    """The checkout's short commit, with ``+`` when files outside ``docs/`` differ from it
    (the figures then come from code no commit holds); ``unknown`` outside git."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        if out.returncode:
            raise OSError(out.stderr)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs")
    except OSError:
        return "unknown"
    return commit + ("+" if dirty else "")


def command_line() -> str:
    """This process's command line as a user types it (``python cli.py bench …``)."""
    if Path(sys.argv[0]).name != "cli.py":  # called in-process (a test, a notebook)
        return "python cli.py bench … (in-process)"
    return "python cli.py " + shlex.join(sys.argv[1:])


@dataclass(frozen=True)
class MarkdownTarget:
    """Where a bench command writes its tables (``--markdown DOC#BLOCK``), checked before the
    bench runs; ``load`` is the machine's load average when it started."""

    doc: Path
    block: str
    load: float | None

    def write(self, tables: Sequence[Table], *, gpu: str | None = None) -> None:
        origin = (
            f"_Generated {time.strftime('%Y-%m-%d')} at commit {current_commit()} on "
            f"{describe_machine(self.load, gpu)}: `{command_line()}`_"
        )
        write_block(self.doc, self.block, tables, origin)


def open_target(spec: str, default_block: str) -> MarkdownTarget:
    """``DOC#BLOCK`` (or ``DOC``: the command's own block), checked: DOC exists and holds the
    block's markers once."""
    doc, _, block = spec.partition("#")
    target = MarkdownTarget(Path(doc), block or default_block, None)
    find_block(_read(target.doc), target.block, target.doc)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return replace(target, load=load)


def _read(doc: Path) -> str:
    try:
        return doc.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WsmlError(f"{doc} does not exist (--markdown names the doc to write into)") from None


def list_blocks(text: str) -> list[str]:
    return [m["name"] for m in MARKER.finditer(text) if m["side"] == "begin"]


def find_block(text: str, name: str, doc: Path) -> tuple[int, int]:
    """(start, end) of block ``name``'s content (between its markers) in ``text``."""
    begins = [m for m in MARKER.finditer(text) if m["name"] == name and m["side"] == "begin"]
    ends = [m for m in MARKER.finditer(text) if m["name"] == name and m["side"] == "end"]
    if len(begins) != 1 or len(ends) != 1 or ends[0].start() < begins[0].end():
        have = ", ".join(n for n in list_blocks(text) if n != INDEX) or "none"
        raise WsmlError(
            f"{doc} has no block {name!r} (one '<!-- bench:{name} begin -->' line, then one "
            f"'<!-- bench:{name} end -->' line); its blocks: {have}"
        )
    return begins[0].end(), ends[0].start()


def write_block(doc: Path, name: str, tables: Sequence[Table], origin: str) -> None:
    """Replace block ``name`` of ``doc`` by ``origin`` (where the figures come from), the
    ``tables`` (old figures kept beside moved ones); refresh the index block.
    Every other line of ``doc`` stays as it was; the file is replaced whole, at once."""
    text = _read(doc)
    start, end = find_block(text, name, doc)
    old = read_tables(text[start:end])
    kept = [keep_moved(t, old[i] if i < len(old) else None) for i, t in enumerate(tables)]
    parts = [origin, *(t.render() for t in kept)]
    text = text[:start] + "\n" + "\n\n".join(parts) + "\n" + text[end:]
    if INDEX in list_blocks(text):
        start, end = find_block(text, INDEX, doc)
        text = text[:start] + "\n" + render_index(text).render() + "\n" + text[end:]
    write_bytes_atomic(doc, text.encode("utf-8"), durable=False)


def render_index(text: str) -> Table:
    """Which block's figures come from which date and commit (or were measured by hand)."""
    rows = []
    for name in list_blocks(text):
        if name == INDEX:
            continue
        start, end = find_block(text, name, Path("doc"))
        m = ORIGIN.search(text[start:end].strip())
        if m is None:
            rows.append((f"`{name}`", "—", "—", "not generated yet"))
            continue
        how = "generated" if m["how"] == "Generated" else "by hand"
        rows.append((f"`{name}`", m["date"], m["commit"] or "—", f"{how}, {m['machine']}"))
    return Table(("table", "figures of", "commit", "how, where"), tuple(rows))


def markdown_option(default_block: str):
    """``--markdown DOC[#BLOCK]`` of a bench command: also write its tables into block BLOCK
    (default ``default_block``) of DOC, leaving the rest of DOC as it is; the doc and its
    block are checked before the bench runs."""

    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            return open_target(value, default_block)
        except WsmlError as e:
            raise click.BadParameter(str(e), ctx, param) from None

    return click.option(
        "--markdown",
        callback=parse,
        metavar="DOC[#BLOCK]",
        help=f"Also write the tables into block BLOCK [default: {default_block}] of DOC, "
        "e.g. docs/performance.md (make bench-docs runs them all).",
    )
