"""Parquet label tables: ``labels/<split>.parquet``, ``labels/official/<name>.parquet`` and the
observed views ``observed/<regime>/<split>.parquet``. Labels are sparse lists of class indices,
so a 9M x 5,000 source never becomes a dense matrix on disk."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.base.fileio import publish, removed_on_error, tmp_path_for
from shards.lists import Lists

INDEX_LIST = pa.list_(pa.int32())


def to_arrow(lists: Lists) -> pa.Array:
    """Lists -> a pyarrow list<int32> array (null rows stay null). Built from its buffers:
    ``ListArray.from_arrays(mask=...)`` imports pyarrow.compute, 60 ms that every conversion
    and reader would pay (this module uses no pyarrow.compute or pyarrow.dataset)."""
    n = len(lists)
    values = pa.array(lists.values.astype(np.int32), type=pa.int32())
    offsets = pa.py_buffer(lists.offsets.astype(np.int32).tobytes())
    if lists.valid is None or lists.valid.all():
        return pa.Array.from_buffers(INDEX_LIST, n, [None, offsets], children=[values])
    bitmap = pa.py_buffer(np.packbits(lists.valid, bitorder="little").tobytes())
    nulls = int(n - lists.valid.sum())
    return pa.Array.from_buffers(
        INDEX_LIST, n, [bitmap, offsets], null_count=nulls, children=[values]
    )


def validity(col: pa.Array) -> np.ndarray | None:
    """bool (N,) of a (non-chunked) array's valid rows; None when none is null."""
    if not col.null_count:
        return None
    bitmap = np.frombuffer(col.buffers()[0], np.uint8)
    bits = np.unpackbits(bitmap, bitorder="little")
    return bits[col.offset : col.offset + len(col)].astype(bool)


def _list_parts(col: pa.ChunkedArray | pa.Array):
    """(values, lengths, valid) of a list column: every row's values in order (null rows hold
    none, even where values back them), each row's length, and the valid rows (None: all)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = col.offsets.to_numpy().astype(np.int64)  # the array's own slice of them
    values = col.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    lengths, valid = np.diff(offsets), validity(col)
    if valid is not None and lengths[~valid].any():  # null rows backed by values: drop them
        values = values[np.repeat(valid, lengths)]
        lengths = np.where(valid, lengths, 0)
    return values, lengths, valid


def from_arrow(col: pa.ChunkedArray | pa.Array) -> Lists:
    """A list column -> Lists (a null row is empty, and invalid in ``valid``)."""
    values, lengths, valid = _list_parts(col)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Lists(offsets, values.astype(np.int64), valid)


def list_values(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Every value of a list column, row after row (null rows hold none): what
    ``pyarrow.compute.list_flatten`` gives."""
    return _list_parts(col)[0]


def label_columns(positives: Lists, negatives: Lists | None) -> dict[str, pa.Array]:
    """``positives`` and ``negatives`` columns; ``negatives=None``: all null (complete labels)."""
    neg = Lists.nulls(len(positives)) if negatives is None else negatives
    return {"positives": to_arrow(positives), "negatives": to_arrow(neg)}


ROW_GROUP = 4096  # rows per Parquet row group; tables are written (and built) a group at a time


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it."""

    def __init__(self, f):
        self._f, self.sha = f, hashlib.sha256()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._f.write(b)
        self.sha.update(b)
        self._pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self._pos


def write_table(
    path: Path,
    num_rows: int,
    columns: Callable[[int, int], dict[str, pa.Array | Sequence]],
    durable: bool = True,
) -> str:
    """Write a Parquet table atomically, one row group at a time (``columns(start, stop)`` builds
    the rows of one group), so memory stays bounded; equal content gives equal bytes. Returns
    the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    with removed_on_error(tmp, path), open(tmp, "wb") as raw:
        f = _HashingFile(raw)
        writer = None
        for start in range(0, max(num_rows, 1), ROW_GROUP):
            table = pa.table(columns(start, min(num_rows, start + ROW_GROUP)))
            if writer is None:
                writer = pq.ParquetWriter(
                    f, table.schema, compression="zstd", write_statistics=False
                )
            writer.write_table(table, row_group_size=ROW_GROUP)
        writer.close()
    publish(tmp, path, durable)
    return f.sha.hexdigest()


def read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file (``pq.ParquetFile``: ``pq.read_table`` imports pyarrow.dataset)."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=list(columns) if columns else None)


def read_checked_table(root: Path, entry: dict, num_classes: int, recorded_in: str) -> pa.Table:
    """A label table or view read only if its bytes match the sha256 ``recorded_in`` gives,
    its rows are ``0..rows-1`` once each and its class indices lie in ``[0, num_classes)``:
    a changed or corrupted table is never trained on."""
    from shards.base.errors import WsmlError

    path = Path(root) / entry["path"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WsmlError(f"cannot read label table {path}: {e.strerror or e}") from None
    want = entry.get("sha256")
    if want and hashlib.sha256(data).hexdigest() != want:
        raise WsmlError(
            f"{path} does not match the sha256 in {Path(root) / recorded_in}: it was changed "
            "or corrupted after it was written; run `cli.py verify` and convert again"
        )
    try:
        with pq.ParquetFile(pa.BufferReader(data)) as f:
            table = f.read()
    except (pa.ArrowException, OSError) as e:
        raise WsmlError(f"{path} is not a readable Parquet table ({e})") from None
    check_rows(path, table, int(entry.get("rows", table.num_rows)), num_classes)
    return table


def check_rows(path: Path, table: pa.Table, rows: int, num_classes: int) -> None:
    """Rows ``0..rows-1`` each once, in order; class indices in range."""
    from shards.base.errors import WsmlError

    if table.num_rows != rows:
        raise WsmlError(f"{path} has {table.num_rows} rows, its record says {rows}")
    if "row" in table.column_names:
        got = table["row"].to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(got != np.arange(rows))
        if len(bad):
            raise WsmlError(
                f"{path}: row ids are not 0..{rows - 1} once each (position {bad[0]} holds "
                f"{got[bad[0]]}); the table is corrupt: convert again"
            )
    for name in ("positives", "negatives"):
        if name not in table.column_names:
            continue
        values = list_values(table[name])
        bad = values[(values < 0) | (values >= num_classes)]
        if len(bad):
            raise WsmlError(
                f"{path}: column {name} holds class index {int(bad[0])}, outside "
                f"0..{num_classes - 1}; the table is corrupt: convert again"
            )
