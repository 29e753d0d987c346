"""The benchmarks' markdown (``--markdown DOC#BLOCK``, ``make bench-docs``): a bench rewrites its
own block of a doc and nothing else, keeps an old figure beside one that moved by more than
20 %, records where its figures come from and refreshes the index; every table of
docs/performance.md lives in a block that a registered bench command regenerates (no timing
asserts: benchmarks are not tests)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from bench.docs import DOC_TABLES, list_runs, run_bench_docs
from bench.markdown import (
    MARKER,
    Table,
    figure,
    keep_moved,
    list_blocks,
    read_tables,
    render_index,
    write_block,
)
from shards.base.errors import WsmlError
from tests.support.cli_checks import assert_refused
from tests.support.raw_datasets import REPO

DOC = """# Speed

Prose before, with a | pipe that is no table.

<!-- bench:index begin -->
<!-- bench:index end -->

## Conversion

Prose about conversion.

<!-- bench:conv begin -->
_Measured by hand 2026-11-23 on AMD EPYC, 2 cores, 25 GB RAM, no GPU: `python cli.py bench x`_

| 3,000 JPEGs | seconds | vs plain tar |
|---|---:|---:|
| `tar cf` | 0.28 | 1.00 |
| `cli.py shard` | 0.95 (was 1.40) | **0.29** (0.27–0.31) |
<!-- bench:conv end -->

Prose between.

<!-- bench:loader begin -->
_Measured by hand 2026-11-23 on AMD EPYC, 2 cores, 25 GB RAM, no GPU: `python cli.py bench y`_

| loader | images/s |
|---|---:|
| DALI | 564 |
<!-- bench:loader end -->

Prose after.
"""

ORIGIN = "_Generated 2026-12-06 at commit abc1234 on Test CPU, 2 cores, 8 GB RAM, no GPU: `cmd`_"


def outside(text: str, block: str) -> str:
    """``text`` without block ``block``'s content (markers kept) nor the index's content."""
    for name in (block, "index"):
        text = re.sub(rf"(<!-- bench:{name} begin -->\n).*?(<!-- bench:{name} end -->)", r"\1\2",
                      text, flags=re.S)  # fmt: skip
    return text


def test_a_block_is_replaced_in_place_and_the_rest_left_as_it_was(tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text(DOC)
    new = Table(
        ("3,000 JPEGs", "seconds", "vs plain tar"),
        (("`tar cf`", "0.30", "1.00"), ("`cli.py shard`", "0.50", "**0.60** (0.55–0.62)")),
        caption="Median of 3 rounds.",
    )
    write_block(doc, "conv", [new], ORIGIN)
    text = doc.read_text()
    assert outside(text, "conv") == outside(DOC, "conv")  # prose and the other block untouched
    start = text.index("<!-- bench:conv begin -->")
    body = text[start : text.index("<!-- bench:conv end -->")]
    assert body.splitlines()[1:4] == [ORIGIN, "", "Median of 3 rounds."]
    (table,) = read_tables(body)
    # 0.30 moved by 7 % from 0.28: alone; 0.50 by 47 % from 0.95 and 0.60 by 107 % from 0.29:
    # each keeps its old figure (not the older "was", nor the old range)
    assert table.rows == (
        ("`tar cf`", "0.30", "1.00"),
        ("`cli.py shard`", "0.50 (was 0.95)", "**0.60** (0.55–0.62) (was 0.29)"),
    )
    index = read_tables(text[text.index("bench:index begin") : text.index("bench:index end")])
    assert index[0].rows == (
        ("`conv`", "2026-12-06", "abc1234", "generated, Test CPU, 2 cores, 8 GB RAM, no GPU"),
        ("`loader`", "2026-11-23", "—", "by hand, AMD EPYC, 2 cores, 25 GB RAM, no GPU"),
    )
    write_block(doc, "conv", [new], ORIGIN)  # again: nothing moved since, no "was" left
    (table,) = read_tables(outside(doc.read_text(), "loader"))
    assert table.rows == new.rows


def test_figures_and_what_counts_as_moved():
    assert [figure(c) for c in ("**3.47×** (3.2–3.6)", "4,302", "0.95 (was 1.4)", "`an`", "—")] == [
        3.47, 4302, 0.95, None, None
    ]  # fmt: skip
    old = Table(("x", "a", "b", "c"), (("r", "10", "10", "words"),))
    new = Table(("x", "a", "b", "c"), (("r", "12", "12.1", "other words"), ("s", "1", "1", "")))
    assert keep_moved(new, old).rows == (
        ("r", "12", "12.1 (was 10)", "other words"),  # 20 % exactly stays; a new row has none
        ("s", "1", "1", ""),
    )
    assert keep_moved(new, None) == new
    moved = Table(("x", "b", "a", "c"), (("r", "30", "10", "w"),))  # matched by header, not place
    assert keep_moved(moved, old).rows == (("r", "30 (was 10)", "10", "w"),)


def test_a_missing_block_or_doc_is_refused_before_any_work(tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text(DOC)
    work = tmp_path / "work"
    args = ["bench", "shard", "--images", "4", "--rss-sizes", "0", "--workdir", str(work)]
    result = CliRunner().invoke(cli.main, [*args, "--markdown", f"{doc}#nope"])
    assert result.exit_code == 2 and "no block 'nope'" in result.output
    assert "its blocks: conv, loader" in result.output and not work.exists()
    result = CliRunner().invoke(cli.main, [*args, "--markdown", str(tmp_path / "none.md")])
    assert result.exit_code == 2 and "does not exist" in result.output and not work.exists()
    assert_refused(
        CliRunner().invoke(cli.main, ["bench", "docs", "--doc", str(doc), "--tables", "shard"]),
        "no block 'shard-3000'",
    )
    assert_refused(
        CliRunner().invoke(cli.main, ["bench", "docs", "--tables", "shards", "--dry-run"]),
        "unknown bench-docs table 'shards'",
        "Did you mean shard?",
    )
    with pytest.raises(WsmlError, match="one '<!-- bench:conv begin -->' line"):
        broken = tmp_path / "broken.md"
        broken.write_text(DOC.replace("<!-- bench:conv end -->", ""))
        write_block(broken, "conv", [], ORIGIN)
    assert broken.read_text() == DOC.replace("<!-- bench:conv end -->", "")


def test_bench_shard_writes_its_block(tmp_path):
    """A real bench command at tiny sizes: its tables land in its block, the date, commit,
    machine and its own command line above them; the rest of the doc stays."""
    doc = tmp_path / "perf.md"
    doc.write_text(DOC)
    args = ["bench", "shard", "--images", "12", "--rss-sizes", "0", "--repeats", "1"]
    args += ["--workers", "1", "--workdir", str(tmp_path / "work")]
    result = CliRunner().invoke(cli.main, [*args, "--markdown", f"{doc}#conv"])
    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert outside(text, "conv") == outside(DOC, "conv")
    body = text[text.index("bench:conv begin") : text.index("bench:conv end")]
    assert re.search(r"_Generated \d{4}-\d\d-\d\d at commit \S+ on .+, \d+ cores, .+: `", body)
    (table,) = read_tables(body)
    assert table.headers[1:] == ("seconds", "images/s", "MB/s", "vs plain tar")
    assert [r[0] for r in table.rows][2] == "`cli.py shard` (default: every shard fsynced)"
    assert table.rows[0][4] == "1.00" and table.rows[2][4].startswith("**")


def test_every_table_of_the_performance_doc_is_a_registered_block():
    """No table of docs/performance.md lies outside a block; every block has a bench command
    that regenerates it, and every command's block is in the doc."""
    text = (REPO / "docs" / "performance.md").read_text()
    stripped = text
    for name in list_blocks(text):
        stripped = outside(stripped, name)
    assert not [line for line in stripped.splitlines() if line.startswith("|")]
    blocks = {r.block for r in list_runs("all")}
    assert set(list_blocks(text)) == blocks | {"index"}
    assert len(blocks) == sum(len(t.runs) for t in DOC_TABLES)  # each block written once
    assert all(m["name"] for m in MARKER.finditer(text))
    assert len(render_index(text).rows) == len(blocks)


