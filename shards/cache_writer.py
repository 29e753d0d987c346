"""The resumable writer of an embedding cache (``shards.caches`` holds the format and the
readers): the split arrays reserved on disk up front, one file per chunk done (so processes on
several machines sharing a plain NFS or object-store-backed folder never write one file), the
progress file and the writer's lock, and the finish that assembles the chunks and publishes
``meta.json`` last. The chunk loop that calls it lives in ``models/cache_run.py``."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from shards.base.errors import WsmlError
from shards.base.fileio import (
    folder_lock,
    fsync_dir,
    publish,
    remove_temporaries,
    tmp_path_for,
    write_json_atomic,
)
from shards.caches import crops_name, list_caches, remove_cache, write_meta

PROGRESS = "progress.json"
PROGRESS_FORMAT = "wsml-embeddings-progress"
PARTIAL_SUFFIX = ".npy.partial"
CHUNKS = "chunks"


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
        header = {"descr": "<f2", "fortran_order": False, "shape": (rows, dim)}
        with _removed_on_error(tmp), open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            # the blocks on disk now: writing the map later cannot SIGBUS on a full disk
            reserve_space(f, f.tell() + rows * dim * 2, path)
    publish(tmp, path)
    return True


@contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def reserve_space(f, nbytes: int, name: Path) -> None:
    """Allocate ``nbytes`` of the open file ``f`` on disk (``posix_fallocate``, or zeros
    written where the file system lacks it), so a full disk is an ordinary error here."""
    try:
        try:
            os.posix_fallocate(f.fileno(), 0, nbytes)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            have = f.seek(0, os.SEEK_END)
            block = b"\0" * (1 << 20)
            for start in range(have, nbytes, len(block)):
                f.write(block[: min(len(block), nbytes - start)])
            f.flush()
    except OSError as e:
        raise WsmlError(
            f"cannot reserve {nbytes:,} bytes for {name} ({e.strerror}): free space on that "
            "disk and run the same command again"
        ) from None


def chunk_path(folder: Path, split: str, chunk: int) -> Path:
    return Path(folder) / CHUNKS / f"{split}-{chunk:06d}.npz"


def write_chunk(folder: Path, split: str, chunk: int, rows: np.ndarray, arr: np.ndarray) -> None:
    """One chunk's label-table rows and their embeddings (float16), written whole to a file
    of its own and published by rename (no two processes ever write one file: plain NFS is
    enough)."""
    path = chunk_path(folder, split, chunk)
    path.parent.mkdir(exist_ok=True)
    tmp = tmp_path_for(path)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    arr = np.ascontiguousarray(arr, dtype=np.float16)
    with _removed_on_error(tmp), open(tmp, "wb") as f:
        reserve_space(f, arr.nbytes + rows.nbytes + 1024, path)  # the data and zip headers
        f.seek(0)
        np.savez(f, rows=rows, embeddings=arr)
        f.truncate()
    publish(tmp, path)


def list_done_chunks(folder: Path) -> dict[str, list[int]]:
    """The chunks done, by split: those whose file exists."""
    done: dict[str, list[int]] = {}
    for p in sorted((Path(folder) / CHUNKS).glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].npz")):
        split, chunk = p.stem.rsplit("-", 1)
        done.setdefault(split, []).append(int(chunk))
    return done


def assemble_split(folder: Path, split: str, chunks: int, rows: int) -> None:
    """Copy every chunk's rows into the split's reserved partial array (each row exactly
    once) and publish it as ``<split>.npy``."""
    if rows:
        arr = open_partial(folder, split)
        seen = np.zeros(rows, dtype=np.int64)
        for c in range(chunks):
            path = chunk_path(folder, split, c)
            try:
                with np.load(path, allow_pickle=False) as part:
                    at, values = part["rows"], part["embeddings"]
            except (OSError, ValueError, KeyError) as e:
                raise WsmlError(f"{path} is not a readable chunk ({e}); cache it again") from None
            if values.shape != (len(at), arr.shape[1]) or (len(at) and at.max() >= rows):
                raise WsmlError(f"{path}: {values.shape} embeddings of rows up to {at.max()}")
            arr[at] = values
            np.add.at(seen, at, 1)
        if not (seen == 1).all():
            raise WsmlError(f"{folder}: chunks of {split} cover {int((seen > 0).sum())} of "
                            f"{rows} rows ({int((seen > 1).sum())} more than once)")  # fmt: skip
        arr.flush()
        del arr
    publish_partial(folder, split)


def open_partial(folder: Path, split: str) -> np.memmap:
    """The split's partial array for writing rows in place (several processes may each write
    their own rows of it)."""
    return np.lib.format.open_memmap(partial_path(folder, split), mode="r+")


def publish_partial(folder: Path, split: str) -> None:
    """Rename a finished partial array to ``<split>.npy``."""
    os.replace(partial_path(folder, split), Path(folder) / f"{split}.npy")


def read_progress(folder: Path) -> dict | None:
    """The settings of an unfinished cache and (``done``) its chunk files by split."""
    path = Path(folder) / PROGRESS
    try:
        p = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(p, dict) and p.get("format") == PROGRESS_FORMAT):
        return None
    return {**p, "done": list_done_chunks(folder)}


def write_progress(folder: Path, settings: dict) -> None:
    """The settings of an unfinished cache (its chunks done are its chunk files)."""
    write_json_atomic(Path(folder) / PROGRESS, {"format": PROGRESS_FORMAT, "settings": settings})


def writer_lock(folder: Path):
    """Held by the process that prepares and finishes a cache: a second command writing the
    same cache at the same time fails at once instead of corrupting it."""
    return folder_lock(folder)


def finish_cache(folder: Path) -> None:
    """Remove what only an unfinished cache needs (after ``meta.json`` is published)."""
    folder = Path(folder)
    for name in (PROGRESS, ".progress.lock"):
        (folder / name).unlink(missing_ok=True)
    for p in folder.glob("*" + PARTIAL_SUFFIX):
        p.unlink()
    shutil.rmtree(folder / CHUNKS, ignore_errors=True)
    remove_temporaries(folder)  # of writers killed earlier
    fsync_dir(folder)


def plan_arrays(settings: dict) -> dict[str, dict]:
    """Every array of a cache being written, by name, with its ``rows``, ``chunks`` and ``dim``:
    each split's, then (``crops``) the tiles' of a split (``shards.caches.crops_name``)."""
    out = {s: {**p, "dim": settings["dim"]} for s, p in settings["splits"].items()}
    for split, p in (settings.get("crops") or {}).get("splits", {}).items():
        out[crops_name(split)] = p
    return out


def prepare_cache(folder: Path, settings: dict, overwrite: bool, held) -> dict:
    """One process (rank 0): lock the folder (held in ``held``, an ExitStack); find a complete
    cache, a resumable one (its chunk files), or start afresh with every array reserved on
    disk. ``settings`` carry ``dim`` and per split ``rows`` (and maybe ``crops``)."""
    held.enter_context(writer_lock(folder))  # before the folder: a refusal leaves none
    folder.mkdir(parents=True, exist_ok=True)
    meta = list_caches(folder.parent.parent).get(folder.name)
    if meta is not None and not overwrite:
        want = _complete(settings)
        differ = differences(want, meta)
        if not differ:
            return {"complete": True}
        raise WsmlError(
            f"{folder} already holds embeddings made with other settings (differing: "
            f"{', '.join(differ)}); pass --overwrite to replace them"
        )
    progress = read_progress(folder)
    if progress is not None and progress["settings"] != settings and not overwrite:
        differ = differences(settings, progress["settings"]) or ["splits"]
        raise WsmlError(
            f"{folder} holds an unfinished cache made with other settings (differing: "
            f"{', '.join(differ)}); run the command that started it again to resume it, or "
            "pass --overwrite to start again"
        )
    if meta is not None or progress is None or progress["settings"] != settings:
        remove_cache(folder)  # nothing to resume: start from an empty folder
    arrays = plan_arrays(settings)
    for name, p in arrays.items():
        (folder / f"{name}.npy").unlink(missing_ok=True)  # a finish that was killed
        create_partial(folder, name, p["rows"], p["dim"])
    write_progress(folder, settings)
    fsync_dir(folder)
    done = {s: c for s, c in list_done_chunks(folder).items() if s in arrays}
    return {"complete": False, "done": done, "resumed": sum(len(c) for c in done.values())}


def finish_chunked(root: Path, folder: Path, settings: dict, meta: dict) -> None:
    """One process, once every chunk is written: check them, assemble each split's array from
    its chunks (``settings["splits"][split]``: ``rows``, ``chunks``), publish ``meta.json``
    last, tidy up."""
    done = list_done_chunks(folder)
    plan = plan_arrays(settings)
    missing = {s: sorted(set(range(p["chunks"])) - set(done.get(s, ()))) for s, p in plan.items()}
    missing = {s: c for s, c in missing.items() if c}
    if missing:
        raise WsmlError(
            f"{folder}: chunks not done {missing}; run the same command again to finish them"
        )
    for split, p in plan.items():
        assemble_split(folder, split, p["chunks"], p["rows"])
    fsync_dir(folder)
    write_meta(root, folder.name, meta)
    finish_cache(folder)


def _strip_chunks(plan: dict) -> dict:
    """A complete cache matches whatever chunk size made it."""
    return {k: v for k, v in plan.items() if k != "chunks"}


def _complete(settings: dict) -> dict:
    """What a complete cache's meta must match: the settings but for chunk counts."""
    out = {**settings, "splits": {s: _strip_chunks(p) for s, p in settings["splits"].items()}}
    if "crops" in settings:
        tiles = settings["crops"]["splits"]
        out["crops"] = {
            **settings["crops"],
            "splits": {s: _strip_chunks(p) for s, p in tiles.items()},
        }
    return out


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


def _matches(want, have) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_matches(v, have.get(k)) for k, v in want.items())
    return want == have
