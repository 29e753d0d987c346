"""``cli.py audit``: a planted cross-split duplicate, copies (a JPEG re-encode, a 1-pixel resize),
a look-alike, a leaked label and a class without positives are each found and located (split,
row, key, classes); a clean shard set passes; the image hashes are computed from the tars once
and cached by each shard's sha256."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from shards.base.fileio import sha256_file
from shards.image_hashes import HASH_DIR
from tests.support.cli_checks import shard_cli
from tests.support.raw_datasets import REAL_COCO, make_coco


def audit(out: Path, *extra: str):
    return CliRunner().invoke(cli.main, ["audit", str(out), "--workers", "1", *extra])


def coco_files(raw: Path) -> tuple[list[Path], list[Path]]:
    return sorted((raw / "train").glob("*.jpg")), sorted((raw / "val").glob("*.jpg"))


def table(out: Path, split: str) -> pa.Table:
    return pq.read_table(out / "labels" / f"{split}.parquet")


def where(out: Path, raw: Path, path: Path) -> dict:
    """The split, row and key a raw image went to."""
    rel = path.relative_to(raw).as_posix()
    for split in ("train", "val", "test"):
        paths = table(out, split)["path"].to_pylist()
        if rel in paths:
            row = paths.index(rel)
            return {"split": split, "row": row, "key": table(out, split)["key"][row].as_py()}
    raise AssertionError(f"{rel} is in no split")


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo() -> Image.Image:
    """A photo-like picture: gradients, discs of colour and sensor noise (320x240)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    img = np.stack([x * 0.7, y * 1.0, (x + y) * 0.4], -1)
    for _ in range(12):
        cx, cy, r = rng.integers(0, 320), rng.integers(0, 240), rng.integers(10, 60)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def test_clean_shard_set_passes_and_the_hashes_are_cached_by_shard(tmp_path):
    out = tmp_path / "s"
    assert shard_cli(make_coco(tmp_path / "raw"), out).exit_code == 0
    assert "image_sha256" not in table(out, "train").column_names  # shard computes no hash
    r = audit(out)
    assert r.exit_code == 0, r.output
    assert "image hashes: computed from the tars for 32 images in 3 shard(s)" in r.output
    report = json.loads((out / "audit.json").read_text())
    assert report["ok"] and report["failures"] == []
    assert report["checks"]["duplicates"] == {
        "exact": 0, "near_fail": 0, "near_warn": 0, "near_warn_within_fail_bits": 0}  # fmt: skip
    assert "single-positive" in report["checks"]["views"]
    cached = sorted(p.name for p in (out / HASH_DIR).iterdir())
    assert cached == ["test-000000.npz", "train-000000.npz", "val-000000.npz"]

    again = audit(out)  # unchanged shards: nothing hashed again, the same report
    assert again.exit_code == 0 and "image hashes: from the cache" in again.output
    assert json.loads((out / "audit.json").read_text())["findings"] == report["findings"]

    # A cache entry of other bytes than the shard's (a rewritten shard) is computed again.
    stale = out / HASH_DIR / "val-000000.npz"
    with np.load(stale) as z:
        fields = dict(z)
    np.savez(stale, **{**fields, "tar_sha256": np.array("0" * 64)})
    r = audit(out)
    assert "computed from the tars for" in r.output and "in 1 shard(s)" in r.output
    with np.load(stale) as z:
        assert str(z["tar_sha256"]) == sha256_file(out / "val-000000.tar")
    (out / HASH_DIR / "test-000000.npz").write_bytes(b"PK\x03\x04 not a zip")  # a torn file
    r = audit(out)
    assert r.exit_code == 0 and "in 1 shard(s)" in r.output
    assert json.loads((out / "audit.json").read_text())["findings"] == report["findings"]


