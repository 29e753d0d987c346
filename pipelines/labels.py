"""Labels and embeddings joined to batches by row, so the tars carry only the image and its row.
Labels are held on the training device and stay ragged (offsets + values, as the Parquet tables
store them); each batch is made dense on the device, (B, L) only. Embeddings stay in their
cache's memory map; each batch's rows are read from it and moved to the device."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from shards import embeddings as emb
from shards.errors import WsmlError
from shards.lists import LabelLists, Lists
from shards.shardset import ShardSet


def mapped_tensor(arr: np.ndarray) -> torch.Tensor:
    """A zero-copy CPU tensor over an array (a read-only memory map: only ever read, so torch's
    warning about non-writable arrays does not apply); ``index_select`` on it reads only the
    rows' pages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(arr))


def _on(lists: Lists, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(lists.offsets).to(device), torch.from_numpy(lists.values).to(device)


def _scatter(out: torch.Tensor, lists: tuple, rows: torch.Tensor, value: int) -> None:
    """Writes ``value`` at each of ``rows``' listed classes into ``out`` (B, L)."""
    offsets, values = lists
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return
    local = torch.repeat_interleave(
        torch.arange(len(rows), device=out.device), lengths, output_size=total
    )
    first = torch.cumsum(lengths, 0) - lengths  # where each row's entries start in the batch
    flat = starts[local] + torch.arange(total, device=out.device) - first[local]
    out[local, values[flat]] = value


class DeviceLabels:
    """A split's ragged labels on ``device``; ``dense(rows)`` is the int8 (B, L) batch, equal to
    the rows of the dense matrix (1 / 0 unknown / -1)."""

    def __init__(self, labels: LabelLists, device: torch.device):
        self.lists, self.device, self.num_classes = labels, device, labels.num_classes
        self.positives = _on(labels.positives, device)
        self.negatives = _on(labels.negatives, device)
        full = labels.full_rows()
        self.all_negative = torch.from_numpy(full).to(device) if full.any() else None

    def __len__(self) -> int:
        return len(self.lists)

    def dense(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(self.device)
        out = torch.zeros((len(rows), self.num_classes), dtype=torch.int8, device=self.device)
        if self.all_negative is not None:
            out[self.all_negative[rows]] = -1
        _scatter(out, self.negatives, rows, -1)
        _scatter(out, self.positives, rows, 1)
        return out


@dataclass
class RowTable:
    """Per-row data of one split: ``observed`` (regime view) and ``full`` (clean) labels, ragged,
    ``embedding`` and ``crops`` (its tiles' embeddings); without labels (``labels=False``:
    encoders that only need images) just the row count."""

    num_rows: int
    device: torch.device
    observed: DeviceLabels | None = None
    full: DeviceLabels | None = None
    embedding: torch.Tensor | None = None  # (N, D) float16 over the cache's memory map (CPU)
    crops: torch.Tensor | None = None  # (N, K, D) float16, likewise

    def join(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = rows.to(self.device, non_blocking=True)
        out = {"row": rows}
        if self.full is not None:
            out["observed"], out["full"] = self.observed.dense(rows), self.full.dense(rows)
        if self.embedding is not None:
            picked = self.embedding.index_select(0, rows.cpu())
            out["embedding"] = picked.to(self.device, non_blocking=True).float()
        if self.crops is not None:
            picked = self.crops.index_select(0, rows.cpu())
            out["crops"] = picked.to(self.device, non_blocking=True).float()
        return out


def read_row_table(
    ss: ShardSet,
    split: str,
    regime: str,
    device: torch.device,
    embeddings: str | None = None,
    labels: bool = True,
    crops: bool = False,
) -> RowTable:
    """Reads the split's label tables (and embeddings, and with ``crops`` their tiles') and
    puts them on ``device``."""
    rows = int(ss.split(split)["labels"]["rows"])
    table = RowTable(rows, device)
    if labels:
        table.observed = DeviceLabels(ss.observed_lists(regime, split), device)
        table.full = DeviceLabels(ss.full_lists(split), device)
        rows = len(table.full)
    if embeddings is not None:
        arr = emb.read_split(ss.root, embeddings, split)
        if arr.shape[0] != rows:
            raise WsmlError(
                f"cached embeddings {embeddings!r} have {arr.shape[0]} rows for split {split}, "
                f"its label table has {rows}: cache them again"
            )
        table.embedding = mapped_tensor(arr)  # each batch reads its rows from the map
        if crops:
            table.crops = mapped_tensor(emb.read_crops(ss.root, embeddings, split))
    return table
