"""Cached embeddings beside a shard set: the on-disk contract shared by the cache commands (which
write) and the pipelines and trainer (which read).

```
embeddings/<tag>/
  meta.json        written last: what produced the arrays, their dimension and splits
  <split>.npy      (N, D) float16, L2-normalised where meta says so, row i = label-table row i
  text.npy         (L, D) float16 class-text embeddings (CLIP caches), with the prompts in meta
```

A folder without ``meta.json`` is an unfinished cache and is never read. While a cache is being
written (resumably, by one or several processes) it also holds ``<split>.npy.partial`` (the
preallocated array, rows filled in chunk by chunk), ``progress.json`` (the settings and the chunks
done) and lock files; finishing renames the arrays, writes ``meta.json`` and removes the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from shards.errors import WsmlError
from shards.fileio import (
    dumps_json,
    folder_lock,
    fsync_dir,
    publish,
    remove_temporaries,
    tmp_path_for,
    write_bytes_atomic,
    write_json_atomic,
)

FORMAT = "wsml-embeddings"
VERSION = 1
TAG_RE = re.compile(r"^[A-Za-z0-9_.@+-]+$")
PROGRESS = "progress.json"
PROGRESS_FORMAT = "wsml-embeddings-progress"
PARTIAL_SUFFIX = ".npy.partial"


def make_tag(*parts: str) -> str:
    """A folder-safe cache tag, e.g. ``ViT-B-32__laion2b_s34b_b79k``."""
    tag = "__".join(re.sub(r"[^A-Za-z0-9_.@+-]+", "-", p).strip("-") for p in parts if p)
    if not tag or not TAG_RE.match(tag):
        raise WsmlError(f"cannot make a cache tag from {parts!r}")
    return tag


def list_caches(root: Path) -> dict[str, dict]:
    """Complete caches (those with a ``meta.json``) by tag."""
    out = {}
    for meta in sorted((Path(root) / "embeddings").glob("*/meta.json")):
        try:
            m = json.loads(meta.read_text())
        except ValueError:
            continue
        if isinstance(m, dict) and m.get("format") == FORMAT:
            out[meta.parent.name] = m
    return out


def get_cache(root: Path, tag: str) -> dict:
    caches = list_caches(root)
    if tag not in caches:
        have = ", ".join(caches) or "none"
        raise WsmlError(
            f"{root} has no cached embeddings {tag!r} (cached: {have}); make them with "
            f"`cli.py cache-clip --shards {root}` or `cli.py cache-features --shards {root}`"
        )
    return caches[tag]


def read_split(root: Path, tag: str, split: str, *, mmap: bool = True) -> np.ndarray:
    """(N, D) image embeddings of ``split``, memory-mapped, checked against the cache's meta."""
    meta = get_cache(root, tag)
    entry = meta["splits"].get(split)
    if entry is None:
        raise WsmlError(
            f"cached embeddings {tag!r} of {root} have no split {split!r} "
            f"(splits: {', '.join(meta['splits'])})"
        )
    path = Path(root) / "embeddings" / tag / entry["path"]
    arr = _load(path, mmap)
    if arr.shape != (entry["rows"], meta["dim"]):
        raise WsmlError(
            f"{path} has shape {arr.shape}, its meta.json says ({entry['rows']}, {meta['dim']})"
        )
    return arr


def read_text(root: Path, tag: str) -> np.ndarray:
    """(L, D) class-text embeddings of a CLIP cache."""
    meta = get_cache(root, tag)
    if "text" not in meta:
        raise WsmlError(f"cached embeddings {tag!r} of {root} have no class-text embeddings")
    return _load(Path(root) / "embeddings" / tag / meta["text"]["path"], mmap=False)