@pytest.mark.slow
def test_every_bench_regenerates_its_blocks_at_small_sizes(tmp_path):
    """``bench docs --small`` on a copy of docs/performance.md: every bench command runs and
    rewrites its block (as many tables as the doc's, the first with its columns, so the next
    figures are compared with the old ones), the prose stays."""
    doc = tmp_path / "performance.md"
    shutil.copy(REPO / "docs" / "performance.md", doc)
    before = doc.read_text()
    done = run_bench_docs("all", doc, small=True, echo=lambda line: None)
    assert [d["block"] for d in done] == [r.block for r in list_runs("all")]
    text = doc.read_text()
    for name in list_blocks(text):
        if name == "index":
            continue
        old, new = (body_of(t, name) for t in (before, text))
        assert new.lstrip().startswith("_Generated "), name
        # the same tables, the first with the same columns: the next figures meet the old
        (was_, *_), (now, *_) = read_tables(old), read_tables(new)
        assert len(read_tables(new)) == len(read_tables(old)), name
        assert now.headers[1:] == was_.headers[1:], name
    strip = before
    for name in list_blocks(before):
        strip, text = outside(strip, name), outside(text, name)
    assert text == strip


def body_of(text: str, name: str) -> str:
    begin = f"<!-- bench:{name} begin -->"
    return text[text.index(begin) + len(begin) : text.index(f"<!-- bench:{name} end -->")]


def test_bench_docs_dry_run_lists_the_commands(tmp_path):
    result = CliRunner().invoke(cli.main, ["bench", "docs", "--tables", "shard", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("== ")]
    assert lines == [
        "== shard-3000: python cli.py bench shard --images 3000 --rss-sizes 0 --markdown "
        "docs/performance.md#shard-3000",
        "== shard-10000: python cli.py bench shard --images 10000 --markdown "
        "docs/performance.md#shard-10000",
    ]
    assert Path("docs/performance.md").is_file()
