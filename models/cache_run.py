"""Resumable, multi-process writing of an embedding cache beside a shard set.

Each split is cut into C contiguous chunks with the loader's own rank sharding (chunk c is
``create_loader(rank=c, world_size=C, train=False)``, about ``chunk_size`` rows). Embeddings go
straight to their label-table rows in a preallocated, memory-mapped ``<split>.npy.partial``;
a chunk is recorded in ``progress.json`` once its rows are flushed. A rerun with the same
settings skips the chunks done. Under torchrun rank r takes every W-th chunk still to do; rank 0
prepares the folder, and when every chunk is done renames the arrays and writes ``meta.json``
last (``shards.embeddings``).
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
from typing import Any

import numpy as np
import torch

from pipelines.distributed import DistContext
from pipelines.loader import choose_backend, create_loader, default_threads
from pipelines.presets import Preset
from pipelines.sharding import shard_range
from shards import embeddings as emb
from shards.errors import WsmlError
from shards.fileio import fsync_dir
from shards.shardset import ShardSet

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


def make_plan(ss: ShardSet, splits: list[str], chunk_size: int) -> dict[str, dict]:
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
) -> dict:
    """Write (or finish, or find complete) the cache of ``encoder`` over ``opts.splits``."""
    opts.check(ss)
    log = log if log is not None and ctx.rank == 0 else (lambda message: None)
    backend = choose_backend(opts.backend)
    plan = make_plan(ss, list(opts.splits or ss.splits), opts.chunk_size)
    settings = json.loads(json.dumps({**encoder.identity, "loader": backend, "splits": plan}))
    folder = emb.cache_folder(ss.root, encoder.tag)
    summary = {
        "tag": encoder.tag,
        "folder": str(folder),
        "kind": encoder.kind,
        "dim": encoder.dim,
        "normalized": encoder.identity["normalized"],
        "splits": {s: p["rows"] for s, p in plan.items()},
        "chunks": sum(p["chunks"] for p in plan.values()),
        "rank": ctx.rank,
        "world_size": ctx.world_size,
    }
    with contextlib.ExitStack() as held:
        state = ctx.on_zero(lambda: _prepare(folder, settings, opts.overwrite, held))
        if state["complete"]:
            return {**summary, "status": "cached", "images": 0, "resumed_chunks": 0}
        if state["resumed"]:
            log(f"resuming {folder}: {state['resumed']} of {summary['chunks']} chunks done")
        t0 = time.perf_counter()
        work = _Work(ss, encoder, opts, ctx, backend, folder, plan)
        counts = ctx.on_all(lambda: work.run(state["done"], progress))
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
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "resumed_chunks": state["resumed"],
    }


def _prepare(folder, settings: dict, overwrite: bool, held: contextlib.ExitStack) -> dict:
    """Rank 0: lock the folder; find a complete cache, a resumable one, or start afresh."""
    held.enter_context(emb.writer_lock(folder))  # before the folder: a refusal leaves none
    folder.mkdir(parents=True, exist_ok=True)
    meta = emb.list_caches(folder.parent.parent).get(folder.name)
    if meta is not None and not overwrite:
        want = {**settings, "splits": {s: _strip_chunks(p) for s, p in settings["splits"].items()}}
        differ = differences(want, meta)
        if not differ:
            return {"complete": True}
        raise WsmlError(
            f"{folder} already holds embeddings made with other settings (differing: "
            f"{', '.join(differ)}); pass --overwrite to replace them"
        )
    progress = emb.read_progress(folder)
    if progress is not None and progress["settings"] != settings and not overwrite:
        differ = differences(settings, progress["settings"]) or ["splits"]
        raise WsmlError(
            f"{folder} holds an unfinished cache made with other settings (differing: "
            f"{', '.join(differ)}); run the command that started it again to resume it, or "
            "pass --overwrite to start again"
        )
    done: dict[str, list[int]] = {}
    if meta is not None or progress is None or progress["settings"] != settings:
        emb.remove_cache(folder)  # nothing to resume: start from an empty folder
    else:
        done = {s: list(c) for s, c in progress["done"].items()}
    for split, p in settings["splits"].items():
        final = folder / f"{split}.npy"
        if final.is_file() and not emb.partial_path(folder, split).is_file():
            os.replace(final, emb.partial_path(folder, split))  # a finish that was killed
        if emb.create_partial(folder, split, p["rows"], settings["dim"]):
            done[split] = []
        done.setdefault(split, [])
    emb.write_progress(folder, settings, done)
    fsync_dir(folder)
    return {"complete": False, "done": done, "resumed": sum(len(c) for c in done.values())}


def _strip_chunks(plan: dict) -> dict:
    """A complete cache matches whatever chunk size made it."""
    return {k: v for k, v in plan.items() if k != "chunks"}


def differences(want: dict, have: dict) -> list[str]:
    """Top-level keys of ``want`` that ``have`` does not match (dicts match by their keys in
    ``want``; a split by its entry)."""
    out = []
    for key, value in want.items():
        if key == "splits":
            out += [
                f"split {s}" for s, v in value.items() if not _matches(v, have["splits"].get(s))
            ]
        elif not _matches(value, have.get(key)):
            out.append(key)
    return out


def _matches(want: Any, have: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_matches(v, have.get(k)) for k, v in want.items())
    return want == have


@dataclass
class _Work:
    """One process's share of the chunks still to do."""

    ss: ShardSet
    encoder: Encoder
    opts: CacheOptions
    ctx: DistContext
    backend: str
    folder: os.PathLike
    plan: dict

    def run(self, done: dict[str, list[int]], progress: Progress | None) -> int:
        todo = [
            (split, c)
            for split, p in self.plan.items()
            for c in range(p["chunks"])
            if c not in done.get(split, ())
        ]
        mine = todo[self.ctx.rank :: self.ctx.world_size]
        total = sum(_chunk_rows(self.plan[s]["rows"], c, self.plan[s]["chunks"]) for s, c in mine)
        tick = progress(f"embedding ({self.encoder.tag})", total) if progress else None
        return sum(self.chunk(split, c, tick) for split, c in mine)

    def chunk(self, split: str, chunk: int, tick) -> int:
        """Embed one chunk into its rows of the partial array, flush, record it as done."""
        chunks = self.plan[split]["chunks"]
        loader = create_loader(
            self.ss, split, regime="full", batch_size=self.opts.batch_size,
            preset=self.encoder.preset, rank=chunk, world_size=chunks, device=self.ctx.device,
            train=False, backend=self.backend, labels=False,
            num_threads=self.opts.num_threads or default_threads(self.ctx.world_size),
        )  # fmt: skip
        start, end = loader.share()
        arr = emb.open_partial(self.folder, split)
        seen = []
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
            arr[rows] = out
            seen.append(rows)
            if tick:
                tick(len(rows))
        got = np.concatenate(seen) if seen else np.zeros(0, np.int64)
        if len(got) != end - start or len(np.unique(got)) != len(got):
            raise WsmlError(
                f"chunk {chunk} of split {split}: expected {end - start} distinct rows, the "
                f"loader gave {len(got)} ({len(np.unique(got))} distinct)"
            )
        arr.flush()
        del arr
        emb.mark_chunk_done(self.folder, split, chunk)
        return len(got)


