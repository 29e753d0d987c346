"""OpenImages-shaped synthetic data for ``cli.py bench train --annotations K``: ragged labels
(about K human labels an image over the classes, 60% positive, the rest explicit negatives,
every other entry unknown; class frequencies long-tailed, Zipf-like) and features written as an
on-disk float16 ``.npy`` read back as a memory map, so the benchmark holds what a real run
holds. A benchmark's input, not a test fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shards.lists import LabelLists, Lists

CHUNK = 1 << 15  # rows generated at a time
POSITIVE_SHARE = 0.6
ZIPF = 0.9  # class c is drawn with weight (c + 1) ** -ZIPF


def synthetic_labels(rows: int, classes: int, annotations: float, rng) -> LabelLists:
    """About ``annotations`` labels per image (1 + Poisson(K - 1) draws; a class drawn twice
    for a row counts once, so a little fewer: 7.4 for K = 8 over 500 classes), each
    positive with probability 0.6, else an explicit negative."""
    weights = (np.arange(classes) + 1.0) ** -ZIPF
    per_row = 1 + rng.poisson(max(0.0, annotations - 1), rows)
    owner = np.repeat(np.arange(rows, dtype=np.int64), per_row)
    cls = rng.choice(classes, size=len(owner), p=weights / weights.sum())
    keys = np.unique(owner * classes + cls)  # one label per (row, class), sorted by row
    owner, cls = keys // classes, keys % classes
    positive = rng.random(len(keys)) < POSITIVE_SHARE
    lists = []
    for mask in (positive, ~positive):
        offsets = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner[mask], minlength=rows), out=offsets[1:])
        lists.append(Lists(offsets, cls[mask]))
    return LabelLists(lists[0], lists[1], classes)


def synthetic_features(path: Path, labels: LabelLists, dim: int, proj: torch.Tensor, rng):
    """(N, dim) float16 features carrying the positives (their classes' directions plus
    noise), appended to the file a chunk at a time (plain writes, not a writable map, so the
    written pages never count in this process's RSS); returned as a read-only memory map."""
    n = len(labels)
    pos = labels.positives
    with open(path, "wb") as f:
        header = {"descr": "<f2", "fortran_order": False, "shape": (n, dim)}
        np.lib.format.write_array_header_1_0(f, header)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            x = torch.from_numpy(rng.standard_normal((hi - lo, dim), dtype=np.float32)) * 3
            a, b = pos.offsets[lo], pos.offsets[hi]
            owner = np.repeat(np.arange(hi - lo), np.diff(pos.offsets[lo : hi + 1]))
            x.index_add_(0, torch.from_numpy(owner), proj[torch.from_numpy(pos.values[a:b])])
            f.write((x / x.norm(dim=1, keepdim=True)).half().numpy().tobytes())
    return np.load(path, mmap_mode="r")


def create_sparse_splits(
    rows: dict[str, int], dim: int, classes: int, annotations: float, folder: Path
) -> dict[str, dict]:
    """Every split's memory-mapped features and ragged labels (observed = the human labels,
    as OpenImages' partial labels are)."""
    rng = np.random.default_rng(0)
    proj = torch.from_numpy(rng.standard_normal((classes, dim), dtype=np.float32))
    splits = {}
    for name, n in rows.items():
        labels = synthetic_labels(n, classes, annotations, rng)
        x = synthetic_features(folder / f"{name}.npy", labels, dim, proj, rng)
        splits[name] = {"input": x, "observed": labels, "full": labels}
    return splits
