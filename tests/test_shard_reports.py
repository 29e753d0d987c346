"""``cli.py shard`` says what happened: an empty split or a train split without a label is
refused naming the split, one file under two ids is reported, missing images are counted per
official split with the table that lists them."""

from __future__ import annotations

import json

from tests.conftest import assert_refused, make_coco, shard_cli


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_an_empty_split_is_refused_naming_it(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=6, n_val=3)
    ann = root / "annotations" / "instances_val.json"
    _edit_json(ann, lambda d: d.update(images=[], annotations=[]))
    out = tmp_path / "out"
    line = assert_refused(shard_cli(root, out), "official split val", str(root), out=out)
    assert "no images" in line


def test_a_train_split_without_any_label_is_refused(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=6, n_val=3)
    _edit_json(root / "annotations" / "instances_train.json", lambda d: d.update(annotations=[]))
    out = tmp_path / "out"
    assert_refused(shard_cli(root, out), "official split train", "no images", out=out)
    result = shard_cli(root, out, "-o", "keep_empty=true")  # the images, without any label
    assert_refused(result, "train split (5 images", "positive label", out=out)


def test_one_file_under_two_ids_is_reported(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=6, n_val=3)

    def share(d):
        d["images"][1]["file_name"] = d["images"][0]["file_name"]

    _edit_json(root / "annotations" / "instances_train.json", share)
    result = shard_cli(root, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "1 image file(s) are listed under more than one id" in result.output
    assert "img_train_000001.jpg (ids train:1, train:2)" in result.output
