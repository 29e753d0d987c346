"""Deterministic planning of a conversion: the field's train/val split, safe keys, the seeded
global shuffle and the cut into shards. Pure functions of the source and the options."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KEY_MAX = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def field_split(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cole et al.'s split of an official train split: ``n_val = round(val_frac * n)`` from
    ``RandomState(seed).permutation(n)``; the first ``n - n_val`` are train; both sorted."""
    n_val = int(np.round(val_frac * n))
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val :])


def make_keys(hints: Sequence[str], ids: Sequence[str]) -> list[str]:
    """Tar keys matching ``[A-Za-z0-9_-]+`` (no dots: webdataset and DALI cut names at the first
    dot). A hint that needed changing, or that collides, gets a hash of its source id appended."""
    safe = [_UNSAFE.sub("_", h)[:KEY_MAX] or "_" for h in hints]
    counts = Counter(safe)
    keys = []
    for s, h, i in zip(safe, hints, ids, strict=True):
        if s != h or counts[s] > 1:
            s = f"{s[: KEY_MAX - 11]}-{hashlib.sha1(i.encode()).hexdigest()[:10]}"
        keys.append(s)
    dup = [k for k, c in Counter(keys).items() if c > 1]
    if dup:  # only when two sources share an id, which converters reject earlier
        raise ValueError(f"duplicate keys after sanitising: {dup[:5]}")
    return keys


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
