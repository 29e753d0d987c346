"""What a run checks so nothing wrong passes silently: the identity of the data it trains on
(recorded in ``config.json``, compared on ``--resume``), that an epoch has at least one
optimisation step, one writer per run folder, and ranks that end with their launcher."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards import caches
from shards.base.errors import WsmlError
from shards.base.fileio import folder_lock, sha256_file
from shards.shardset import ShardSet


def data_identity(ss: ShardSet, view: str, features: str | None, clip: str | None) -> dict:
    """The sha256 of what a run reads: the manifest (which holds the label tables' sha256),
    the view's ``regime.json`` and the caches' ``meta.json``; for the caches' arrays (too large
    to hash at every start) their size and modification time. A file gone is ``missing``."""
    out: dict[str, Any] = {"manifest.json": sha256_file(ss.root / "manifest.json")}
    if view not in ("full", "clean"):
        out[f"observed/{view}/regime.json"] = _sha256(ss.root / "observed" / view / "regime.json")
    for tag in dict.fromkeys(t for t in (features, clip) if t):
        folder = caches.cache_folder(ss.root, tag)
        meta = caches.list_caches(ss.root).get(tag)
        out[f"embeddings/{tag}/meta.json"] = _sha256(folder / "meta.json") if meta else MISSING
        for entry in caches.list_arrays(meta).values() if meta else ():
            path = folder / entry["path"]
            st = path.stat() if path.is_file() else None
            size = f"{st.st_size} bytes, mtime {st.st_mtime_ns}" if st else MISSING
            out[f"embeddings/{tag}/{entry['path']}"] = size
    return out


MISSING = "missing"


def _sha256(path: Path) -> str:
    return sha256_file(path) if path.is_file() else MISSING


def check_identity(run_dir: Path, saved: dict, config: dict, command: str = "--resume") -> None:
    """Refuse when a file the run was trained on has changed since: on ``--resume`` (``config``
    the new run's), and in the commands that read a run (``check_run_data``)."""
    before, now = saved.get("data"), config.get("data")
    if before is None or now is None:  # a run recorded before identities were
        return
    changed = [name for name in sorted(before | now) if before.get(name) != now.get(name)]
    if not changed:
        return
    shards = saved["run"]["shards"]
    way = (
        "start the run again with --overwrite or choose another --out"
        if command == "--resume"
        else "its scores there would not be the run's: restore the data it was trained on, or "
        "train a new run on this data"
    )
    raise WsmlError(
        f"{command}: {run_dir} was trained on other data: {', '.join(changed)} of {shards} "
        f"changed since (replaced or made again); {way}"
    )


def check_global_batch(batch_size: int, world_size: int) -> None:
    """A batch size is the global batch: it must divide evenly over the ranks."""
    if batch_size % world_size:
        raise WsmlError(
            f"batch_size {batch_size} is the global batch and must divide evenly over "
            f"{world_size} ranks"
        )


def check_steps(rows: int, batch_sizes: list[int], world_size: int) -> None:
    """Fail before any work when an epoch would have no optimisation step (each rank drops
    its last incomplete batch)."""
    for batch in batch_sizes:
        if (rows // world_size) // max(1, batch // world_size) == 0:
            raise WsmlError(
                f"the training split has {rows} rows, fewer than one batch of {batch} over "
                f"{world_size} rank(s): an epoch would have no optimisation step; lower the "
                "batch size (--batch-size or -o batch_size=…)"
            )


@contextlib.contextmanager
def run_folder_lock(run_dir: str, is_main: bool) -> Iterator[None]:
    """Rank 0, the writer of the run folder, holds its lock for the whole run: a second run
    on the same ``--out`` (or a resume while orphaned ranks still run) fails at once."""
    if not is_main:
        yield
        return
    with folder_lock(Path(run_dir)):
        yield


PR_SET_PDEATHSIG = 1


def end_with_launcher() -> None:
    """Under torchrun: have the kernel send SIGTERM to this rank when its launcher dies, so no
    orphaned rank goes on writing (Linux; elsewhere nothing happens)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the call above
        os.kill(os.getpid(), signal.SIGTERM)