def test_planted_duplicate_and_leaked_label_are_located(tmp_path):
    raw = make_coco(tmp_path / "raw")
    train, val = coco_files(raw)
    shutil.copy(train[3], val[0])  # the same image in the official train and test splits
    out = tmp_path / "s"
    assert shard_cli(raw, out).exit_code == 0
    view = out / "observed" / "single-positive"
    t = pq.read_table(view / "train.parquet")
    clean = table(out, "train")["positives"].to_pylist()
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
    key = table(out, "train")["key"][row].as_py()
    names = [f"class{c}" for c in clean[row]]
    line = (f"FAIL view single-positive: train row {row} (key {key}; {', '.join(names)}): "
            f"observed positive that is not a clean positive: class{leaked}")  # fmt: skip
    assert line in r.output
    report = json.loads((out / "audit.json").read_text())
    assert not report["ok"] and report["checks"]["duplicates"]["exact"] == 1
    (dup,) = [f for f in report["findings"] if f["check"] == "duplicate"]
    copy, original = where(out, raw, val[0]), where(out, raw, train[3])
    assert {k: dup[k] for k in copy} == copy and dup["severity"] == "fail"
    assert {k: dup["other"][k] for k in original} == original
    assert dup["classes"] == [
        f"class{c}" for c in table(out, "test")["positives"][copy["row"]].as_py()
    ]
    views = [f for f in report["findings"] if f["check"] == "view"]
    (leak,) = [f for f in views if f["what"].startswith("observed positive")]
    assert (leak["split"], leak["row"], leak["key"], leak["labels"]) == (
        "train",
        row,
        key,
        [f"class{leaked}"],
    )
    assert report["checks"]["tables_and_tars"] == []  # verify alone sees nothing wrong


def planted_copies(tmp_path: Path, original: bytes) -> tuple[Path, Path, list[Path]]:
    """``original`` as a train image, its JPEG quality-50 re-encode and a copy 1 pixel narrower
    as two test images; returns (raw, out, [original, re-encode, resize])."""
    raw = make_coco(tmp_path / "raw")
    train, val = coco_files(raw)
    im = Image.open(io.BytesIO(original)).convert("RGB")
    train[5].write_bytes(original)
    val[1].write_bytes(jpeg(im, 50))
    val[2].write_bytes(jpeg(im.resize((im.width - 1, im.height), Image.Resampling.BICUBIC)))
    out = tmp_path / "s"
    assert shard_cli(raw, out).exit_code == 0
    return raw, out, [train[5], val[1], val[2]]


@pytest.mark.parametrize("source", ["photo-like", "real COCO photo"])
def test_a_reencoded_and_a_resized_copy_fail_the_audit(tmp_path, source):
    if source == "photo-like":
        original = jpeg(photo(), 92)
    else:
        path = REAL_COCO / "val2014" / "COCO_val2014_000000000294.jpg"
        if not path.is_file():
            pytest.skip(f"real fixtures not found at {path}")
        original = path.read_bytes()
    raw, out, (orig, q50, narrower) = planted_copies(tmp_path, original)
    r = audit(out)
    assert r.exit_code == 1, r.output
    assert "2 near-duplicate pair(s) across splits (copies" in r.output
    report = json.loads((out / "audit.json").read_text())
    pairs = [f for f in report["findings"] if f["check"] == "near-duplicate"]
    located = {(f["split"], f["row"], f["key"], f["other"]["key"]) for f in pairs}
    o = where(out, raw, orig)
    assert located == {(c["split"], c["row"], c["key"], o["key"])
                       for c in (where(out, raw, q50), where(out, raw, narrower))}  # fmt: skip
    assert all(f["severity"] == "fail" and f["bits"] <= 2 and f["fine_bits"] <= 24 for f in pairs)
    assert all(f["other"]["split"] == o["split"] and f["classes"] for f in pairs)


def look_alikes() -> tuple[bytes, bytes]:
    """Two pictures with one layout and opposite fine checkers: their 64-bit hashes lie 2 bits
    apart (like the demo's digits on one background), their 256-bit hashes far apart."""
    y, x = np.mgrid[0:72, 0:96]
    base = np.stack([x * 2, y * 3, x + y], -1).astype(float)
    base[10:30, 20:50], base[40:60, 60:90] = (250, 30, 30), (20, 20, 200)
    checker = 10 * (np.sin(2 * np.pi * 6 * x / 96) * np.sin(2 * np.pi * 6 * y / 72))[..., None]
    a, b = (np.clip(base + s * checker, 0, 255).astype(np.uint8) for s in (1, -1))
    return jpeg(Image.fromarray(a)), jpeg(Image.fromarray(b))


def test_a_look_alike_and_an_empty_class_are_warnings(tmp_path):
    raw = make_coco(tmp_path / "raw")
    train, val = coco_files(raw)
    a, b = look_alikes()
    train[5].write_bytes(a)
    val[1].write_bytes(b)
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
    report = json.loads((out / "audit.json").read_text())
    (pair,) = [f for f in report["findings"] if f["check"] == "near-duplicate"]
    assert (pair["severity"], pair["bits"]) == ("warn", 2) and pair["fine_bits"] > 24
    assert report["checks"]["duplicates"]["near_warn_within_fail_bits"] == 1
    assert (pair["key"], pair["other"]["key"]) == (where(out, raw, val[1])["key"],
                                                   where(out, raw, train[5])["key"])  # fmt: skip
    # Without the second test (--near-dup-fine-bits 256), the pair at 2 bits fails.
    assert audit(out, "--near-dup-fine-bits", "256").exit_code == 1


