"""Open Images V3: human labels with explicit negatives and real unknowns, streamed CSVs,
missing images, line-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

import cli
from shards.convert.convert import convert
from shards.converters.oi_labels import hex_ids
from shards.converters.openimages import OpenImagesOptions, open_openimages
from shards.shardset import open_shard_set
from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.layouts_openimages import openimages_layout


def annotations(root: Path, split: str = "train") -> list[list[str]]:
    text = (root / "2017_11" / split / "annotations-human.csv").read_text()
    return [line.split(",") for line in text.splitlines()[1:]]


def test_labels_keep_negatives_and_unknowns(tmp_path):
    root = openimages_layout(tmp_path / "raw")
    mids = (root / "2017_11" / "classes-trainable.txt").read_text().split()
    want: dict[str, tuple[set, set]] = {}
    for image, _, mid, conf in annotations(root):
        if mid in mids:
            pos, neg = want.setdefault(image, (set(), set()))
            (pos if conf == "1" else neg).add(mids.index(mid))
    source = open_openimages(root, OpenImagesOptions())
    train = source.splits[0]
    assert [train.records.source_ids([i])[0] for i in range(len(train.records))] == sorted(want)
    for i in range(len(train.records)):
        rec = train.records[i]
        assert (set(rec.positives), set(rec.negatives)) == want[rec.source_id]
    assert not source.complete_labels and source.groups is None

    out = tmp_path / "shards"
    convert("openimages-v3", root, out, {}, {}, workers=1)
    ss = open_shard_set(out)
    assert ss.regimes == {}  # the human labels are the observed ones: no derived view by default
    y = ss.full_labels("train")
    assert (y == 0).any() and (y == -1).any() and (y == 1).sum(1).min() >= 1
    assert [ss.split(s)["official"] for s in ss.splits] == ["train", "validation", "test"]
    assert (
        ss.classes[0]
        == {
            line.split(",")[0]: line.split(",", 1)[1]
            for line in (root / "2017_11" / "class-descriptions.csv").read_text().splitlines()
        }[source.notes["mids"][0]]
    )


def test_a_class_both_verified_and_rejected_counts_as_positive(tmp_path):
    root = openimages_layout(tmp_path / "raw")
    path = root / "2017_11" / "train" / "annotations-human.csv"
    rows = annotations(root)
    image, mid = rows[0][0], rows[0][2]
    path.write_text(path.read_text() + f"{image},crowdsource-verification,{mid},0\n")
    source = open_openimages(root, OpenImagesOptions())
    recs = source.splits[0].records
    i = recs.source_ids(range(len(recs))).index(image)
    k = source.notes["mids"].index(mid)
    assert k in recs[i].positives and k not in recs[i].negatives


def test_hex_ids_are_exact():
    values = [0, 1, 2**63 - 1, 2**64 - 1, 0x000060E3121C7305]
    col = pa.array([f"{v:016x}" for v in values]).slice(1)  # a sliced array, offset != 0
    assert hex_ids(col, Path("x"), 2).tolist() == values[1:]
    assert hex_ids(pa.array(["000060E3121C7305"]), Path("x"), 2).tolist() == [values[-1]]


def test_missing_images_are_skipped_and_listed(tmp_path):
    root = openimages_layout(tmp_path / "raw", missing=2)
    out = tmp_path / "shards"
    convert("openimages-v3", root, out, {}, {}, workers=1)
    m = open_shard_set(out).manifest
    train = m["official_splits"]["train"]
    assert train["missing_count"] == 2 and len(train["missing"]) == 2
    table = pa.parquet.read_table(out / train["missing_table"]["path"]).to_pydict()
    assert table["source_id"] == train["missing"]
    assert m["splits"]["train"]["num_samples"] == train["records"] - 2
    info = CliRunner().invoke(cli.main, ["info", str(out)])
    assert f"train {train['records'] - 2} of {train['records']} present" in info.output


def test_groups_from_a_hierarchy_file(tmp_path):
    root = openimages_layout(tmp_path / "raw")
    mids = (root / "2017_11" / "classes-trainable.txt").read_text().split()
    tree = {
        "LabelName": "/m/0bl9f",
        "Subcategory": [
            {"LabelName": mids[0], "Subcategory": [{"LabelName": mids[1]}]},
            {"LabelName": mids[2]},
        ],
    }
    (root / "2017_11" / "hierarchy.json").write_text(json.dumps(tree))
    source = open_openimages(root, OpenImagesOptions(hierarchy="hierarchy.json"))
    names = source.classes
    assert source.groups[:3] == (names[0], names[0], names[2])
    assert set(source.groups[3:]) == {"other"}


@pytest.mark.parametrize(
    "line,message",
    [
        ("0000000000000001,verification", "malformed row"),
        ("00000000000000zz,verification,{mid},1", "is not 16 hex digits"),
        ("{image},verification,/m/not_a_class,1", "unknown class id '/m/not_a_class'"),
        ("{image},verification,{mid},0.7", "confidence '0.7' is not 0 or 1"),
        ("0000000000000abc,verification,{mid},1", "ImageID 0000000000000abc is not in images.csv"),
    ],
)
def test_bad_annotation_rows_name_their_line(tmp_path, line, message):
    root = openimages_layout(tmp_path / "raw")
    path = root / "2017_11" / "train" / "annotations-human.csv"
    rows = path.read_text().splitlines()
    image, mid = rows[1].split(",")[0], rows[1].split(",")[2]
    rows.insert(3, line.format(image=image, mid=mid))
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert_refused(
        shard_cli(root, out, dataset="openimages-v3"),
        f"{path}:4",
        message,
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "remove",
    [
        "classes-trainable.txt",
        "class-descriptions.csv",
        "validation/images.csv",
        "test/annotations-human.csv",
    ],
)
def test_missing_metadata_is_named(tmp_path, remove):
    root = openimages_layout(tmp_path / "raw")
    (root / "2017_11" / remove).unlink()
    out = tmp_path / "out"
    assert_refused(
        shard_cli(root, out, dataset="openimages-v3"),
        remove.split("/")[-1],
    )
    assert not out.exists()


def test_no_image_on_disk_fails(tmp_path):
    root = openimages_layout(tmp_path / "raw")
    for jpg in (root / "images_validation").glob("*.jpg"):
        jpg.unlink()
    out = tmp_path / "out"
    assert_refused(
        shard_cli(root, out, dataset="openimages-v3"),
        "all image file(s) of the validation split are missing",
    )
    assert not out.exists()


def test_parts_and_finalize(tmp_path):
    root = openimages_layout(tmp_path / "raw", missing=1)
    opts = dict(shard_samples=4)
    convert("openimages-v3", root, tmp_path / "one", {}, opts, workers=1)
    out = tmp_path / "parts"
    for k in range(2):
        convert("openimages-v3", root, out, {}, opts, workers=1, part=(k, 2))
    convert("openimages-v3", root, out, {}, opts, workers=1, finalize=True)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file()
    )
    for f in files:
        assert (out / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f
    assert np.array_equal(
        open_shard_set(out).full_labels("test"),
        open_shard_set(tmp_path / "one").full_labels("test"),
    )


def test_class_groups_need_a_hierarchy(tmp_path):
    from shards.base.errors import WsmlError

    root = openimages_layout(tmp_path / "raw")
    convert("openimages-v3", root, tmp_path / "a", {}, {}, workers=1)
    with pytest.raises(WsmlError, match="has no class groups.*-o hierarchy=FILE"):
        open_shard_set(tmp_path / "a").class_groups()