def _chunk_rows(rows: int, chunk: int, chunks: int) -> int:
    start, end = shard_range(rows, chunk, chunks)
    return end - start


def _finish(ss: ShardSet, encoder: Encoder, folder, settings: dict, produced: dict) -> None:
    """Rank 0, once every rank is done: check every chunk, class texts, rename, meta last."""
    progress = emb.read_progress(folder) or {"done": {}}
    missing = {
        s: sorted(set(range(p["chunks"])) - set(progress["done"].get(s, ())))
        for s, p in settings["splits"].items()
    }
    missing = {s: c for s, c in missing.items() if c}
    if missing:
        raise WsmlError(
            f"{folder}: chunks not done {missing}; run the same command again to finish them"
        )
    meta = {k: v for k, v in settings.items() if k not in ("splits", "text")}
    meta.update(tag=encoder.tag, dtype="float16", **encoder.record, produced=produced)
    meta["splits"] = {s: {"path": f"{s}.npy", **p} for s, p in settings["splits"].items()}
    if encoder.text is not None:
        text = encoder.text()
        if text.shape[1] != encoder.dim:
            raise WsmlError(f"{encoder.tag}: text embeddings of dimension {text.shape[1]}")
        emb.write_array(folder / "text.npy", text.astype(np.float16))
        meta["text"] = {"path": "text.npy", "rows": int(text.shape[0]), **settings["text"]}
    for split in settings["splits"]:
        emb.publish_partial(folder, split)
    fsync_dir(folder)
    emb.write_meta(ss.root, encoder.tag, meta)
    emb.finish_cache(folder)
