"""Labels and embeddings joined to batches by row, so the tars carry only the image and its row.
Labels stay ragged (offsets + values, as the Parquet tables store them) in host memory, where a
batch's rows are: each batch's entries are picked there (sizes known, so nothing waits on a
device), sent in one non-blocking copy, and made dense on the device, (B, L) only. Embeddings
stay in their cache's memory map; each batch's rows are read from it into pinned memory and
copied to the device without blocking. Rows outside the split fail here, on the host, before
any device op (on a GPU they would be a device-side assert)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.distributed import host_to_device
from shards import caches
from shards.base.errors import WsmlError
from shards.lists import LabelLists
from shards.shardset import ShardSet


def mapped_tensor(arr: np.ndarray) -> torch.Tensor:
    """A zero-copy CPU tensor over an array (a read-only memory map: only ever read, so torch's
    warning about non-writable arrays does not apply); ``index_select`` on it reads only the
    rows' pages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(arr))


def gather_rows(source: torch.Tensor, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``source``'s ``rows`` (CPU tensors; ``source`` e.g. over a memory map) on ``device``:
    on a GPU read straight into pinned memory (torch's, kept alive until the copy is done) and
    copied without blocking."""
    if device.type != "cuda":
        return source.index_select(0, rows).to(device, non_blocking=True)
    out = torch.empty((len(rows), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
    torch.index_select(source, 0, rows, out=out)
    return out.to(device, non_blocking=True)


def check_rows(rows: np.ndarray, num_rows: int, what: str) -> None:
    """Refuse rows outside ``0..num_rows - 1`` (a table that does not match its shards)."""
    if len(rows) and (rows.min() < 0 or rows.max() >= num_rows):
        bad = rows[(rows < 0) | (rows >= num_rows)][:5].tolist()
        raise WsmlError(
            f"{what}: row(s) {', '.join(map(str, bad))} outside its {num_rows} rows; "
            "the shards and their label table disagree (run cli.py verify on the shard set)"
        )


DENSE_BYTES = 16 << 20  # a split's labels at most this large as int8 (N, L) are also kept dense


class DeviceLabels:
    """A split's ragged labels (host memory) made dense on ``device``: ``dense(rows)`` is the
    int8 (B, L) batch, equal to the rows of the dense matrix (1 / 0 unknown / -1). Rows on the
    CPU cost no host sync; rows on a device are brought back first (once per epoch pass). A
    split whose dense matrix is at most ``DENSE_BYTES`` (COCO's 65,665 x 80: 5 MB) keeps it on
    the device too, made once, so a batch is one row gather instead of a few scatter ops (a
    linear step is a few small ops); larger ones (Open Images) stay ragged only, so memory
    follows the annotations."""

    def __init__(self, labels: LabelLists, device: torch.device, what: str = "labels"):
        self.lists, self.device, self.num_classes = labels, device, labels.num_classes
        self.what = what
        full = labels.full_rows()
        self.all_negative = full if full.any() else None
        self.matrix = None
        if len(labels) * labels.num_classes <= DENSE_BYTES:
            self.matrix = self._scattered(np.arange(len(labels), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lists)

    def dense(self, rows: torch.Tensor) -> torch.Tensor:
        idx = rows.cpu().numpy().astype(np.int64, copy=False)
        check_rows(idx, len(self), self.what)
        if self.matrix is not None:
            return self.matrix.index_select(0, host_to_device(torch.from_numpy(idx), self.device))
        return self._scattered(idx)

    def _scattered(self, idx: np.ndarray) -> torch.Tensor:
        part = self.lists.take(idx)
        b, n_cls = len(idx), self.num_classes
        # one int64 copy: the negatives' (row, class), the positives', the all-negative rows
        entries = [_entries(part.negatives), _entries(part.positives)]
        sizes = [len(e) for pair in entries for e in pair]
        full = np.zeros(0, np.int64) if self.all_negative is None else self.all_negative[idx]
        packed = np.concatenate([e for pair in entries for e in pair] + [full.astype(np.int64)])
        on = host_to_device(torch.from_numpy(packed), self.device)
        (neg_r, neg_c, pos_r, pos_c), all_neg = on[: sum(sizes)].split(sizes), on[sum(sizes) :]
        out = torch.zeros((b, n_cls), dtype=torch.int8, device=self.device)
        if self.all_negative is not None:
            out.masked_fill_(all_neg.bool().unsqueeze(1), -1)
        out[neg_r, neg_c] = -1
        out[pos_r, pos_c] = 1
        return out


def _entries(lists) -> tuple[np.ndarray, np.ndarray]:
    """(batch row, class) of every listed entry of a ``take``n part."""
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), np.diff(lists.offsets))
    return rows, lists.values


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
        """The batch's per-row data on the device, from ``rows`` on the CPU (a loader's rows:
        checked against the split here, and used where they are: nothing comes back)."""
        rows = rows.cpu()
        check_rows(rows.numpy(), self.num_rows, "the batch's rows")
        out = {"row": host_to_device(rows, self.device)}
        if self.full is not None:
            out["observed"], out["full"] = self.observed.dense(rows), self.full.dense(rows)
        if self.embedding is not None:
            out["embedding"] = gather_rows(self.embedding, rows, self.device).float()
        if self.crops is not None:
            out["crops"] = gather_rows(self.crops, rows, self.device).float()
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
        where = f"split {split} of {ss.root}"
        table.observed = DeviceLabels(ss.observed_lists(regime, split), device, where)
        table.full = DeviceLabels(ss.full_lists(split), device, where)
        rows = len(table.full)
    if embeddings is not None:
        arr = caches.read_split(ss.root, embeddings, split)
        if arr.shape[0] != rows:
            raise WsmlError(
                f"cached embeddings {embeddings!r} have {arr.shape[0]} rows for split {split}, "
                f"its label table has {rows}: cache them again"
            )
        table.embedding = mapped_tensor(arr)  # each batch reads its rows from the map
        if crops:
            table.crops = mapped_tensor(caches.read_crops(ss.root, embeddings, split))
    return table
