"""Resumable, multi-process writing of an embedding cache beside a shard set.

Each split is cut into C contiguous chunks with the loader's own rank sharding (chunk c is
``create_loader(train=False)`` with ``LoaderOptions(rank=c, world_size=C)``, about
``chunk_size`` rows). A chunk's embeddings, in row order, go to a file of their own
(``shards.cache_writer.write_chunk``), so no two processes, or machines, ever write one
file; a chunk is done once its file exists, and a rerun with the same settings skips those.
Under torchrun rank r takes its contiguous W-th of the chunks still to do, so one loader
reads a split's consecutive chunks as the shards of one walking DALI graph (built once, its
reader moving on to the next chunk by itself); rank 0 prepares the folder (reserving
the arrays' space) and, when every chunk is done, assembles the arrays from the chunks and
writes ``meta.json`` last (``shards.cache_writer``, the only writer: this module holds the
chunk loop). With ``crops`` (``cache-clip --crops``, ``models/cache_crops.py``) a second pass
over the training split writes its tiles' embeddings the same way, to arrays of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipelines.distributed import DistContext
from pipelines.loader import LoaderOptions, choose_backend, create_loader, default_threads
from pipelines.presets import Preset
from pipelines.sharding import shard_range, split_range
from shards import cache_writer as writer
from shards import caches
from shards.base.errors import WsmlError
from shards.shardset import ShardSet

if TYPE_CHECKING:
    from models.cache_crops import Crops

DEFAULT_CHUNK = 4096  # rows per chunk: a few minutes of work at most, lost when killed
Progress = Callable[[str, int], Callable[[int], Any]]  # (description, total) -> tick(n)


@dataclass(frozen=True)
class Encoder:
    """What the cache writer needs from a model: its tag, input preprocessing and encode."""

    kind: str  # "clip" or "features"
    tag: str  # folder name under embeddings/
    preset: Preset  # the loader's preprocessing for this model
    dim: int
    identity: dict  # what makes the numbers: compared before resuming, recorded in meta.json
    record: dict  # recorded in meta.json only (sources, versions)
    encode: Callable[[torch.Tensor], torch.Tensor]  # (N, 3, H, W) on device -> (N, D) f32 CPU
    text: Callable[[], np.ndarray] | None = None  # class-text embeddings (L, D), CLIP only


@dataclass(frozen=True)
class CacheOptions:
    splits: tuple[str, ...] | None = None  # None: every split
    batch_size: int = 128
    chunk_size: int = DEFAULT_CHUNK
    backend: str = "auto"
    num_threads: int | None = None  # loader threads per process (default: cores / local ranks)
    overwrite: bool = False

    def check(self, ss: ShardSet) -> None:
        """Fail before any work on a bad option (unknown split, backend not installed)."""
        if self.batch_size < 1 or self.chunk_size < 1:
            raise WsmlError("batch size and chunk size must be positive")
        for split in self.splits or ():
            ss.split(split)
        choose_backend(self.backend)


# ---- the plan, the settings and the run ----


def create_cache_plan(ss: ShardSet, splits: list[str], chunk_size: int) -> dict[str, dict]:
    """Rows, chunks and the shards' identity of each split."""
    out = {}
    for split in splits:
        shards = ss.split(split)["shards"]
        rows = sum(int(s["num_samples"]) for s in shards)
        digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()
        out[split] = {"rows": rows, "chunks": math.ceil(rows / chunk_size), "shards_sha256": digest}
    return out


def run_cache(
    ss: ShardSet,
    encoder: Encoder,
    opts: CacheOptions,
    ctx: DistContext,
    *,
    progress: Progress | None = None,
    log: Callable[[str], Any] | None = None,
    crops: Crops | None = None,
) -> dict:
    """Write (or finish, or find complete) the cache of ``encoder`` over ``opts.splits`` (and
    with ``crops`` the training split's tiles)."""
    opts.check(ss)
    log = log if log is not None and ctx.rank == 0 else (lambda message: None)
    backend = choose_backend(opts.backend)
    plan = create_cache_plan(ss, list(opts.splits or ss.splits), opts.chunk_size)
    settings = {**encoder.identity, "loader": backend, "splits": plan}
    if crops is not None:
        settings["crops"] = crops.settings(ss, opts, plan)
    settings = json.loads(json.dumps(settings))
    folder = caches.cache_folder(ss.root, encoder.tag)
    summary = {
        "tag": encoder.tag,
        "folder": str(folder),
        "kind": encoder.kind,
        "dim": encoder.dim,
        "normalized": encoder.identity["normalized"],
        "splits": {s: p["rows"] for s, p in plan.items()},
        "chunks": sum(p["chunks"] for p in writer.plan_arrays(settings).values()),
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "crops": settings["crops"]["grid"] if crops is not None else None,
    }
    with contextlib.ExitStack() as held:
        state = ctx.on_zero(lambda: writer.prepare_cache(folder, settings, opts.overwrite, held))
        if state["complete"]:
            return {**summary, "status": "cached", "images": 0, "resumed_chunks": 0}
        if state["resumed"]:
            log(f"resuming {folder}: {state['resumed']} of {summary['chunks']} chunks done")
        t0 = time.perf_counter()
        works = [ChunkShare(ss, encoder, opts, ctx, backend, folder, plan)]
        if crops is not None:
            tiles = settings["crops"]["splits"]
            works.append(ChunkShare(ss, crops.encoder, crops.options(opts), ctx, backend, folder,
                               tiles, array=caches.crops_name))  # fmt: skip
        counts = ctx.on_all(lambda: sum(w.run(state["done"], progress) for w in works))
        seconds = time.perf_counter() - t0
        produced = {
            "batch_size": opts.batch_size,
            "chunk_size": opts.chunk_size,
            "world_size": ctx.world_size,
            "device": ctx.device.type,
        }
        ctx.on_zero(lambda: _finish(ss, encoder, folder, settings, produced))
    images = sum(counts)
    return {
        **summary,
        "status": "written",
        "images": images,
        "graph_builds": sum(w.builds for w in works),
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "resumed_chunks": state["resumed"],
    }


