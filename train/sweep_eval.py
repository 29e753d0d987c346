"""The sweep's scoring of every member's head sized by annotations: for a source with unknown
labels, each head keeps only the annotated entries' scores, a chunk of rows at a time (no
(N, H L) score matrix); fully labelled sources are scored as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from train.entry_metrics import EntryIndex
from train.evaluate import score, score_entries

CHUNK_ROWS = 4096


def score_heads(
    heads: list[tuple[Tensor, Tensor]], data, split: str, threshold: float, member_probs: Callable
) -> list[dict[str, Any]]:
    """One result per head ((L, D) weight, (L,) bias) on ``split``."""
    labels = data.labels(split)
    if not labels.has_unknown():
        probs = member_probs(heads, data, split)
        return [{**score(p.numpy(), labels, threshold, data.groups), "probs": p} for p in probs]
    index = data.entry_index(split)
    entries = head_entries(heads, data.features[split], index)
    return [score_entries(index, e, threshold, data.groups) for e in entries]


@torch.no_grad()
def head_entries(heads, features: np.ndarray, index: EntryIndex) -> list[np.ndarray]:
    """Every head's scores of the annotated entries, from the memory-mapped features."""
    weight = torch.cat([w for w, _ in heads])  # (H L, D)
    bias = torch.cat([b for _, b in heads])
    out = [np.empty(len(index), dtype=np.float32) for _ in heads]
    for lo in range(0, len(features), CHUNK_ROWS):
        part = torch.from_numpy(np.array(features[lo : lo + CHUNK_ROWS])).to(weight.device)
        probs = torch.sigmoid(torch.addmm(bias, part.float(), weight.T)).cpu().numpy()
        probs = probs.reshape(len(part), len(heads), -1)
        rows = np.arange(lo, lo + len(part))
        for j, o in enumerate(out):
            at, values = index.take(rows, probs[:, j])
            o[at] = values
    return out
