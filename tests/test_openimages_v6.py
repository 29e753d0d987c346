"""Open Images V6/V7 (``openimages-v6``): the released human-verified image-level label files,
V3's semantics, groups from the released hierarchy, line numbers in errors, --part/--finalize."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shards.convert.convert import convert
from shards.converters.openimages_v6 import FILES
from shards.shardset import open_shard_set
from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.layouts_openimages import openimages_layout, openimages_v6_layout


@pytest.mark.parametrize("version", ["6", "7"])
def test_labels_follow_the_human_verifications(tmp_path, version):
    root = openimages_v6_layout(tmp_path / "raw", version=version)
    out = tmp_path / "s"
    convert("openimages-v6", root, out, {}, {}, workers=1)
    ss = open_shard_set(out)
    mids = ss.manifest["source"]["mids"]
    assert ss.manifest["source"]["version"] == version and not ss.regimes
    assert ss.manifest["groups"][:3] == [ss.classes[0], ss.classes[0], ss.classes[2]]
    with open(root / FILES[version]["test"]) as f:
        rows = list(csv.DictReader(f))
    table = ss.label_table("test").to_pydict()
    y = ss.full_labels("test")
    for r, sid in enumerate(table["source_id"]):
        want = np.zeros(len(mids), np.int8)  # unknown unless verified
        for row in rows:
            if row["ImageID"] == sid and row["LabelName"] in mids:
                want[mids.index(row["LabelName"])] = 1 if row["Confidence"] == "1" else -1
        assert np.array_equal(y[r], want), sid


def test_bad_rows_name_their_line_and_missing_files_are_named(tmp_path):
    root = openimages_v6_layout(tmp_path / "raw")
    path = root / FILES["6"]["validation"]
    rows = path.read_text().splitlines()
    rows.insert(2, rows[1].rsplit(",", 1)[0] + ",0.5")
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert_refused(shard_cli(root, out, dataset="openimages-v6"), f"{path}:3", "'0.5'", out=out)
    (root / FILES["6"]["trainable"]).unlink()
    assert_refused(shard_cli(root, out, dataset="openimages-v6"), "oidv6-classes-trainable.txt", out=out)  # fmt: skip


def test_parts_and_finalize_give_the_same_bytes(tmp_path):
    root = openimages_v6_layout(tmp_path / "raw", missing=1)
    opts = dict(shard_samples=4)
    convert("openimages-v6", root, tmp_path / "one", {}, opts, workers=1)
    out = tmp_path / "parts"
    for k in range(2):
        convert("openimages-v6", root, out, {}, opts, workers=1, part=(k, 2))
    convert("openimages-v6", root, out, {}, opts, workers=1, finalize=True)
    one = tmp_path / "one"
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for f in files:
        assert (out / f).read_bytes() == (one / f).read_bytes(), f
    assert open_shard_set(out).manifest["official_splits"]["train"]["missing_count"] == 1


def cvdf_layout(root: Path) -> Path:
    """The V6 layout with its images as the CVDF tarballs unpack: train_0/ … train_3/ (by the
    id's first hex digit), validation/, test/."""
    for split in ("train", "validation", "test"):
        for image in sorted((root / "images" / split).iterdir()):
            folder = root / (f"train_{int(image.name[0], 16) % 4}" if split == "train" else split)
            folder.mkdir(exist_ok=True)
            image.rename(folder / image.name)
    shutil.rmtree(root / "images")
    return root


def same_shards(a: Path, b: Path) -> None:
    tars = sorted(p.name for p in a.glob("*.tar"))
    assert tars and tars == sorted(p.name for p in b.glob("*.tar"))
    for name in tars:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for split in ("train", "val", "test"):
        ta, tb = (pq.read_table(o / "labels" / f"{split}.parquet") for o in (a, b))
        assert ta.drop(["path"]).equals(tb.drop(["path"])), split


@pytest.mark.parametrize("given", [(), ("-o", "images=train_*,validation,test")])
def test_the_cvdf_folders_are_searched_together(tmp_path, given):
    """The train images in train_0 … train_f: found by default, or with -o images= naming
    several folders and globs; the shard set is the one of a single image folder."""
    ref = openimages_v6_layout(tmp_path / "ref")
    convert("openimages-v6", ref, tmp_path / "one", {}, {}, workers=1)
    root = cvdf_layout(openimages_v6_layout(tmp_path / "raw"))
    assert len(list(root.glob("train_*"))) == 4
    out = tmp_path / "s"
    r = shard_cli(root, out, *given, dataset="openimages-v6")
    assert r.exit_code == 0, r.output
    same_shards(tmp_path / "one", out)
    paths = pq.read_table(out / "labels" / "train.parquet")["path"].to_pylist()
    assert {Path(p).parent.name for p in paths} == {f"train_{k}" for k in range(4)}


def test_an_image_in_two_folders_is_refused_naming_both(tmp_path):
    root = cvdf_layout(openimages_v6_layout(tmp_path / "raw"))
    image = sorted((root / "train_2").iterdir())[0]
    shutil.copy(image, root / "train_3" / image.name)
    out = tmp_path / "s"
    r = shard_cli(root, out, "-o", "images=train_*,validation,test", dataset="openimages-v6")
    assert_refused(r, image.name, str(root / "train_2"), str(root / "train_3"), out=out)
    r = shard_cli(root, out, dataset="openimages-v6")
    assert_refused(r, image.name, "train_2", "train_3", out=out)
    r = shard_cli(root, out, "-o", "images=train_*,valid_*", dataset="openimages-v6")
    assert_refused(r, "no folder", "'valid_*'", out=out)


def test_v3_takes_several_image_folders_too(tmp_path):
    root = openimages_layout(tmp_path / "raw")
    convert("openimages-v3", root, tmp_path / "one", {}, {}, workers=1)
    out = tmp_path / "s"
    r = shard_cli(root, out, "-o", "images=images_test,images_*", dataset="openimages-v3")
    assert r.exit_code == 0, r.output
    same_shards(tmp_path / "one", out)