@dataclass
class ChunkShare:
    """One process's share of the chunks still to do."""

    ss: ShardSet
    encoder: Encoder
    opts: CacheOptions
    ctx: DistContext
    backend: str
    folder: os.PathLike
    plan: dict
    builds: int = 0  # DALI graphs built (one per split read, when its chunks follow each other)
    array: Callable[[str], str] = lambda split: split  # the array a split's rows go to

    def run(self, done: dict[str, list[int]], progress: Progress | None) -> int:
        todo = [
            (split, c)
            for split, p in self.plan.items()
            for c in range(p["chunks"])
            if c not in done.get(self.array(split), ())
        ]
        mine = todo[slice(*split_range(0, len(todo), self.ctx.world_size, self.ctx.rank))]
        total = sum(_chunk_rows(self.plan[s]["rows"], c, self.plan[s]["chunks"]) for s, c in mine)
        tick = progress(f"embedding ({self.encoder.tag})", total) if progress else None
        loaders: dict[str, Any] = {}  # per split, reading its chunks in turn
        done = sum(self.chunk(loaders, split, c, tick) for split, c in mine)
        self.builds = sum(s > 0 for ldr in loaders.values() for s in ldr.build_seconds)
        return done

    def chunk(self, loaders: dict, split: str, chunk: int, tick) -> int:
        """Embed one chunk and write its rows and embeddings to its own file (done once it
        exists)."""
        loader = loaders.get(split)
        if loader is None:
            reading = LoaderOptions(
                rank=chunk, world_size=self.plan[split]["chunks"], device=self.ctx.device,
                backend=self.backend, walk_shards=True,
                num_threads=self.opts.num_threads or default_threads(self.ctx.world_size),
            )  # fmt: skip
            loaders[split] = loader = create_loader(
                self.ss, split, regime="full", batch_size=self.opts.batch_size,
                preset=self.encoder.preset, train=False, labels=False, options=reading,
            )  # fmt: skip
        loader.set_rank(chunk)
        start, end = loader.share()
        seen, parts = [], []
        for batch in loader:
            valid = batch["valid"]
            if not bool(valid.any()):
                continue
            rows = batch["row"][valid].cpu().numpy()
            out = self.encoder.encode(batch["image"][valid]).numpy().astype(np.float16)
            if not np.isfinite(out).all():
                raise WsmlError(
                    f"{self.encoder.tag}: embeddings of split {split} are not finite in float16 "
                    "(raw features too large? cache them L2-normalised)"
                )
            seen.append(rows)
            parts.append(out)
            if tick:
                tick(len(rows))
        got = np.concatenate(seen) if seen else np.zeros(0, np.int64)
        if len(got) != end - start or len(np.unique(got)) != len(got):
            raise WsmlError(
                f"chunk {chunk} of split {split}: expected {end - start} distinct rows, the "
                f"loader gave {len(got)} ({len(np.unique(got))} distinct)"
            )
        arr = np.concatenate(parts) if parts else np.zeros((0, self.encoder.dim), np.float16)
        writer.write_chunk(self.folder, self.array(split), chunk, got, arr)
        return len(got)


def _chunk_rows(rows: int, chunk: int, chunks: int) -> int:
    start, end = shard_range(rows, chunk, chunks)
    return end - start


def _finish(ss: ShardSet, encoder: Encoder, folder, settings: dict, produced: dict) -> None:
    """Rank 0, once every rank is done: class texts, then the arrays assembled from their
    chunks and ``meta.json`` last (``shards.cache_writer.finish_chunked``)."""
    meta = {k: v for k, v in settings.items() if k not in ("splits", "text")}
    meta.update(tag=encoder.tag, dtype="float16", **encoder.record, produced=produced)
    meta["splits"] = {s: {"path": f"{s}.npy", **p} for s, p in settings["splits"].items()}
    if "crops" in settings:
        tiles = settings["crops"]["splits"]
        meta["crops"] = {**settings["crops"], "splits": {
            s: {"path": f"{caches.crops_name(s)}.npy", **p} for s, p in tiles.items()}}  # fmt: skip
    if encoder.text is not None:
        text = encoder.text()
        if text.shape[1] != encoder.dim:
            raise WsmlError(f"{encoder.tag}: text embeddings of dimension {text.shape[1]}")
        caches.write_array(folder / "text.npy", text.astype(np.float16))
        meta["text"] = {"path": "text.npy", "rows": int(text.shape[0]), **settings["text"]}
    writer.finish_chunked(ss.root, folder, settings, meta)