def test_the_fail_limit_cannot_exceed_the_warn_limit(tmp_path):
    r = audit(tmp_path, "--near-dup-bits", "2", "--near-dup-fail-bits", "3")
    assert r.exit_code == 2 and "--near-dup-fail-bits" in r.output


def test_a_shard_set_with_hashes_in_its_tables_still_audits(tmp_path):
    """Shard sets written while ``shard`` hashed images keep ``image_sha256``/``phash`` columns:
    their audit reads the tars the same way and finds the same."""
    raw = make_coco(tmp_path / "raw")
    train, val = coco_files(raw)
    shutil.copy(train[3], val[0])
    out = tmp_path / "s"
    assert shard_cli(raw, out).exit_code == 0
    first = audit(out)
    manifest = json.loads((out / "manifest.json").read_text())
    for split, entry in manifest["splits"].items():  # as the first audit's shard wrote them
        t = table(out, split)
        t = t.append_column("image_sha256", pa.array(["0" * 64] * len(t)))
        t = t.append_column("phash", pa.array([0] * len(t), pa.uint64()))
        pq.write_table(t, out / entry["labels"]["path"])
        entry["labels"]["sha256"] = sha256_file(out / entry["labels"]["path"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(out / HASH_DIR)
    r = audit(out)
    assert r.exit_code == first.exit_code == 1 and "1 image(s) in two splits" in r.output
    assert r.output == first.output


def test_files_the_manifest_does_not_list_fail_verify_and_audit(tmp_path):
    """Another writer's shards in the folder (two ``shard`` runs on one --out, say) are named,
    though nothing reads them: the folder is not what its manifest says."""
    out = tmp_path / "s"
    assert shard_cli(make_coco(tmp_path / "raw"), out).exit_code == 0
    assert CliRunner().invoke(cli.main, ["verify", str(out), "--workers", "1"]).exit_code == 0
    shutil.copy(out / "train-000000.tar", out / "train-000007.tar")
    (out / "observed" / "partial-p0.5").mkdir()
    (out / "observed" / "partial-p0.5" / "train.parquet").write_bytes(b"PAR1")
    (out / "README.txt").write_text("the user's own notes")  # not a name the writer owns
    r = CliRunner().invoke(cli.main, ["verify", str(out), "--workers", "1"])
    assert r.exit_code == 1
    assert f"{out / 'train-000007.tar'}: not listed in the manifest" in r.output
    assert f"{out / 'observed/partial-p0.5/train.parquet'}: not listed in the manifest" in r.output
    assert "README" not in r.output and "2 problem(s)" in r.output
    r = audit(out)
    assert r.exit_code == 1 and "train-000007.tar: not listed in the manifest" in r.output
    (out / "train-000007.tar").unlink()
    shutil.rmtree(out / "observed" / "partial-p0.5")
    assert audit(out).exit_code == 0  # audit.json and image-hashes/ are the audit's own
    assert CliRunner().invoke(cli.main, ["verify", str(out), "--workers", "1"]).exit_code == 0


def test_a_split_row_with_other_labels_is_located(tmp_path):
    out = tmp_path / "s"
    assert shard_cli(make_coco(tmp_path / "raw"), out).exit_code == 0
    t = table(out, "test")
    positives = t["positives"].to_pylist()
    extra = next(c for c in range(4) if c not in positives[2])
    positives[2] = sorted([*positives[2], extra])  # row 2 scored against a label it lacks
    col = t.column_names.index("positives")
    t = t.set_column(col, "positives", pa.array(positives, pa.list_(pa.int32())))
    pq.write_table(t, out / "labels" / "test.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["test"]["labels"]["sha256"] = sha256_file(out / "labels" / "test.parquet")
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = audit(out)
    assert r.exit_code == 1 and "split labels: test: positives differ" in r.output
    report = json.loads((out / "audit.json").read_text())
    (found,) = [f for f in report["findings"] if f["check"] == "split-labels"]
    key = t["key"][2].as_py()
    assert (found["split"], found["row"], found["key"]) == ("test", 2, key)
    assert found["differing"] == [f"class{extra}"] and f"class{extra}" in found["classes"]
