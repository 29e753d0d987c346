"""``cli.py shard`` says what happened: an empty split or a train split without a label is
refused naming the split, one file under two ids is reported, missing images are counted per
official split with the table that lists them."""

from __future__ import annotations

import json
import os

from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.raw_datasets import make_coco


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


def test_resume_refuses_a_source_changed_since(tmp_path):
    from shards.convert.convert import convert

    root = make_coco(tmp_path / "coco", n_train=6, n_val=3)
    out = tmp_path / "out"
    convert("coco", root, out, {}, {"shard_samples": 2}, workers=1, part=(0, 2))  # unfinished
    image = sorted((root / "val").glob("*.jpg"))[1]
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF  # the same size, other pixels (and a new mtime)
    image.write_bytes(bytes(data))
    os.utime(image, ns=(1, 1))
    result = shard_cli(root, out, "--shard-samples", "2")
    assert_refused(result, str(image), "--overwrite", "official split val", out=out, fresh=False)
    assert not (out / "manifest.json").exists()
    result = shard_cli(root, out, "--shard-samples", "2", "--overwrite")
    assert result.exit_code == 0, result.output
