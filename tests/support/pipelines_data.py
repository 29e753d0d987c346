"""The tiny shard set the pipeline tests share, and the checks they share (in-process and under
torchrun): one COCO-layout dataset with images of odd sizes and aspect ratios (so presets both
upscale and downscale), converted by the real ``cli.py shard`` into several small shards."""

from __future__ import annotations

import functools
import json
import math
import struct
from collections import Counter
from pathlib import Path

import numpy as np

# imported here, in the parent process, because the presets and the fallback import torchvision
# lazily: in a process that has not, every epoch's fresh DataLoader workers import it again
# (about 3.7 s an epoch on this machine, most of it torch._dynamo)
import torchvision  # noqa: F401

from pipelines.dali_loader import dali_available
from pipelines.loader import LoaderOptions, create_loader
from pipelines.presets import center_crop_preset
from shards.caches import write_cache
from tests.support.cli_checks import shard_cli
from tests.support.raw_datasets import jpeg_bytes, make_coco

# official train 61 -> train 49 + val 12; official val 19 -> test 19; 9 samples a shard
N_TRAIN, N_VAL, N_TEST = 49, 12, 19
SHARD_SAMPLES = 9
REGIME = "single-positive"
TAG = "toy-emb"  # the embeddings cache written beside the set
EMB_DIM = 6
# (w, h): thin, tall, tiny, square, larger than every preset's output
SIZES = [(40, 30), (500, 380), (300, 620), (61, 47), (449, 449), (230, 170), (96, 512), (700, 90)]
# DALI is a dependency on Linux x86_64; elsewhere its tests are skipped, the fallback's run
HAVE_DALI = dali_available()
BACKENDS = ["dali", "torch"] if HAVE_DALI else ["torch"]

_built: dict[str, Path] = {}


def get_shard_set(tmp_path_factory) -> Path:
    """The shard set, built once per test session (read-only: copy it before damaging it)."""
    if "root" not in _built:
        _built["root"] = build_shard_set(tmp_path_factory.mktemp("pipelines"))
    return _built["root"]


def build_shard_set(base: Path) -> Path:
    raw = make_coco(base / "raw", n_train=N_TRAIN + N_VAL, n_val=N_TEST, num_classes=5, seed=7)
    k = 0
    for split in ("train", "val"):
        ann = raw / "annotations" / f"instances_{split}.json"
        data = json.loads(ann.read_text())
        for im in data["images"]:
            w, h = SIZES[k % len(SIZES)]
            k += 1
            (raw / split / im["file_name"]).write_bytes(jpeg_bytes(w, h, im["id"]))
            im["width"], im["height"] = w, h
        ann.write_text(json.dumps(data))
    out = base / "shards"
    extra = ["--shard-samples", str(SHARD_SAMPLES), "--regime", REGIME, "--no-fsync"]
    result = shard_cli(raw, out, *extra)
    assert result.exit_code == 0, result.output
    write_cache(out, TAG, {s: embeddings(s) for s in ("train", "val", "test")}, model="toy")
    return out


# A 32x32 preset (resize the shorter side, centre crop) for the tests that do not look at the
# pictures, so that an epoch costs little more than building the pipeline; the registered
# presets are tested on their own in test_pipelines.py.
TINY = 32
TINY_PRESET = center_crop_preset(TINY, interpolation="bilinear", name="tiny32")


def open_loader(root, split: str, **kw):
    """``create_loader`` with ``LoaderOptions``' fields given among its keywords (the tests
    vary both in one table)."""
    fields = set(LoaderOptions.__dataclass_fields__)
    options = LoaderOptions(**{k: v for k, v in kw.items() if k in fields})
    return create_loader(root, split, **{k: v for k, v in kw.items() if k not in fields},
                         options=options)  # fmt: skip


def embeddings(split: str) -> np.ndarray:
    """Known per-row values (float16-exact) for the cache: row r of ``split``."""
    n = {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}[split]
    seed = {"train": 1, "val": 2, "test": 3}[split]
    return np.random.default_rng(seed).normal(size=(n, EMB_DIM)).astype(np.float16)


@functools.cache
def stored_rows(root: Path, split: str) -> tuple[int, ...]:
    """The row of every sample in the split's tars, in stored (concatenated) order, read with
    webdataset: a rank's share ``[start, end)`` holds ``stored_rows(...)[start:end]``."""
    import webdataset as wds

    from shards.shardset import open_shard_set

    paths = [str(p) for p in open_shard_set(root).shard_paths(split)]
    ds = wds.WebDataset(paths, shardshuffle=False, empty_check=False)
    return tuple(struct.unpack("<q", s["row"])[0] for s in ds)


def share_rows(
    stored: tuple[int, ...], rank: int, world: int, epoch: int, train: bool
) -> list[int]:
    """The rows DALI's reader shards give a rank: shard ``i`` of ``W`` holds samples
    ``[i N / W, (i + 1) N / W)``; training rotates the shard every epoch."""
    shard = (rank + epoch) % world if train else rank
    n = len(stored)
    return stored[shard * n // world : (shard + 1) * n // world]


def expected_batches(n: int, batch: int, world: int, train: bool) -> int:
    if train:
        return (n // world) // batch
    return math.ceil(math.ceil(n / world) / batch)


def check_train_epoch(ranks: list[dict], stored: tuple[int, ...], epoch: int, batch: int) -> None:
    """``ranks[r]``: {"len", "rows": [[...] per batch], "valid": [[...] per batch]} of one epoch."""
    world, n = len(ranks), len(stored)
    want = expected_batches(n, batch, world, True)
    seen: list[int] = []
    for rank, got in enumerate(ranks):
        assert got["len"] == len(got["rows"]) == want, (rank, got["len"], len(got["rows"]))
        assert all(len(b) == batch for b in got["rows"]), "train yields only full batches"
        assert all(all(v) for v in got["valid"]), "train batches hold no padding"
        rows = [r for b in got["rows"] for r in b]
        assert len(set(rows)) == len(rows), f"rank {rank} sees a row twice in one epoch"
        share = share_rows(stored, rank, world, epoch, True)
        assert set(rows) <= set(share), f"rank {rank} reads outside its share"
        seen += rows
    assert len(set(seen)) == len(seen), "ranks overlap within an epoch"


def check_eval_epoch(ranks: list[dict], stored: tuple[int, ...], batch: int) -> None:
    """Every row of the split once across ranks (valid samples), padding marked invalid."""
    world, n = len(ranks), len(stored)
    want = expected_batches(n, batch, world, False)
    valid_rows: list[int] = []
    for rank, got in enumerate(ranks):
        assert got["len"] == len(got["rows"]) == want, (rank, got["len"], len(got["rows"]))
        assert all(len(b) == batch for b in got["rows"]), "eval pads its last batch"
        share = share_rows(stored, rank, world, 0, False)
        flat_valid = [v for b in got["valid"] for v in b]
        # the rank's share first, then padding only
        assert flat_valid == [True] * len(share) + [False] * (want * batch - len(share))
        mine = [
            r
            for b, v in zip(got["rows"], got["valid"], strict=True)
            for r, ok in zip(b, v, strict=True)
            if ok
        ]
        assert sorted(mine) == sorted(share)
        valid_rows += mine
    counts = Counter(valid_rows)
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}
