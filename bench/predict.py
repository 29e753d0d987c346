"""``cli.py bench predict``: images/s of ``predict`` against ``cache-features`` for the same
encoder, preset and images, in one run: the cache writer over a shard split (its own timing, as
``cache-features`` prints it), ``predict`` on a folder of that split's JPEGs and on the split
itself (their own timing, as ``predict`` prints it), and the exported ONNX model under
onnxruntime on the folder's batches, when onnxruntime is installed. The contenders alternate,
``repeats`` rounds, so that a shared machine's drift hits them alike; medians are shown."""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shards.base.errors import WsmlError

CACHE = "cache-features (shard split)"


@dataclasses.dataclass(frozen=True)
class PredictBenchOptions:
    """The encoder (``backbone`` with ``weights``: None for its pretrained ones, ``none``
    random; ``preset``, ``image_size``) as ``cache-features`` takes it, over split ``split`` of
    a generated set of ``images`` photos (or ``--shards``), ``batch_size`` images a batch."""

    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    preset: str = "backbone"
    image_size: int | None = 128
    images: int = 320
    split: str = "train"
    batch_size: int = 64
    repeats: int = 3


def predict_bench_rows(
    shards: str | None, opts: PredictBenchOptions, work: Path, echo: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One row per contender: ``what``, ``images_per_s`` (median), ``runs``, ``vs_cache``."""
    from bench.loader import create_bench_set, extract_folder
    from shards.shardset import open_shard_set

    ss = open_shard_set(shards or create_bench_set(work, opts.images, val_frac=0.2))
    n = int(ss.split(opts.split)["num_samples"])
    if n < opts.batch_size:
        raise WsmlError(f"split {opts.split} has {n} images, fewer than a batch")
    run_dir = _train_head(ss, opts, work)
    folder = extract_folder(ss, opts.split, work / f"predict-folder-{opts.split}")[0].parent
    contenders, tag = _contenders(ss, opts, run_dir, folder, work)
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for _ in range(opts.repeats):
            for name, once in contenders.items():
                runs[name].append(round(once(), 1))
    finally:  # the timed cache, beside the run's own
        from shards import caches

        timed = caches.cache_folder(ss.root, tag)
        if timed.is_dir():
            caches.remove_cache(timed)  # its meta.json first: no reader sees half of it
            shutil.rmtree(timed, ignore_errors=True)
    cache = statistics.median(runs[CACHE])
    rows = []
    for name, rates in runs.items():
        rate = statistics.median(rates)
        rows.append({"what": name, "images_per_s": rate, "runs": rates, "vs_cache": rate / cache})
    return rows


def _train_head(ss, opts: PredictBenchOptions, work: Path) -> Path:
    """A linear run on the encoder's cache (every split cached, one epoch): what predict uses."""
    from models.cache import cache_features
    from train.config import RunConfig
    from train.run import train

    made = cache_features(
        ss.root, backbone=opts.backbone, weights=opts.weights, preset=opts.preset,
        image_size=opts.image_size, device="cpu", batch_size=opts.batch_size,
    )  # fmt: skip
    out = work / "predict-run"
    train(RunConfig(str(ss.root), "an", features=made["tag"], out=str(out), overwrite=True,
                    method_options={"epochs": "1", "batch_size": "8"}))  # fmt: skip
    return out


def _contenders(ss, opts: PredictBenchOptions, run_dir: Path, folder: Path, work: Path):
    """(name -> a function that runs once and returns its images/s, the timed cache's tag)."""
    from models.cache import create_feature_encoder
    from models.cache_run import CacheOptions, run_cache
    from pipelines.distributed import DistContext
    from shards.caches import create_tag
    from train.use.predict import PredictOptions, run_predict

    enc = create_feature_encoder(opts.backbone, weights=opts.weights, preset=opts.preset,
                                 image_size=opts.image_size, device="cpu")  # fmt: skip
    enc = dataclasses.replace(enc, tag=create_tag("bench", enc.tag))  # beside the run's own cache
    ctx = DistContext.create("cpu")
    cache_opts = CacheOptions(splits=(opts.split,), batch_size=opts.batch_size, overwrite=True)
    predicting = PredictOptions(batch_size=opts.batch_size)
    out = work / "predictions.parquet"

    def cache() -> float:
        return run_cache(ss, enc, cache_opts, ctx)["images_per_s"]

    def rate(result) -> float:
        return len(result.names) / result.seconds

    contenders = {
        CACHE: cache,
        "predict FOLDER (the split's JPEG files)": lambda: rate(
            run_predict(run_dir, out, predicting, images=[str(folder)], echo=lambda s: None)
        ),
        "predict --shards (the split)": lambda: rate(
            run_predict(
                run_dir,
                out,
                dataclasses.replace(predicting, shards=str(ss.root)),
                split=opts.split,
                echo=lambda s: None,
            )  # fmt: skip
        ),
    }
    onnx = _onnx_contender(run_dir, folder, opts.batch_size, work)
    if onnx is not None:
        contenders["onnxruntime, exported model (FOLDER, predict's reader)"] = onnx
    return contenders, enc.tag


def _onnx_contender(run_dir: Path, folder: Path, batch_size: int, work: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from pipelines.folder import FolderBatches, list_images
    from pipelines.loader import default_threads
    from train.use.export import export_run
    from train.use.inference import load_network

    path, _ = export_run(run_dir, "onnx", work / "model.onnx", echo=lambda s: None)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    files = list_images([folder])
    preset = load_network(run_dir).preset

    def once() -> float:
        t0 = time.perf_counter()
        reader = FolderBatches(files, preset, batch_size, workers=default_threads(1))
        for batch in reader:
            session.run(None, {"images": batch["image"].contiguous().numpy()})
        return len(files) / (time.perf_counter() - t0)

    return once


def run_predict_bench(
    shards: str | None,
    opts: PredictBenchOptions = PredictBenchOptions(),
    *,
    workdir: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Print the rows with the machine they ran on; the predict rows' ratio to cache-features."""
    import torch

    from bench.harness import machine_info

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="wsml-bench-predict-")) if own else Path(workdir)
    try:
        rows = predict_bench_rows(shards, opts, work, echo)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    m = machine_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    echo(
        f"{m.get('cpu', '?')}, {m.get('nproc', '?')} cores (load {load:.1f}), torch "
        f"{torch.get_num_threads()} threads; {opts.backbone} ({opts.preset}"
        f"{opts.image_size or ''}), split {opts.split}, batch {opts.batch_size}, "
        f"{opts.repeats} alternating rounds"
    )
    echo(f"{'':<58}{'images/s':>10}{'vs cache':>10}   runs")
    for r in rows:
        echo(f"{r['what']:<58}{r['images_per_s']:>10.1f}{r['vs_cache']:>9.2f}x   {r['runs']}")
    return rows


def predict_tables(rows: list[dict[str, Any]], opts: PredictBenchOptions) -> list:
    """The docs' table: each contender's images/s (median of the rounds) and its ratio to
    cache-features."""
    from bench.markdown import Table

    size = f"{opts.preset} {opts.image_size}" if opts.image_size else opts.preset
    caption = (
        f"{opts.backbone} ({size} px), split {opts.split}, batch {opts.batch_size}, float32 on "
        f"the CPU; median of {opts.repeats} alternating rounds."
    )
    cells = tuple((r["what"], f"{r['images_per_s']:,.1f}", f"{r['vs_cache']:.2f}×") for r in rows)
    return [Table(("contender", "images/s", "vs cache-features"), cells, caption)]
