"""Cached embeddings beside a shard set: the on-disk contract shared by the cache commands (which
write) and the pipelines and trainer (which read).

```
embeddings/<tag>/
  meta.json        written last: what produced the arrays, their dimension and splits
  <split>.npy      (N, D) float16, L2-normalised where meta says so, row i = label-table row i
  text.npy         (L, D) float16 class-text embeddings (CLIP caches), with the prompts in meta
  <split>.crops.npy  (N, K x D) float16: K tiles of every image (``cache-clip --crops gridG``,
                   K = G x G, the training split), each embedded as the whole image is; meta's
                   ``crops`` holds the grid, the tile geometry and these arrays' entries
```

A folder without ``meta.json`` is an unfinished cache and is never read. While a cache is being
written (resumably, by one or several processes, on one machine or several sharing a plain NFS or
object-store-backed folder) it also holds ``progress.json`` (the settings), ``chunks/`` (one
``<split>-<chunk>.npz`` per chunk done: its label-table rows and their embeddings, each written
whole by the process that made it and published by rename: a chunk is done once its file
exists), ``<split>.npy.partial`` (the assembled array, its space reserved up front so a full
disk fails before any work) and lock files. Finishing (one process) copies the chunks into the
arrays, renames them, writes ``meta.json`` and removes the rest. This module holds the format,
the readers and the whole-cache ``write_cache``; ``shards.cache_writer`` is the resumable
writer, and the chunk loop that drives it lives in ``models/cache_run.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from shards.base.errors import WsmlError
from shards.base.fileio import (
    check_inside,
    dumps_json,
    fsync_dir,
    publish,
    tmp_path_for,
    write_bytes_atomic,
)

FORMAT = "wsml-embeddings"
VERSION = 1
TAG_RE = re.compile(r"^[A-Za-z0-9_.@+-]+$")
CROPS_SUFFIX = ".crops"  # <split>.crops.npy: the split's tiles (``crops_name``)


def create_tag(*parts: str) -> str:
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
            check_inside(m, meta.parent, str(meta))
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


def crops_name(split: str) -> str:
    """The array (and chunk) name of a split's crop embeddings."""
    return f"{split}{CROPS_SUFFIX}"


def list_arrays(meta: dict) -> dict[str, dict]:
    """Every array a cache holds by name (its splits, then its splits' crops), each entry with
    ``path`` and ``rows``."""
    crops = (meta.get("crops") or {}).get("splits", {})
    return {**meta["splits"], **{crops_name(s): e for s, e in crops.items()}}


def read_crops(root: Path, tag: str, split: str = "train") -> np.ndarray:
    """(N, K, D) embeddings of the K tiles of every image of ``split`` (a view of the memory
    map), checked against the cache's meta."""
    meta = get_cache(root, tag)
    entry = (meta.get("crops") or {}).get("splits", {}).get(split)
    if entry is None:
        raise WsmlError(
            f"cached embeddings {tag!r} of {root} have no crops of split {split!r}: make them "
            f"with `cli.py cache-clip --shards {root} --crops grid4` (the cache's own --model "
            "and --pretrained; --overwrite to replace a cache made without crops)"
        )
    views, dim = int(meta["crops"]["views"]), int(meta["dim"])
    path = Path(root) / "embeddings" / tag / entry["path"]
    arr = _load(path, mmap=True)
    if arr.shape != (entry["rows"], views * dim):
        raise WsmlError(f"{path} has shape {arr.shape}, its meta.json says "
                        f"({entry['rows']}, {views} x {dim})")  # fmt: skip
    return arr.reshape(entry["rows"], views, dim)


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
    for name, entry in list_arrays(full).items():
        if not (folder / entry["path"]).is_file():
            raise WsmlError(f"cannot publish {folder}: array {name} has no {entry['path']}")
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
    crops: dict[str, np.ndarray] | None = None,
    **meta,
) -> Path:
    """Write a whole cache at once (float16 arrays, then meta.json); returns the folder.
    ``crops`` maps a split to its tiles' embeddings (N, G^2, D) (``cache-clip --crops``)."""
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
    if crops:
        info["crops"] = _write_crops(folder, crops, info["dim"])
    write_meta(root, tag, {**info, **meta})
    return folder


def _write_crops(folder: Path, crops: dict[str, np.ndarray], dim: int) -> dict:
    """Each split's (N, G^2, D) tiles as ``<split>.crops.npy``; their meta entry."""
    views = {a.shape[1] for a in crops.values()}
    grid = int(round(next(iter(views)) ** 0.5))
    if len(views) != 1 or grid * grid not in views or {a.shape[2] for a in crops.values()} != {dim}:
        raise WsmlError(f"crops must be (N, G^2, {dim}) arrays of one grid, got "
                        f"{[a.shape for a in crops.values()]}")  # fmt: skip
    entries = {}
    for split, arr in crops.items():
        name = f"{crops_name(split)}.npy"
        write_array(folder / name, arr.reshape(len(arr), -1).astype(np.float16))
        entries[split] = {"path": name, "rows": len(arr), "dim": grid * grid * dim}
    return {"grid": grid, "views": grid * grid, "splits": entries}


def cache_folder(root: Path, tag: str) -> Path:
    return Path(root) / "embeddings" / tag


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
