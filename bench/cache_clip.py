"""``cli.py bench cache-clip``: images/s of CLIP image embedding, split into its parts: the
loader alone over the split (decode + the model's preprocessing), the model alone on one fixed
batch repeated, and the whole cache run (both overlapped, plus writing the rows)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.harness import time_epochs
from bench.markdown import Table
from models.cache import create_clip_encoder
from models.cache_run import CacheOptions, Encoder, run_cache
from pipelines.distributed import DistContext
from pipelines.loader import LoaderOptions, choose_backend, create_loader, default_threads
from shards import caches
from shards.base.errors import WsmlError
from shards.caches import create_tag
from shards.shardset import ShardSet, open_shard_set

MIN_SECONDS = 0.5  # the model alone repeats its batch at least this long


@dataclasses.dataclass(frozen=True)
class ClipBenchOptions:
    """What ``bench cache-clip`` times for each of ``models`` (``pretrained`` weights; none:
    random, throughput only): the loader alone, the model alone on a fixed batch and the whole
    cache run over ``split`` (``images`` generated photos without a shard set), in batches of
    ``batch_size`` through ``backend`` on ``device``, best of ``repeats``."""

    models: Sequence[str] = ("wsml-tiny-clip", "ViT-B-32")
    pretrained: str = "none"
    images: int = 128
    split: str = "train"
    batch_size: int = 64
    backend: str = "auto"
    device: str = "auto"
    repeats: int = 2


def run_cache_clip_bench(
    shards: str | None,
    opts: ClipBenchOptions = ClipBenchOptions(),
    *,
    workdir: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Images/s of each model's embedding, its loader and the two in series (one table)."""
    from bench.harness import machine_info
    from bench.loader import create_bench_set

    split, batch_size, pretrained = opts.split, opts.batch_size, opts.pretrained
    own = workdir is None and shards is None
    ctx = DistContext.create(opts.device)  # first: a bad device leaves no temp folder behind
    work = Path(tempfile.mkdtemp(prefix="wsml-bench-clip-")) if own else Path(workdir or ".")
    backend = choose_backend(opts.backend)
    try:
        ss = open_shard_set(shards or create_bench_set(work, opts.images))
        n = int(ss.split(split)["num_samples"])
        if n < batch_size:
            raise WsmlError(f"split {split} has {n} images, fewer than a batch of {batch_size}")
        m = machine_info()
        where = "GPU" if ctx.device.type == "cuda" else "CPU"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        echo(
            f"{m.get('cpu', '?')}, {m.get('nproc', '?')} cores (load {load:.1f}), torch "
            f"{torch.get_num_threads()} "
            f"threads; split {split}: {n} images; batch {batch_size}; loader {backend} "
            f"({where}), device {ctx.device}; weights {pretrained}"
        )
        echo(
            f"{'model':<16}{'dim':>5}{'input':>7}{'loader':>10}{'model':>10}{'total':>10}"
            f"{'serial':>10}   (images/s; serial = 1/(1/loader + 1/model))"
        )
        result = {"machine": m, "split": split, "images": n, "batch_size": batch_size}
        result["repeats"] = opts.repeats
        result["backend"], result["device"], result["models"] = backend, str(ctx.device), {}
        for name in opts.models:
            enc = create_clip_encoder(name, pretrained, classes=ss.classes, device=ctx.device)
            enc = dataclasses.replace(enc, tag=create_tag("bench", enc.tag))
            r = _bench_one(ss, enc, ctx, split, batch_size, backend, opts.repeats)
            serial = 1 / (1 / r["loader"] + 1 / r["model"])
            r.update(serial=serial, input=enc.preset.size, dim=enc.dim)
            echo(
                f"{name:<16}{enc.dim:>5}{enc.preset.size:>6}px{r['loader']:>10.1f}"
                f"{r['model']:>10.1f}{r['total']:>10.1f}{serial:>10.1f}"
            )
            result["models"][name] = r
        result["gpu"] = torch.cuda.get_device_name(ctx.device) if where == "GPU" else "no GPU"
        return result
    finally:
        ctx.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)


def cache_clip_tables(r: dict) -> list[Table]:
    """The docs' table: per model images/s of the loader alone, the model alone on a fixed
    batch, and the whole cache run."""
    rows = tuple(
        (f"`{name}`", f"{m['input']} px", str(m["dim"]), f"{m['loader']:,.1f}",
         f"{m['model']:,.1f}", f"{m['total']:,.1f}")
        for name, m in r["models"].items()
    )  # fmt: skip
    caption = (
        f"Split {r['split']}: {r['images']:,} images, batch {r['batch_size']}, loader "
        f"{r['backend']}, device {r['device']}, random weights; images/s, median of "
        f"{r['repeats']}."
    )
    return [Table(("model", "input", "dim", "loader", "model alone", "total"), rows, caption)]


def _bench_one(
    ss: ShardSet,
    enc: Encoder,
    ctx: DistContext,
    split: str,
    batch_size: int,
    backend: str,
    repeats: int,
) -> dict:
    threads = default_threads(1)
    opts = LoaderOptions(device=ctx.device, backend=backend, num_threads=threads)
    loader = create_loader(
        ss, split, regime="full", batch_size=batch_size, preset=enc.preset, train=False,
        labels=False, options=opts,
    )  # fmt: skip
    batch = None

    def read() -> int:
        nonlocal batch
        count = 0
        for b in loader:
            batch = batch if batch is not None else b["image"][: len(b["image"])].clone()
            count += int(b["valid"].sum())
        return count

    def encode() -> int:
        count, t0 = 0, time.perf_counter()
        while count < loader.num_samples or time.perf_counter() - t0 < MIN_SECONDS:
            enc.encode(batch)
            count += len(batch)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        return count

    out = {"loader": time_epochs(read, repeats)["images_per_s"]}
    enc.encode(batch)  # warm-up
    out["model"] = time_epochs(encode, repeats)["images_per_s"]
    # the image phase of a real run (its own timing: no model load, no class texts)
    opts = CacheOptions(splits=(split,), batch_size=batch_size, backend=backend, overwrite=True)
    no_text = dataclasses.replace(enc, text=None)
    out["total"] = statistics.median(
        run_cache(ss, no_text, opts, ctx)["images_per_s"] for _ in range(repeats)
    )
    folder = caches.cache_folder(ss.root, enc.tag)
    caches.remove_cache(folder)
    folder.rmdir()
    if not any(folder.parent.iterdir()):
        folder.parent.rmdir()
    return out
