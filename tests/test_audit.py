"""``cli.py audit``: a planted cross-split duplicate, a near-duplicate, a leaked label and a
class without positives are each found; a clean shard set passes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from PIL import Image

import cli
from shards.fileio import sha256_file
from tests.conftest import shard_cli
from tests.raw_datasets import make_coco


def audit(out: Path):
    return CliRunner().invoke(cli.main, ["audit", str(out), "--workers", "1"])


def coco_files(raw: Path) -> tuple[list[Path], list[Path]]:
    return sorted((raw / "train").glob("*.jpg")), sorted((raw / "val").glob("*.jpg"))


def test_clean_shard_set_passes_and_writes_the_report(tmp_path):
    out = tmp_path / "s"
    assert shard_cli(make_coco(tmp_path / "raw"), out).exit_code == 0
    r = audit(out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "audit.json").read_text())
    assert report["ok"] and report["failures"] == []
    assert report["checks"]["exact_duplicates"]["count"] == 0
    assert "single-positive" in report["checks"]["views"]


def test_planted_duplicate_and_leaked_label_are_flagged(tmp_path):
    raw = make_coco(tmp_path / "raw")
    train, val = coco_files(raw)
    shutil.copy(train[3], val[0])  # the same image in the official train and test splits
    out = tmp_path / "s"
    assert shard_cli(raw, out).exit_code == 0
    view = out / "observed" / "single-positive"
    t = pq.read_table(view / "train.parquet")
    clean = pq.read_table(out / "labels" / "train.parquet")["positives"].to_pylist()
    row = t["row"][0].as_py()
    leaked = next(c for c in range(4) if c not in clean[row])  # another image's label
    positives = t["positives"].to_pylist()
    positives[0] = sorted([*positives[0], leaked])
    t = t.set_column(1, "positives", pa.array(positives, pa.list_(pa.int32())))
    pq.write_table(t, view / "train.parquet")
    meta = json.loads((view / "regime.json").read_text())  # as a buggy preprocessing would
    meta["splits"]["train"]["sha256"] = sha256_file(view / "train.parquet")
    (view / "regime.json").write_text(json.dumps(meta))

    r = audit(out)
    assert r.exit_code == 1, r.output
    assert "same sha256" in r.output and "test/" in r.output
    assert "view single-positive: train: 1 observed positive(s) are not clean" in r.output
    report = json.loads((out / "audit.json").read_text())
    assert not report["ok"] and report["checks"]["exact_duplicates"]["count"] == 1
    ((a, b),) = report["checks"]["exact_duplicates"]["pairs"]
    assert {a["split"], b["split"]} & {"test"} and a["split"] != b["split"]
    assert report["checks"]["tables_and_tars"] == []  # verify alone sees nothing wrong


def test_near_duplicate_and_empty_class_are_warnings(tmp_path):
    raw = make_coco(tmp_path / "raw")
    train, val = coco_files(raw)
    y, x = np.mgrid[0:72, 0:96]  # a picture, and a smaller, more compressed copy of it
    img = np.stack([x * 2, y * 3, x + y], -1).astype(np.uint8)
    img[10:30, 20:50], img[40:60, 60:90] = (250, 30, 30), (20, 20, 200)
    for path, size, quality in ((train[5], (96, 72), 95), (val[1], (80, 60), 60)):
        Image.fromarray(img).resize(size).save(path, format="JPEG", quality=quality)
    for split in ("train", "val"):
        path = raw / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        data["categories"].append({"id": 99, "name": "unicorn", "supercategory": "odd"})
        path.write_text(json.dumps(data))
    out = tmp_path / "s"
    assert shard_cli(raw, out).exit_code == 0
    r = audit(out)
    assert r.exit_code == 0, r.output
    assert "warning: 1 near-duplicate pair(s) across splits" in r.output
    assert "without a positive in train (mAP counts them as 0): unicorn" in r.output