def _load(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise WsmlError(f"{path} is missing; cache it again")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise WsmlError(f"{path} is not a readable .npy array ({e})") from None


def write_array(path: Path, arr: np.ndarray, durable: bool = True) -> None:
    """Write one .npy atomically (temporary name, fsync, rename)."""
    tmp = tmp_path_for(path)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
    publish(tmp, path, durable)


def write_meta(root: Path, tag: str, meta: dict, durable: bool = True) -> Path:
    """Publish ``meta.json`` last: from then on the cache counts as complete."""
    folder = Path(root) / "embeddings" / tag
    full = {"format": FORMAT, "format_version": VERSION, **meta}
    for split, entry in full["splits"].items():
        if not (folder / entry["path"]).is_file():
            raise WsmlError(f"cannot publish {folder}: split {split} has no {entry['path']}")
    path = folder / "meta.json"
    write_bytes_atomic(path, dumps_json(full).encode(), durable)
    return path


def write_cache(
    root: Path,
    tag: str,
    splits: dict[str, np.ndarray],
    *,
    text: np.ndarray | None = None,
    normalized: bool = True,
    **meta,
) -> Path:
    """Write a whole cache at once (float16 arrays, then meta.json); returns the folder."""
    folder = Path(root) / "embeddings" / tag
    folder.mkdir(parents=True, exist_ok=True)
    dims = {a.shape[1] for a in splits.values()} | ({text.shape[1]} if text is not None else set())
    if len(dims) != 1:
        raise WsmlError(f"embeddings of {tag!r} disagree on their dimension: {sorted(dims)}")
    entries = {}
    for split, arr in splits.items():
        write_array(folder / f"{split}.npy", arr.astype(np.float16))
        entries[split] = {"path": f"{split}.npy", "rows": int(arr.shape[0])}
    info = {"dim": dims.pop(), "dtype": "float16", "normalized": normalized, "splits": entries}
    if text is not None:
        write_array(folder / "text.npy", text.astype(np.float16))
        info["text"] = {"path": "text.npy", "rows": int(text.shape[0]), **meta.pop("text", {})}
    write_meta(root, tag, {**info, **meta})
    return folder


# ---- resumable writing: preallocated partial arrays, a progress file, locks ----


def cache_folder(root: Path, tag: str) -> Path:
    return Path(root) / "embeddings" / tag


def partial_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"{split}{PARTIAL_SUFFIX}"


def create_partial(folder: Path, split: str, rows: int, dim: int) -> bool:
    """Preallocate a (rows, dim) float16 .npy under the split's partial name (sparse on disk);
    one that already has that shape is kept (a resumed run). Returns whether it was created."""
    path = partial_path(folder, split)
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape == (rows, dim) and arr.dtype == np.float16:
                return False
        except ValueError:  # a torn header: make it again
            pass
    tmp = tmp_path_for(path)
    if rows == 0:  # numpy cannot map an empty array
        with open(tmp, "wb") as f:
            np.save(f, np.zeros((0, dim), np.float16), allow_pickle=False)
    else:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(rows, dim))
        del arr
    publish(tmp, path)
    return True


def open_partial(folder: Path, split: str) -> np.memmap:
    """The split's partial array for writing rows in place (several processes may each write
    their own rows of it)."""
    return np.lib.format.open_memmap(partial_path(folder, split), mode="r+")


def publish_partial(folder: Path, split: str) -> None:
    """Rename a finished partial array to ``<split>.npy``."""
    os.replace(partial_path(folder, split), Path(folder) / f"{split}.npy")


def read_progress(folder: Path) -> dict | None:
    path = Path(folder) / PROGRESS
    try:
        p = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return p if isinstance(p, dict) and p.get("format") == PROGRESS_FORMAT else None


def write_progress(folder: Path, settings: dict, done: dict[str, list[int]]) -> None:
    """The settings of an unfinished cache and the chunks of each split done so far."""
    progress = {"format": PROGRESS_FORMAT, "settings": settings, "done": done}
    write_json_atomic(Path(folder) / PROGRESS, progress)


def mark_chunk_done(folder: Path, split: str, chunk: int) -> None:
    """Record one chunk as done (after its rows are flushed); safe with several writers."""
    with _flock(Path(folder) / ".progress.lock"):
        p = read_progress(folder)
        if p is None:
            raise WsmlError(f"{folder / PROGRESS} disappeared while the cache was being written")
        done = p["done"]
        done[split] = sorted(set(done.get(split, [])) | {chunk})
        write_progress(folder, p["settings"], done)


def writer_lock(folder: Path):
    """Held by the process that prepares and finishes a cache: a second command writing the
    same cache at the same time fails at once instead of corrupting it."""
    return folder_lock(folder)


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def finish_cache(folder: Path) -> None:
    """Remove what only an unfinished cache needs (after ``meta.json`` is published)."""
    folder = Path(folder)
    for name in (PROGRESS, ".progress.lock"):
        (folder / name).unlink(missing_ok=True)
    for p in folder.glob("*" + PARTIAL_SUFFIX):
        p.unlink()
    remove_temporaries(folder)  # of writers killed earlier
    fsync_dir(folder)


def remove_cache(folder: Path) -> None:
    """Delete a cache, its ``meta.json`` first, so no reader ever sees it half-removed."""
    folder = Path(folder)
    (folder / "meta.json").unlink(missing_ok=True)
    fsync_dir(folder)
    for p in folder.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.name != ".writer.lock":  # held by the caller
            p.unlink()
