"""Contract tests over the converter registry: every converter's tiny real-layout dataset goes
through the writer and reads back identically with webdataset, DALI (CPU) and pyarrow."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import shards.converters  # noqa: F401
from shards.convert.convert import convert
from shards.convert.plan import shuffle_order
from shards.convert.source import CONVERTERS
from shards.shardset import open_shard_set
from tests.support.layouts import LAYOUTS

OPTIONS = dict(shard_samples=7, regimes=("single-positive", "partial:fraction=0.5"))


def test_every_converter_has_a_layout():
    assert set(CONVERTERS.names()) <= set(LAYOUTS), "add a tiny layout for the new converter"


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def converted(request, tmp_path_factory):
    name = request.param
    root = LAYOUTS[name](tmp_path_factory.mktemp(name) / "raw")
    out = root.parent / "shards"
    convert(name, root, out, {}, OPTIONS, workers=1)
    info = CONVERTERS.get(name)
    return name, root, out, info.open(root, info.options())


def source_labels(source):
    """source id -> positives, per official split name."""
    return {s.name: {r.source_id: r for r in s.records} for s in source.splits}


def test_label_tables_match_the_source(converted):
    name, root, out, source = converted
    ss = open_shard_set(out)
    by_split = source_labels(source)
    seen = 0
    for split in ss.splits:
        t = ss.label_table(split).to_pydict()
        official = ss.split(split)["official"]
        assert t["row"] == list(range(len(t["row"])))
        assert t["source_index"] == sorted(t["source_index"])  # rows keep the formatted order
        for sid, pos, path, w, h in zip(
            t["source_id"], t["positives"], t["path"], t["width"], t["height"], strict=True
        ):
            rec = by_split[official][sid]
            assert tuple(pos) == rec.positives
            row = t["source_id"].index(sid)
            for k, (name, _) in enumerate(source.extra_columns):  # e.g. VOC's difficult
                want = rec.extra[k]
                assert t[name][row] == (list(want) if isinstance(want, tuple) else want)
            with Image.open(root / path) as im:
                assert im.size == (w, h)
        seen += len(t["row"])
        y = ss.full_labels(split)
        values = {-1, 1} if source.complete_labels else {-1, 0, 1}  # real unknowns: 0
        assert set(np.unique(y)) <= values and y.shape[1] == len(source.classes)
    assert seen == sum(len(s.records) for s in source.splits)  # tiny layouts have no bad images


def test_split_follows_the_field(converted):
    name, root, out, source = converted
    ss = open_shard_set(out)
    train = [s for s in source.splits if s.role == "train"][0]
    own_val = [s for s in source.splits if s.role == "val"]
    n = len(train.records)
    n_val = len(own_val[0].records) if own_val else int(np.round(0.2 * n))
    assert ss.split("train")["num_samples"] == (n if own_val else n - n_val)
    assert ss.split("val")["num_samples"] == n_val
    test = [s for s in source.splits if s.role == "test"][0]
    assert ss.split("test")["num_samples"] == len(test.records)


def read_wds(paths):
    ds = wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
    return [(s["__key__"], struct.unpack("<q", s["row"])[0], s["jpg"]) for s in ds]


def test_webdataset_reads_every_row_once_with_original_bytes(converted):
    name, root, out, source = converted
    ss = open_shard_set(out)
    for split in ss.splits:
        t = ss.label_table(split).to_pydict()
        samples = read_wds(ss.shard_paths(split))
        assert sorted(r for _, r, _ in samples) == list(range(len(t["row"])))
        # written in the seeded global order, not in row order
        assert [r for _, r, _ in samples] == shuffle_order(len(samples), 1200, split).tolist()
        for key, row, jpg in samples:
            assert t["key"][row] == key
            assert jpg == (root / t["path"][row]).read_bytes()  # copied, not re-encoded
        counts = [s["num_samples"] for s in ss.split(split)["shards"]]
        assert max(counts) <= OPTIONS["shard_samples"] and sum(counts) == len(samples)


@pytest.mark.skipif(sys.platform != "linux", reason="DALI is Linux-only")
def test_dali_cpu_reader_agrees_with_webdataset(converted):
    from nvidia.dali import fn, pipeline_def, types

    name, root, out, source = converted
    ss = open_shard_set(out)
    split = "train"
    paths = [str(p) for p in ss.shard_paths(split)]
    index = [str(p) for p in ss.index_paths(split)]
    n = ss.split(split)["num_samples"]

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        jpg, row = fn.readers.webdataset(
            paths=paths,
            index_paths=index,
            ext=["jpg", "row"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
            name="r",
        )
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), row

    p = pipe()
    p.build()
    assert p.epoch_size("r") == n
    images, rows = p.run()
    wds_samples = {r: jpg for _, r, jpg in read_wds(paths)}
    got_rows = [int(np.asarray(rows.at(i))[0]) for i in range(n)]
    assert sorted(got_rows) == list(range(n))
    assert got_rows == [r for _, r, _ in read_wds(paths)]  # same stored order
    for i, row in enumerate(got_rows):
        pil = np.asarray(Image.open(io.BytesIO(wds_samples[row])).convert("RGB"), dtype=np.int16)
        dali = np.asarray(images.at(i), dtype=np.int16)
        assert dali.shape == pil.shape
        assert np.abs(dali - pil).mean() < 2.0  # JPEG decoders may differ by rounding


def test_observed_views(converted):
    name, root, out, source = converted
    ss = open_shard_set(out)
    assert set(ss.regimes) == {"single-positive", "partial-p0.5"}
    for split in ss.splits:
        full = ss.full_labels(split)
        sp = ss.observed_labels("single-positive", split)
        assert ((sp == 1).sum(1) == 1).all() and not (sp == -1).any()
        assert (full[sp == 1] == 1).all()
        part = ss.observed_labels("partial-p0.5", split)
        assert (part[part != 0] == full[part != 0]).all()


def test_observed_view_is_generated_before_the_split(converted):
    """single-positive runs on the whole official split in formatted order (METHODS §0.2)."""
    from shards.regimes import SinglePositive
    from shards.views import read_official_labels

    name, root, out, source = converted
    ss = open_shard_set(out)
    for official in ss.manifest["official_splits"]:
        labels, table = read_official_labels(
            out / f"labels/official/{official}.parquet", len(ss.classes)
        )
        pos, _ = SinglePositive().generate(labels)
        for k, (split, row) in enumerate(
            zip(table["split"].to_pylist(), table["row"].to_pylist(), strict=True)
        ):
            obs = ss.observed_labels("single-positive", split)[row]
            assert np.flatnonzero(obs == 1).tolist() == pos.row(k).tolist()


def test_verify_passes(converted):
    from shards.verify import verify_shard_set

    assert verify_shard_set(open_shard_set(converted[2])) == []


def test_index_files_equal_dalis_own_wds2idx(converted, tmp_path):
    import shutil
    import subprocess

    wds2idx = shutil.which("wds2idx", path=str(Path(sys.executable).parent))
    assert wds2idx, "wds2idx ships with the DALI wheel"
    ss = open_shard_set(converted[2])
    for tar, idx in zip(ss.shard_paths("train"), ss.index_paths("train"), strict=True):
        ref = tmp_path / f"{tar.stem}.idx"
        subprocess.run([wds2idx, str(tar), str(ref)], check=True, capture_output=True)
        assert idx.read_bytes() == ref.read_bytes()


def test_audit_passes(converted):
    """Every converter's tiny layout passes ``audit``: no image in two splits, split tables equal
    to the official labels, every view within its regime's contract, tables match tars."""
    from shards.audit import audit_shard_set

    name, root, out, source = converted
    report = audit_shard_set(open_shard_set(out)).report
    assert report["failures"] == [], report["failures"]
    assert set(report["checks"]["views"]) == set(open_shard_set(out).regimes)
