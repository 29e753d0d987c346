"""``bench shard`` smoke run: figures are returned and printed, generated data is kept in a given
workdir, every tar copy and shard output is removed (no timing asserts: benchmarks are not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.shard import (
    DATA,
    RSS_DATA,
    SHARD_OUT,
    TAR_OUT,
    jpeg_pool,
    run_shard_bench,
    shard_tables,
)
from shards.base.errors import WsmlError


def test_bench_shard_smoke(tmp_path: Path) -> None:
    lines: list[str] = []
    r = run_shard_bench(
        images=60,
        workdir=str(tmp_path),
        workers=1,
        rss_sizes=(50, 100),
        echo=lines.append,
        repeats=1,
    )
    json.dumps(r)  # plain data only
    assert r["workdir"] == str(tmp_path) and r["kept"]
    assert r["machine"]["nproc"] >= 1 and r["machine"]["ram_gb"] > 0

    t = r["throughput"]
    assert t["images"] == 60 and t["workers"] == 1 and t["source_bytes"] > 60 * 20_000
    for key in ("tar", "tar_fsync", "shard"):
        assert len(t[key]["seconds"]) == 1
        assert t[key]["median_s"] > 0 and t[key]["images_per_s"] > 0 and t[key]["mb_per_s"] > 0
    assert t["ratio"] > 0 and isinstance(t["meets_goal"], bool)
    # the shard set was written (tars, indexes, labels, manifest) and then removed
    out = t["shard_output"]
    assert out["files"] >= 5 and out["bytes"] > t["source_bytes"] and out["removed"]
    assert not (tmp_path / SHARD_OUT).exists() and not (tmp_path / TAR_OUT).exists()

    m = r["rss"]
    assert m["sizes"] == [50, 100] and m["limit_mb"] == 50
    assert [(x["images"], x["workers"]) for x in m["runs"]] == [(50, 1), (100, 1)]
    assert all(x["process_mb"] > 10 for x in m["runs"])
    assert set(m["diff_mb"]) == {1} and isinstance(m["meets_goal"], bool)

    # generated datasets are kept in a given workdir (COCO layout, 80/20 split)
    root = tmp_path / DATA
    ann = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert len(ann["images"]) == 12 and len(list((root / "train").iterdir())) == 48
    for n in (50, 100):
        raw = tmp_path / RSS_DATA.format(n=n) / "raw"
        assert len(list((raw / "train").iterdir())) + len(list((raw / "val").iterdir())) == n
        assert not (raw.parent / "shards").exists()
    text = "\n".join(lines)
    assert "ratio shard/tar" in text and "peak RSS" in text and "machine:" in text


def test_jpeg_pool_is_realistic_and_distinct() -> None:
    pool = jpeg_pool(0, 8, (440, 520), (330, 400))
    sizes = [len(b) for b, _, _ in pool]
    assert len(set(b for b, _, _ in pool)) == 8
    assert all(b[:2] == b"\xff\xd8" for b, _, _ in pool)
    assert 40_000 < sum(sizes) / len(sizes) < 130_000


def test_bench_shard_baseline_checkout(tmp_path: Path) -> None:
    """--baseline runs another checkout's cli.py shard in the same rounds (here: this one)."""
    project = Path(__file__).resolve().parents[1]
    lines: list[str] = []
    r = run_shard_bench(
        20, str(tmp_path), 1, (), echo=lines.append, repeats=2, baseline=str(project)
    )
    t = r["throughput"]
    assert t["baseline_checkout"] == str(project) and len(t["baseline"]["seconds"]) == 2
    assert len(t["ratios"]["shard_vs_baseline"]["runs"]) == 2
    assert any("this checkout's speed over the baseline's" in line for line in lines)
    rows = [row[0] for row in shard_tables(r)[0].rows]
    assert rows[-1] == "`cli.py shard` of the `--baseline` checkout"
    assert not (tmp_path / SHARD_OUT).exists()


def test_bench_shard_baseline_must_be_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(WsmlError, match="is not a wsml checkout"):
        run_shard_bench(4, str(tmp_path), 1, (), echo=lambda s: None, baseline=str(tmp_path))
