"""The tiny shard set the training tests share: the embedded digits demo (train 160, val 40,
test 60 images, 10 classes) converted by the real converter, with cached "features" that carry
the labels (no encoder runs), a CLIP-like cache with class-text embeddings (and a 2 x 2 grid of
tiles of every training image, as ``cache-clip --crops grid2`` stores them), a cache of another
dimension and one of NaNs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shards.caches import write_cache
from shards.convert.convert import convert
from shards.shardset import open_shard_set
from shards.synth.digits import write_demo_data

FEAT, CLIP, WIDE = "feat", "clip", "wide"  # cache tags
DIMS = {FEAT: 24, CLIP: 16, WIDE: 40}
NAN = "nan"  # features that make every loss non-finite
_built: dict[str, Path] = {}


def get_shards(tmp_path_factory) -> Path:
    """Built once per session (read-only: tests write their runs elsewhere)."""
    if "root" not in _built:
        base = tmp_path_factory.mktemp("train-shards")
        write_demo_data(base / "raw", n_train=200, n_val=60, size=32)
        convert("coco", base / "raw", base / "shards", {}, {}, workers=1, fsync=False)
        add_caches(base / "shards")
        _built["root"] = base / "shards"
    return _built["root"]


def add_caches(root: Path) -> None:
    ss = open_shard_set(root)
    rng = np.random.default_rng(0)
    for tag, dim in DIMS.items():
        proj = rng.normal(size=(len(ss.classes), dim))
        arrays = {}
        for split in ss.splits:
            y = (ss.full_labels(split) == 1).astype(np.float64)
            x = y @ proj + 1.5 * rng.normal(size=(len(y), dim))
            arrays[split] = x / np.linalg.norm(x, axis=1, keepdims=True)
        text = proj + 0.3 * rng.normal(size=proj.shape) if tag == CLIP else None
        crops = None
        if tag == CLIP:  # each tile sees the image's labels, or none of them (own generator)
            tiles = np.random.default_rng(1)
            seen = (tiles.random((len(arrays["train"]), 4, 1)) < 0.6) * arrays["train"][:, None]
            crops = {"train": seen + 0.5 * tiles.normal(size=seen.shape)}
        write_cache(root, tag, arrays, text=text, model=f"toy-{tag}", crops=crops)
    broken = {s: np.full((len(ss.full_labels(s)), 4), np.nan) for s in ss.splits}
    write_cache(root, NAN, broken, model="toy-nan")


def read_metrics(run: Path, drop_time: bool = True) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if drop_time:
            line.pop("time")
    return lines


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# -- e2e runs with DALI whose training batches are recorded (resume tests) ----------------------

# 160 training rows in batches of 24: 6 steps of the reader's 7-batch epoch (one dropped); over
# two ranks 80 rows each in local batches of 12: 6 of 7 as well
E2E_DALI = {"epochs": "3", "lr": "1e-3", "batch_size": "24", "warmup_epoch": "1"}


def dali_config(shards, out, **kw):
    """EM+APL (label state and an eval pass over the training split each epoch) end to end on
    test_resnet at 32 px, images from DALI's CPU graph."""
    from train.config import RunConfig

    opts = {**E2E_DALI, "stop_patience": "0"}
    return RunConfig(
        str(shards), "em-apl", setting="e2e", backbone="test_resnet", weights="none",
        image_size=32, loader="dali", out=str(out), method_options=opts, **kw,
    )  # fmt: skip


def train_recording(config) -> tuple[dict, list, object]:
    """``train(config)`` as cli.py runs it, recording (epoch, rows, images) of each training
    batch as the loop takes it; returns (summary, batches, the run)."""
    from train.build import start_run
    from train.context import Context, cpu_threads
    from train.loop import fit
    from train.plan import plan_run

    plan = plan_run(config)
    ctx = Context.create(config.device)
    seen = []
    try:
        run = start_run(plan, ctx)
        batches = run.data.train_batches

        def recorded(epoch):
            for batch in batches(epoch):
                seen.append((epoch, batch["row"].tolist(), batch["input"].clone()))
                yield batch

        run.data.train_batches = recorded
        with cpu_threads(1):
            summary = fit(run, ctx)
    finally:
        ctx.close()
    return summary, seen, run


def same_batches(a: list, b: list) -> bool:
    """The same epochs, rows and pixels, batch by batch."""
    import torch

    return [x[:2] for x in a] == [x[:2] for x in b] and all(
        torch.equal(x[2], y[2]) for x, y in zip(a, b, strict=True)
    )
