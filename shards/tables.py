"""Parquet label tables: ``labels/<split>.parquet``, ``labels/official/<name>.parquet`` and the
observed views ``observed/<regime>/<split>.parquet``. Labels are sparse lists of class indices,
so a 9M x 5,000 source never becomes a dense matrix on disk."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards.fileio import write_bytes_atomic

INDEX_LIST = pa.list_(pa.int32())


def _list_array(values: Sequence[Sequence[int] | np.ndarray | None]) -> pa.Array:
    """Lists of class indices (``None`` stays null) as a pyarrow list<int32> array."""
    mask = [v is None for v in values]
    lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = [np.asarray(v, dtype=np.int32) for v in values if v is not None and len(v)]
    flat_arr = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(flat_arr, type=pa.int32()), mask=pa.array(mask)
    )


def label_columns(positives: Sequence, negatives: Sequence | None) -> dict[str, pa.Array]:
    cols = {"positives": _list_array(positives)}
    cols["negatives"] = (
        pa.nulls(len(positives), INDEX_LIST) if negatives is None else _list_array(negatives)
    )
    return cols


def list_column(values: Sequence) -> pa.Array:
    return _list_array(values)


def write_table(path: Path, columns: dict[str, pa.Array | Sequence]) -> str:
    """Write a Parquet table atomically (deterministic bytes for equal content); return sha256."""
    import hashlib

    table = pa.table(columns)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=False)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=list(columns) if columns else None)


def lists_from_column(col: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    """list<int32> column -> python list of int64 arrays (None where null)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[bounds[i] : bounds[i + 1]] if valid[i] else None for i in range(len(col))]


def dense_labels(
    positives: pa.ChunkedArray | pa.Array,
    negatives: pa.ChunkedArray | pa.Array,
    num_classes: int,
    fill: int,
) -> np.ndarray:
    """int8 (N, L) matrix: 1 at positives, -1 at negatives, ``fill`` elsewhere; a null negatives
    entry makes every other class of that row -1 (a fully annotated source)."""
    pos = positives.combine_chunks() if isinstance(positives, pa.ChunkedArray) else positives
    neg = negatives.combine_chunks() if isinstance(negatives, pa.ChunkedArray) else negatives
    n = len(pos)
    out = np.full((n, num_classes), fill, dtype=np.int8)
    complete = ~neg.is_valid().to_numpy(zero_copy_only=False)
    out[complete] = -1
    _scatter(out, neg, -1)
    _scatter(out, pos, 1)
    return out


def _scatter(out: np.ndarray, col: pa.Array, value: int) -> None:
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    out[rows, flat] = value
