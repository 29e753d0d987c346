"""Tests of the digits demo dataset: valid COCO, deterministic, structured labels, safe reruns."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.base.errors import WsmlError
from shards.synth.digits import write_demo_data
from shards.synth.paint import NAMES, SCENES

SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "digits"
    return out, write_demo_data(out, n_train=60, n_val=20, size=96, seed=3)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_large")
    write_demo_data(out, n_train=600, n_val=20, size=48, seed=0)
    return out


def load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def label_sets(doc: dict) -> dict[int, list[int]]:
    """Per image id: the category ids of its boxes (repeats kept)."""
    boxes: dict[int, list[int]] = {img["id"]: [] for img in doc["images"]}
    for ann in doc["annotations"]:
        boxes[ann["image_id"]].append(ann["category_id"])
    return boxes


def all_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_json_is_valid_coco(small: tuple[Path, dict]) -> None:
    out, summary = small
    image_ids: set[int] = set()
    for split in SPLITS:
        doc = load(out, split)
        assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
        assert [c["id"] for c in doc["categories"]] == list(range(1, 11))
        assert [c["name"] for c in doc["categories"]] == list(NAMES)
        assert [c["supercategory"] for c in doc["categories"]] == ["even", "odd"] * 5
        images = {img["id"]: img for img in doc["images"]}
        assert len(images) == len(doc["images"]) == summary["splits"][split]["images"]
        assert not image_ids & set(images), "train and val image ids overlap"
        image_ids |= set(images)
        ann_ids = [ann["id"] for ann in doc["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) == summary["splits"][split]["annotations"]
        for ann in doc["annotations"]:
            img = images[ann["image_id"]]
            assert 1 <= ann["category_id"] <= 10
            x, y, w, h = ann["bbox"]
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] == pytest.approx(w * h)
            assert ann["iscrowd"] == 0 and ann["segmentation"] == []
        assert all(label_sets(doc).values()), "an image without annotations"
        for img in doc["images"]:
            assert re.fullmatch(r"[A-Za-z0-9_-]+\.jpg", img["file_name"])
            with Image.open(out / split / img["file_name"]) as pic:
                assert pic.format == "JPEG" and pic.mode == "RGB"
                assert pic.size == (img["width"], img["height"]) == (96, 96)
                pic.load()
    assert summary["classes"] == list(NAMES)
    assert summary["out"] == str(out) and summary["written"] is True


def test_writing_twice_gives_identical_bytes(tmp_path: Path) -> None:
    first = all_files(Path(write_demo_data(tmp_path / "a", n_train=30, n_val=10, seed=5)["out"]))
    second = all_files(Path(write_demo_data(tmp_path / "b", n_train=30, n_val=10, seed=5)["out"]))
    assert len(first) == 30 + 10 + 2
    assert first == second
    other = all_files(Path(write_demo_data(tmp_path / "c", n_train=30, n_val=10, seed=6)["out"]))
    assert other != first


def test_labels_are_structured(large: Path) -> None:
    for split in SPLITS:
        for cats in label_sets(load(large, split)).values():
            assert 1 <= len(set(cats)) <= len(cats) <= 4
        present = {c for cats in label_sets(load(large, split)).values() for c in cats}
        assert present == set(range(1, 11)), f"{split} lacks a class"
    y = np.zeros((600, 10), dtype=bool)
    for row, cats in enumerate(label_sets(load(large, "train")).values()):
        y[row, np.array(cats) - 1] = True
    rate = y.mean(0)
    observed = (y[:, :, None] & y[:, None, :]).sum(0)
    expected = len(y) * np.outer(rate, rate)  # under independence
    z = (observed - expected) / np.sqrt(expected)
    assert max(z[a, b] for a, b in combinations(range(10), 2)) > 3.0, "no pair above chance"
    groups = [set(g) for _, g, _ in SCENES if g]
    within = [(a, b) for a, b in combinations(range(10), 2) if any({a, b} <= g for g in groups)]
    across = [(a, b) for a, b in combinations(range(10), 2) if 2 not in (a, b)]
    across = [p for p in across if p not in within]
    seen_within, chance_within = (sum(m[p] for p in within) for m in (observed, expected))
    seen_across, chance_across = (sum(m[p] for p in across) for m in (observed, expected))
    assert (seen_within - chance_within) / np.sqrt(chance_within) > 4.0  # pooled z-score
    assert seen_within > 1.3 * chance_within and seen_across < 0.6 * chance_across
    assert rate.max() > 2 * rate.min(), "no class imbalance"


def test_second_call_is_a_no_op(small: tuple[Path, dict]) -> None:
    out, summary = small
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = write_demo_data(out, n_train=60, n_val=20, size=96, seed=3)
    assert again == {**summary, "written": False}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_other_content_raises(small: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = small
    with pytest.raises(WsmlError, match="not empty"):
        write_demo_data(out, n_train=61, n_val=20, size=96, seed=3)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WsmlError, match="not empty"):
        write_demo_data(tmp_path, n_train=10, n_val=10)
    with pytest.raises(WsmlError, match="not a folder"):
        write_demo_data(tmp_path / "notes.txt", n_train=10, n_val=10)
    with pytest.raises(WsmlError, match="n_val"):
        write_demo_data(tmp_path / "new", n_val=0)


def test_interrupted_run_is_written_again(tmp_path: Path) -> None:
    reference = all_files(Path(write_demo_data(tmp_path / "ref", n_train=12, n_val=10)["out"]))
    out = tmp_path / "cut"
    write_demo_data(out, n_train=12, n_val=10)
    (out / "annotations" / "instances_val.json").unlink()
    (out / "train" / "digits_train_000003.jpg").write_bytes(b"half")
    assert write_demo_data(out, n_train=12, n_val=10)["written"] is True
    assert all_files(out) == reference
