"""The first pass of a conversion: check every image and read its size, in parallel.

Reading headers (and the last bytes) is far cheaper than decoding, so bad images are found and
the shard plan is fixed before any shard is written; rows then stay contiguous when
``--on-bad skip`` drops images.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

from shards.convert.images import BadImage, probe_file

OK, MISSING, BAD = 0, 1, 2
CHUNK = 256


@dataclass
class ScanResult:
    """Per-record status (OK / MISSING / BAD), size and whether it must be re-encoded. The
    images' hashes that ``audit`` compares are not computed here: they cost 4x the rest of a
    conversion, so ``audit`` computes them from the tars (``shards.image_hashes``)."""

    status: np.ndarray  # int8 (N,)
    width: np.ndarray  # int32 (N,)
    height: np.ndarray  # int32 (N,)
    nbytes: np.ndarray  # int64 (N,)
    is_jpeg: np.ndarray  # bool (N,)
    reasons: dict[int, str]  # record index -> why it is bad
    mtime_ns: np.ndarray | None = None  # int64 (N,): the OK images' times as probed

    def to_npz(self) -> dict[str, np.ndarray]:
        idx = np.array(sorted(self.reasons), dtype=np.int64)
        times = {} if self.mtime_ns is None else {"mtime_ns": self.mtime_ns}
        return {
            "status": self.status,
            "width": self.width,
            "height": self.height,
            "nbytes": self.nbytes,
            "is_jpeg": self.is_jpeg,
            "bad_index": idx,
            "bad_reason": np.array([self.reasons[i] for i in idx.tolist()], dtype=str),
            **times,
        }

    @classmethod
    def from_npz(cls, z) -> ScanResult:
        reasons = dict(zip(z["bad_index"].tolist(), z["bad_reason"].tolist(), strict=True))
        times = z["mtime_ns"] if "mtime_ns" in z.files else None
        return cls(z["status"], z["width"], z["height"], z["nbytes"], z["is_jpeg"], reasons, times)


def _probe_chunk(args: tuple[Sequence[str], str]) -> list[tuple]:
    paths, check = args
    out = []
    for path in paths:
        try:
            p = probe_file(path, check)
            out.append((OK, p.width, p.height, p.size, p.is_jpeg, p.mtime_ns, ""))
        except BadImage as e:  # a missing file is told apart only here, on the rare path
            status = BAD if os.path.isfile(path) else MISSING
            why = str(e) if status == BAD else "missing"
            out.append((status, 0, 0, 0, False, -1, why))
    return out


def scan_images(
    records,
    check: str,
    workers: Workers,
    on_progress: Callable[[int], None] = lambda n: None,
) -> ScanResult:
    """Probe every image of ``records`` (anything with ``paths(idx)``), in chunks."""
    n = len(records)
    status = np.zeros(n, np.int8)
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    nbytes, is_jpeg = np.zeros(n, np.int64), np.zeros(n, bool)
    mtime_ns = np.full(n, -1, np.int64)
    reasons: dict[int, str] = {}
    chunks = ((records.paths(range(i, min(n, i + CHUNK))), check) for i in range(0, n, CHUNK))
    start = 0
    for part in workers.map(_probe_chunk, chunks):
        for k, (st, w, h, size, jpeg, mtime, why) in enumerate(part, start):
            status[k], width[k], height[k], nbytes[k], is_jpeg[k] = st, w, h, size, jpeg
            mtime_ns[k] = mtime
            if st == BAD:
                reasons[k] = why
        start += len(part)
        on_progress(len(part))
    return ScanResult(status, width, height, nbytes, is_jpeg, reasons, mtime_ns)


class Workers:
    """One process pool for a whole job (``n <= 1``: everything runs in this process).

    Forked on Linux so that workers start at once, unless a library that must not be forked
    (pyarrow's thread pools) is already loaded; spawned otherwise."""

    def __init__(self, n: int):
        self.n = n
        self._pool = None

    def __enter__(self) -> Workers:
        if self.n > 1:
            fork = sys.platform == "linux" and "pyarrow" not in sys.modules
            if fork:  # keep the workers' garbage collector off the parent's objects, so that
                gc.freeze()  # forked workers do not copy pages they never use
            try:
                self._pool = get_context("fork" if fork else "spawn").Pool(self.n)
            finally:
                gc.unfreeze()
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:  # on an error, stop converting the remaining tasks
            self._pool.terminate()
            self._pool.join()

    def map(self, fn: Callable, tasks: Iterable) -> Iterator:
        """``map(fn, tasks)`` in order. With a pool, the first tasks start at once and at most
        ``4 * n`` are in flight, so a long task list is never materialised."""
        if self._pool is None:
            return map(fn, tasks)
        it, pending = iter(tasks), deque()
        for task in itertools.islice(it, 4 * self.n):
            pending.append(self._pool.apply_async(fn, (task,)))
        return self._drain(fn, it, pending)

    def _drain(self, fn: Callable, it: Iterator, pending: deque) -> Iterator:
        while pending:
            result = pending.popleft().get()
            for task in itertools.islice(it, 1):  # keep the window full
                pending.append(self._pool.apply_async(fn, (task,)))
            yield result
