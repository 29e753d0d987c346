"""Deterministic planning of a conversion: the field's train/val split, safe keys, the seeded
global shuffle and the cut into shards. Pure functions of the source and the options."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KEY_MAX = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
KEY = re.compile(r"[A-Za-z0-9_-]+")  # a sample key: no dots, no slashes


def field_split(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cole et al.'s split of an official train split: ``n_val = round(val_frac * n)`` from
    ``RandomState(seed).permutation(n)``; the first ``n - n_val`` are train; both sorted."""
    n_val = int(np.round(val_frac * n))
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val :])


def _sanitize(hint: str) -> str:
    return _UNSAFE.sub("_", hint)[:KEY_MAX] or "_"


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Keys:
    """Tar keys of one official split's records, matching ``[A-Za-z0-9_-]+`` (no dots: webdataset
    and DALI cut names at the first dot). A hint that needed changing, or that collides with
    another, gets a hash of its source id appended. Keys are computed on demand for any rows;
    only 8 bytes a record are kept while collisions are found."""

    CHUNK = 65536

    def __init__(self, records, idx: np.ndarray):
        hashes = np.zeros(len(idx), np.uint64)
        changed = 0  # hints the sanitizer changed (their keys get a hash appended)
        for start in range(0, len(idx), self.CHUNK):
            hints = records.key_hints(idx[start : start + self.CHUNK].tolist())
            safe = [_sanitize(h) for h in hints]
            changed += sum(a != b for a, b in zip(safe, hints, strict=True))
            hashes[start : start + len(hints)] = [_hash64(k) for k in safe]
        values, counts = np.unique(hashes, return_counts=True)
        self._colliding = set(values[counts > 1].tolist())
        self._records = records
        if not (changed or self._colliding):
            return  # every key is its own hint, and no two hints are alike
        final = np.zeros(len(idx), np.uint64)
        for start in range(0, len(idx), self.CHUNK):
            keys = self(idx[start : start + self.CHUNK].tolist())
            final[start : start + len(keys)] = [_hash64(k) for k in keys]
        if len(np.unique(final)) != len(final):  # only when two records share a source id
            raise ValueError("two records of one split have the same key and source id")

    def __call__(self, idx) -> list[str]:
        hints = self._records.key_hints(idx)
        safe = [_sanitize(h) for h in hints]
        if not self._colliding and safe == hints:
            return safe
        out = []
        for hint, key, sid in zip(hints, safe, self._records.source_ids(idx), strict=True):
            if key != hint or (self._colliding and _hash64(key) in self._colliding):
                key = f"{key[: KEY_MAX - 11]}-{hashlib.sha1(sid.encode()).hexdigest()[:10]}"
            out.append(key)
        return out


def create_keys(hints: Sequence[str], ids: Sequence[str]) -> list[str]:
    """Keys for plain lists of hints and source ids (see :class:`Keys`)."""

    class _Plain:
        def key_hints(self, idx):
            return [hints[i] for i in idx]

        def source_ids(self, idx):
            return [ids[i] for i in idx]

    idx = np.arange(len(hints))
    return Keys(_Plain(), idx)(idx.tolist())


def shuffle_order(n: int, seed: int, split: str) -> np.ndarray:
    """The seeded global order in which a split's rows are written (readers shuffle only locally)."""
    salt = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, salt]).permutation(n)


@dataclass(frozen=True)
class ShardCut:
    start: int  # positions in the shuffled order
    stop: int


def cut_shards(sizes: np.ndarray, max_bytes: int, max_samples: int) -> list[ShardCut]:
    """Consecutive shards of at most ``max_samples`` samples and ``max_bytes`` payload bytes
    (a single larger image gets a shard of its own)."""
    cuts, start, total = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        member = size + 1536  # headers, .row member and padding
        if i > start and (i - start >= max_samples or total + member > max_bytes):
            cuts.append(ShardCut(start, i))
            start, total = i, 0
        total += member
    if len(sizes) > start:
        cuts.append(ShardCut(start, len(sizes)))
    return cuts


@dataclass(frozen=True)
class SplitRows:
    """Rows of one output split: indices into its official split's records, in row order."""

    name: str
    official: int  # index into source.splits
    records: np.ndarray  # int64 (N,) formatted index of each row
    keys: Keys  # keys(record indices) -> tar keys

    def keys_of(self, rows: np.ndarray) -> list[str]:
        return self.keys(self.records[rows].tolist())


SPLIT_NAMES = {"train": "train", "val": "val", "test": "test"}


def assign_rows(splits, scans, val_frac: float, seed: int) -> list[SplitRows]:
    """Official train -> train/val by the field's rule (on every present record, so that the
    split of the remaining ones matches the reference), unless the source has a val split of
    its own; official val -> val, test -> test; records whose image is bad are dropped."""
    from shards.convert.scan import MISSING, OK

    has_val = any(s.role == "val" for s in splits)
    out = []
    for i, (split, scan) in enumerate(zip(splits, scans, strict=True)):
        present = np.flatnonzero(scan.status != MISSING)
        if split.role == "train" and not has_val:
            tr, va = field_split(len(present), val_frac, seed)
            parts = [("train", present[tr]), ("val", present[va])]
        else:
            parts = [(SPLIT_NAMES[split.role], present)]
        keys = Keys(split.records, np.flatnonzero(scan.status == OK))
        for name, idx in parts:
            idx = idx[scan.status[idx] == OK]
            if len(idx):
                out.append(SplitRows(name, i, idx.astype(np.int64), keys))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"two official splits map to one of {names}")
    return out


@dataclass(frozen=True)
class ShardPlan:
    """One shard: rows ``order[start:stop]`` of output split ``splits[split]``."""

    name: str
    split: int
    start: int
    stop: int


def plan_shards(splits: list[SplitRows], scans, seed: int, max_bytes: int, max_samples: int):
    """The shards of every split and the written order of each split's rows."""
    shards, orders = [], []
    for k, rows in enumerate(splits):
        order = shuffle_order(len(rows.records), seed, rows.name)
        sizes = scans[rows.official].nbytes[rows.records[order]]
        orders.append(order)
        for n, cut in enumerate(cut_shards(sizes, max_bytes, max_samples)):
            shards.append(ShardPlan(f"{rows.name}-{n:06d}", k, cut.start, cut.stop))
    return shards, orders
