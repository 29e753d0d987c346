"""Labels and embeddings joined to batches by row, from tensors held in memory (on the training
device), so the tars carry only the image and its row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shards import embeddings as emb
from shards.errors import WsmlError
from shards.shardset import ShardSet


@dataclass
class RowTable:
    """Per-row tensors of one split: ``observed`` (regime view), ``full`` (clean), ``embedding``;
    without labels (``labels=False``: encoders that only need images) just the row count."""

    num_rows: int
    device: torch.device
    observed: torch.Tensor | None = None  # (N, L) int8
    full: torch.Tensor | None = None  # (N, L) int8
    embedding: torch.Tensor | None = None  # (N, D) float16

    def join(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = rows.to(self.device, non_blocking=True)
        out = {"row": rows}
        if self.full is not None:
            out["observed"], out["full"] = self.observed[rows], self.full[rows]
        if self.embedding is not None:
            out["embedding"] = self.embedding[rows].float()
        return out


def read_row_table(
    ss: ShardSet,
    split: str,
    regime: str,
    device: torch.device,
    embeddings: str | None = None,
    labels: bool = True,
) -> RowTable:
    """Reads the split's label tables (and embeddings) and puts them on ``device``."""
    rows = int(ss.split(split)["labels"]["rows"])
    table = RowTable(rows, device)
    if labels:
        table.observed = torch.from_numpy(ss.observed_labels(regime, split)).to(device)
        table.full = torch.from_numpy(ss.full_labels(split)).to(device)
        rows = table.full.shape[0]
    if embeddings is not None:
        arr = emb.read_split(ss.root, embeddings, split)
        if arr.shape[0] != rows:
            raise WsmlError(
                f"cached embeddings {embeddings!r} have {arr.shape[0]} rows for split {split}, "
                f"its label table has {rows}: cache them again"
            )
        table.embedding = torch.from_numpy(np.array(arr)).to(device)  # read the memmap once
    return table
