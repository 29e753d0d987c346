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
    """Per-row tensors of one split: ``observed`` (regime view), ``full`` (clean), ``embedding``."""

    observed: torch.Tensor  # (N, L) int8
    full: torch.Tensor  # (N, L) int8
    embedding: torch.Tensor | None = None  # (N, D) float16

    @property
    def num_rows(self) -> int:
        return self.full.shape[0]

    def join(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = rows.to(self.full.device, non_blocking=True)
        out = {"row": rows, "observed": self.observed[rows], "full": self.full[rows]}
        if self.embedding is not None:
            out["embedding"] = self.embedding[rows].float()
        return out


def read_row_table(
    ss: ShardSet, split: str, regime: str, device: torch.device, embeddings: str | None = None
) -> RowTable:
    """Reads the split's label tables (and embeddings) and puts them on ``device``."""
    observed = ss.observed_labels(regime, split)
    full = ss.full_labels(split)
    table = RowTable(
        torch.from_numpy(observed).to(device),
        torch.from_numpy(full).to(device),
    )
    if embeddings is not None:
        arr = emb.read_split(ss.root, embeddings, split)
        if arr.shape[0] != full.shape[0]:
            raise WsmlError(
                f"cached embeddings {embeddings!r} have {arr.shape[0]} rows for split {split}, "
                f"its label table has {full.shape[0]}: cache them again"
            )
        table.embedding = torch.from_numpy(np.array(arr)).to(device)  # read the memmap once
    return table
