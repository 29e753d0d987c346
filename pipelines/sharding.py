"""Rank sharding and epoch length, computed from the manifest the way DALI's reader shards.

DALI concatenates the samples of all tars of a split and gives shard ``i`` of ``W`` the samples
``[floor(i N / W), floor((i + 1) N / W))``. Training rotates the shard a rank reads every epoch
(as DALI's reader does between epochs) and drops the last partial batch; every rank takes the
same number of batches, ``floor(floor(N / W) / B)``, so DDP never waits on a rank that ran out.
Eval reads shard ``rank`` every time, pads every rank to ``ceil(ceil(N / W) / B)`` batches and
marks the padding invalid, so every row is scored exactly once.
"""

from __future__ import annotations

import numpy as np


def shard_range(num_samples: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """The [start, end) sample range of one reader shard (DALI's formula)."""
    return shard_id * num_samples // num_shards, (shard_id + 1) * num_samples // num_shards


def shard_of(rank: int, world_size: int, epoch: int, train: bool) -> int:
    return (rank + epoch) % world_size if train else rank


def num_batches(num_samples: int, batch_size: int, world_size: int, train: bool) -> int:
    if train:
        return (num_samples // world_size) // batch_size
    per_rank = -(-num_samples // world_size)  # ceil
    return -(-per_rank // batch_size)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 31-bit seed for one rank's epoch (DALI wants a non-negative int32)."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def split_range(start: int, end: int, parts: int, part: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` contiguous pieces of [start, end)."""
    n = end - start
    return start + part * n // parts, start + (part + 1) * n // parts


def tars_covering(counts: list[int], start: int, end: int) -> list[tuple[int, int, int]]:
    """(tar index, first sample in it, samples to take) for the tars that hold [start, end)."""
    out, offset = [], 0
    for i, n in enumerate(counts):
        lo, hi = max(start, offset), min(end, offset + n)
        if lo < hi:
            out.append((i, lo - offset, hi - lo))
        offset += n
    return out
