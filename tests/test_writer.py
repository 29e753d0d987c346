"""The writer: byte-identical output, workers, resume after a kill, size caps, re-encoding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shards.base.errors import WsmlError
from shards.convert.convert import convert
from shards.convert.images import probe_bytes
from shards.shardset import open_shard_set
from tests.support.raw_datasets import REPO, jpeg_bytes, make_coco


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def make_many(root: Path, n: int) -> Path:
    """A COCO-layout set of ``n`` images (few distinct byte strings: fast to make)."""
    pool = [jpeg_bytes(48 + k, 40, k) for k in range(16)]
    (root / "annotations").mkdir(parents=True)
    for split, count, first in (("train", n, 1), ("val", max(1, n // 10), 10**6)):
        (root / split).mkdir()
        images, anns = [], []
        for i in range(count):
            name = f"{split}_{first + i:07d}.jpg"
            (root / split / name).write_bytes(pool[i % 16])
            images.append({"id": first + i, "file_name": name})
            anns.append({"id": len(anns) + 1, "image_id": first + i, "category_id": 1 + i % 3})
        cats = [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return root


def test_converting_twice_gives_identical_bytes(tmp_path, coco_root):
    opts = dict(shard_samples=5)
    convert("coco", coco_root, tmp_path / "a", {}, opts, workers=1)
    convert("coco", coco_root, tmp_path / "b", {}, opts, workers=1)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a == b
    assert sum(k.endswith(".tar") for k in a) >= 5
    assert not any("_progress" in k or "wsml-tmp" in k for k in a)


def test_workers_give_the_same_bytes(tmp_path, coco_root):
    convert("coco", coco_root, tmp_path / "one", {}, dict(shard_samples=4), workers=1)
    convert("coco", coco_root, tmp_path / "two", {}, dict(shard_samples=4), workers=2)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_rerun_on_a_complete_set_is_a_no_op(tmp_path, coco_root):
    out = tmp_path / "s"
    convert("coco", coco_root, out, {}, {}, workers=1)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    logs = []
    convert("coco", coco_root, out, {}, {}, workers=1, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert "nothing to do" in logs[0]
    with pytest.raises(WsmlError, match="already holds a different shard set"):
        convert("coco", coco_root, out, {}, dict(shard_samples=3), workers=1)


def test_resume_after_kill_gives_the_same_bytes(tmp_path):
    root = make_many(tmp_path / "raw", 3000)
    args = ["--dataset", "coco", "--root", str(root), "--shard-samples", "20", "--workers", "1"]
    cmd = [sys.executable, str(REPO / "cli.py"), "shard", *args]
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("train-*.tar"))) < 3:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tars = len(list(out.glob("train-*.tar")))
    assert not (out / "manifest.json").exists(), "finished before the kill: make the set bigger"
    assert 3 <= tars < 150
    with pytest.raises(WsmlError, match="did not finish"):
        open_shard_set(out)  # an interrupted set is never taken for a complete one

    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")


def test_resume_flag_needs_an_interrupted_run(tmp_path, coco_root):
    with pytest.raises(WsmlError, match="no interrupted conversion"):
        convert("coco", coco_root, tmp_path / "new", {}, {}, workers=1, resume=True)


def test_a_half_written_shard_is_rewritten(tmp_path, coco_root):
    ref, out = tmp_path / "ref", tmp_path / "out"
    convert("coco", coco_root, ref, {}, dict(shard_samples=4), workers=1)
    convert("coco", coco_root, out, {}, dict(shard_samples=4), workers=1)
    # make `out` look like a conversion killed while writing train-000002
    (out / "manifest.json").unlink()
    ident = json.loads((ref / "manifest.json").read_text())["identity"]
    (out / "_progress" / "done").mkdir(parents=True)
    (out / "_progress" / "identity.json").write_text(json.dumps({"identity": ident}))
    tar = out / "train-000002.tar"
    tar.write_bytes(tar.read_bytes()[:1000])  # truncated, and no done-marker
    (out / ".train-000003.tar.123.wsml-tmp").write_bytes(b"partial")
    convert("coco", coco_root, out, {}, dict(shard_samples=4), workers=1)
    assert tree_bytes(out) == tree_bytes(ref)


def test_shard_byte_cap(tmp_path, coco_root):
    out = tmp_path / "s"
    convert("coco", coco_root, out, {}, dict(shard_bytes=6000), workers=1)
    m = open_shard_set(out).manifest
    shards = [s for split in m["splits"].values() for s in split["shards"]]
    assert len(shards) > 5
    assert all(s["bytes"] <= 6000 + 10240 or s["num_samples"] == 1 for s in shards)


def test_max_side_reencodes(tmp_path):
    root = make_coco(tmp_path / "raw", n_train=10, n_val=4)
    out = tmp_path / "s"
    convert("coco", root, out, {}, dict(max_side=32, jpeg_quality=80), workers=1)
    ss = open_shard_set(out)
    import webdataset as wds

    for split in ss.splits:
        t = ss.label_table(split).to_pydict()
        ds = wds.WebDataset([str(p) for p in ss.shard_paths(split)], shardshuffle=False)
        for s in ds:
            row = int.from_bytes(s["row"], "little")
            w, h = probe_bytes(s["jpg"])
            assert max(w, h) <= 32 and (w, h) == (t["width"][row], t["height"][row])


def test_val_frac_zero_keeps_all_of_train(tmp_path, coco_root):
    out = tmp_path / "s"
    convert("coco", coco_root, out, {}, dict(val_frac=0.0), workers=1)
    ss = open_shard_set(out)
    assert ss.splits == ["train", "test"] and ss.split("train")["num_samples"] == 24


def test_no_fsync_gives_the_same_bytes(tmp_path, coco_root):
    convert("coco", coco_root, tmp_path / "a", {}, {}, workers=1)
    convert("coco", coco_root, tmp_path / "b", {}, {}, workers=1, fsync=False)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_tar_headers_equal_tarfiles():
    from shards.convert.tar_writer import tar_header, tarfile_header

    names = ["a.jpg", "COCO_train2014_000000480023.row", "x" * 95 + ".jpg", "é.jpg", "k-_9.row"]
    for name in names:
        for size in (0, 1, 511, 512, 123456, 8**11 - 1):
            assert tar_header(name, size) == tarfile_header(name, size)
    long = "d" * 60 + "/" + "x" * 60 + ".jpg"  # > 100 bytes: tarfile splits prefix/name
    assert tar_header(long, 5) == tarfile_header(long, 5)


def test_parts_then_finalize_equal_a_single_run(tmp_path, coco_root):
    opts = dict(shard_samples=3)
    convert("coco", coco_root, tmp_path / "ref", {}, opts, workers=1)
    out = tmp_path / "parts"
    results = [convert("coco", coco_root, out, {}, opts, workers=1, part=(k, 3)) for k in (2, 0)]
    assert {r["part"][0] for r in results} == {0, 2}
    assert not (out / "manifest.json").exists()
    with pytest.raises(WsmlError, match=r"--finalize: \d+ of \d+ shards are not written yet"):
        convert("coco", coco_root, out, {}, opts, workers=1, finalize=True)
    assert not (out / "manifest.json").exists()
    again = convert("coco", coco_root, out, {}, opts, workers=1, part=(0, 3))
    assert again["written"] == 0  # a part's finished shards are kept
    convert("coco", coco_root, out, {}, opts, workers=2, part=(1, 3))
    convert("coco", coco_root, out, {}, opts, workers=1, finalize=True)
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")


def test_finalize_needs_parts(tmp_path, coco_root):
    with pytest.raises(WsmlError, match="--finalize: .* holds no interrupted conversion or parts"):
        convert("coco", coco_root, tmp_path / "new", {}, {}, workers=1, finalize=True)
