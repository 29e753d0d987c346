"""The converters on real raw-format files from the public datasets (../shared/fixtures/real)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from shards.convert.convert import convert
from shards.convert.source import CONVERTERS
from shards.converters.coco import CocoOptions, open_coco
from shards.converters.voc import VOC_CLASSES, VocOptions, VocPresetOptions, open_voc
from shards.shardset import open_shard_set
from tests.support.raw_datasets import jpeg_bytes


def labels_by_id(ss, split):
    t = ss.label_table(split).to_pydict()
    return {
        sid: [ss.classes[c] for c in pos]
        for sid, pos in zip(t["source_id"], t["positives"], strict=True)
    }


def test_voc2007_devkit(tmp_path, real):
    out = tmp_path / "voc2007"
    convert("voc2007", real / "voc/VOCdevkit", out, {}, {}, workers=1)
    ss = open_shard_set(out)
    got = {}
    for split in ss.splits:
        got |= labels_by_id(ss, split)
    assert got == {
        "000001": ["dog", "person"],
        "000002": ["train"],
        "000003": ["chair", "sofa"],
        "000004": ["car"],
        "000005": ["chair"],  # 3 of its 5 chairs are not difficult
    }
    assert ss.manifest["official_splits"]["trainval"]["records"] == 5
    assert ss.split("test")["num_samples"] == 5


def test_voc2012_devkit_ignores_parts(tmp_path, real):
    # the fixture's lists are trainval/test, so the generic VOC converter reads it
    out = tmp_path / "voc2012"
    opts = {"year": "2012", "train_set": "trainval", "test_set": "test"}
    convert("voc", real / "voc/VOCdevkit", out, opts, dict(val_frac=0.0), workers=1)
    ss = open_shard_set(out)
    assert labels_by_id(ss, "test") == {
        "2007_000027": ["person"],  # its <part> names (head, hand, foot) are not objects
        "2007_000032": ["aeroplane", "person"],
        "2007_000033": ["aeroplane"],
        "2007_000039": ["tvmonitor"],
        "2007_000042": ["train"],
    }
    assert ss.classes == ["aeroplane", "person", "train", "tvmonitor"]  # read from the XMLs


def test_voc2007_official_class_lists(tmp_path, real):
    """The complete official VOC2007 Main lists (CRLF): official counts and Cole's rules."""
    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "ImageSets").mkdir()
    (base / "ImageSets" / "Main").symlink_to(
        real / "voc/full_imagesets/VOCdevkit/VOC2007/ImageSets/Main"
    )
    source = CONVERTERS.get("voc2007").open(tmp_path, VocPresetOptions())
    trainval, test = source.splits
    assert source.classes == VOC_CLASSES
    aeroplane, person = VOC_CLASSES.index("aeroplane"), VOC_CLASSES.index("person")
    for split, n_aero, n_person in ((trainval, 238, 2008), (test, 204, 2007)):
        assert sum(aeroplane in r.positives for r in split.records) == n_aero
        assert sum(person in r.positives for r in split.records) == n_person
        assert all(r.positives for r in split.records)  # images without a positive dropped
        ids = [r.source_id for r in split.records]
        assert ids == sorted(ids)
    dropped = source.notes["dropped_no_positive"]
    assert len(trainval.records) + dropped["trainval"] == 5011
    assert len(test.records) + dropped["test"] == 4952
    kept = VocOptions(year="2007", train_set="trainval", test_set="test", keep_no_positive=True)
    assert len(open_voc(tmp_path, kept).splits[0].records) == 5011
    # difficult ('0') entries are negatives, recorded on the side
    assert any(r.extra[0] for r in trainval.records)
    assert not any(set(r.extra[0]) & set(r.positives) for r in trainval.records)


def real_coco_root(tmp_path: Path, real: Path) -> tuple[Path, dict]:
    """coco2014 layout from the real 100-image val2014 annotations; the 8 real images are used
    and the other 92 get stand-in JPEGs (the labels stay real)."""
    data = json.loads((real / "coco/annotations/instances_val2014_100.json").read_text())
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train2014", "val2014"):
        (root / split).mkdir()
        for k, im in enumerate(data["images"]):
            src = real / "coco/val2014" / im["file_name"]
            dst = root / split / im["file_name"]
            if src.exists():
                shutil.copyfile(src, dst)
            else:
                dst.write_bytes(jpeg_bytes(32, 24, k))
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root, data


def test_coco2014_real_annotations(tmp_path, real):
    root, data = real_coco_root(tmp_path, real)
    source = CONVERTERS.get("coco2014").open(root, CONVERTERS.get("coco2014").options())
    assert len(source.classes) == 80 and source.classes[0] == "person"
    assert len(set(source.groups)) == 12  # the supercategories
    val = source.splits[1]
    annotated = {a["image_id"] for a in data["annotations"]}
    ids = [r.source_id for r in val.records]
    assert ids == sorted(str(i) for i in annotated)  # sorted as strings: "133" < "42"
    assert ids != sorted(ids, key=int)
    cat_index = {c["id"]: k for k, c in enumerate(data["categories"])}
    want = {}
    for a in data["annotations"]:
        want.setdefault(str(a["image_id"]), set()).add(cat_index[a["category_id"]])
    assert {r.source_id: set(r.positives) for r in val.records} == want

    out = tmp_path / "shards"
    convert("coco2014", root, out, {}, {}, workers=1)
    ss = open_shard_set(out)
    y = ss.full_labels("test")
    t = ss.label_table("test").to_pydict()
    for sid, row in zip(t["source_id"], t["row"], strict=True):
        assert set(np.flatnonzero(y[row] == 1).tolist()) == want[sid]
    real_ids = {p.name for p in (real / "coco/val2014").iterdir()}
    sizes = dict(zip(t["path"], zip(t["width"], t["height"], strict=True), strict=True))
    for im in data["images"]:
        if im["file_name"] in real_ids and str(im["id"]) in want:
            assert sizes[f"val2014/{im['file_name']}"] == (im["width"], im["height"])


def test_coco_keep_empty(tmp_path, real):
    root, data = real_coco_root(tmp_path, real)
    opts = CocoOptions(
        train_json="annotations/instances_train2014.json",
        test_json="annotations/instances_val2014.json",
        train_images="train2014",
        test_images="val2014",
        keep_empty=True,
    )
    assert len(open_coco(root, opts).splits[1].records) == 100


def test_class_groups_in_the_manifest(tmp_path, real):
    out = tmp_path / "voc2007"
    convert("voc2007", real / "voc/VOCdevkit", out, {}, {}, workers=1)
    groups = open_shard_set(out).class_groups()
    assert sorted(set(groups)) == ["animals", "household", "person", "vehicles"]
    assert groups[VOC_CLASSES.index("person")] == "person"
