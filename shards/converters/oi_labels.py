"""Streamed reading of Open Images CSVs with pyarrow: 64-bit image ids and flat label arrays,
every bad row named by its line number."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shards.base.errors import WsmlError
from shards.lists import Lists

if TYPE_CHECKING:  # pyarrow is imported where it is used: a conversion's workers fork without it
    import pyarrow as pa
    import pyarrow.csv as pacsv

ANNOTATION_COLUMNS = ["ImageID", "Source", "LabelName", "Confidence"]
BLOCK = 1 << 24  # bytes of CSV parsed at a time


def read_descriptions(path: Path, header: bool = False) -> dict[str, str]:
    """MID -> description of class-descriptions.csv (V3: no header; V6/V7: a header line)."""
    import pyarrow.csv as pacsv

    opts = pacsv.ReadOptions(
        column_names=["mid", "name"], use_threads=False, skip_rows=1 if header else 0
    )
    table = _read_csv(path, opts)
    return dict(zip(table["mid"].to_pylist(), table["name"].to_pylist(), strict=True))


def _read_csv(path: Path, read: pacsv.ReadOptions, **convert) -> pa.Table:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    bad: list = []
    parse = pacsv.ParseOptions(invalid_row_handler=lambda row: bad.append(row) or "skip")
    try:
        table = pacsv.read_csv(
            path,
            read_options=read,
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(**convert),
        )
    except pa.ArrowInvalid as e:
        raise WsmlError(f"{path}: {e}") from None
    if bad:
        raise WsmlError(
            f"{path}:{bad[0].number}: malformed row {bad[0].text!r} "
            f"({bad[0].actual_columns} fields, expected {bad[0].expected_columns})"
        )
    return table


def hex_ids(col: pa.Array, path: Path, first_line: int) -> np.ndarray:
    """16-hex-digit ImageIDs -> uint64 (vectorised: no Python string per row)."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if col.null_count:
        k = int(np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False))[0])
        raise WsmlError(f"{path}:{first_line + k}: empty ImageID")
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + len(col) + 1]
    bad = np.flatnonzero(np.diff(offsets) != 16)
    if len(bad):
        k = int(bad[0])
        raise WsmlError(f"{path}:{first_line + k}: ImageID {col[k].as_py()!r} is not 16 hex digits")
    if not len(col):
        return np.zeros(0, np.uint64)
    digits = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    nib = _NIBBLE[digits].reshape(-1, 16)
    if (nib > 15).any():
        k = int(np.flatnonzero((nib > 15).any(1))[0])
        raise WsmlError(f"{path}:{first_line + k}: ImageID {col[k].as_py()!r} is not 16 hex digits")
    weights = (np.uint64(16) ** np.arange(15, -1, -1, dtype=np.uint64)).astype(np.uint64)
    return (nib.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _batches(path: Path, columns: list[str]):
    """(first line number, record batch) of a CSV with a header, streamed; a malformed row
    fails with its line number."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    bad: list = []
    parse = pacsv.ParseOptions(invalid_row_handler=lambda row: bad.append(row) or "skip")
    read = pacsv.ReadOptions(use_threads=False, block_size=BLOCK)
    convert = pacsv.ConvertOptions(
        include_columns=columns, column_types={c: pa.string() for c in columns}
    )
    try:
        reader = pacsv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=convert
        )
        line = 2
        for batch in reader:
            if bad:
                break
            yield line, batch
            line += batch.num_rows
    except (pa.ArrowInvalid, KeyError) as e:
        raise WsmlError(f"{path}: {e}") from None
    if bad:
        raise WsmlError(
            f"{path}:{bad[0].number}: malformed row {bad[0].text!r} "
            f"({bad[0].actual_columns} fields, expected {bad[0].expected_columns})"
        )


def read_image_ids(path: Path) -> np.ndarray:
    """The sorted ImageIDs of an images.csv."""
    parts = [hex_ids(b.column(0), path, line) for line, b in _batches(path, ["ImageID"])]
    ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        dup = ids[1:][ids[1:] == ids[:-1]][0]
        raise WsmlError(f"{path}: ImageID {int(dup):016x} is listed twice")
    return ids


def read_human_labels(path: Path, mids: list[str], known: dict, listed: np.ndarray | None):
    """(image ids, positives, negatives) of the images with a human label on a trainable class,
    in ascending ImageID order; a class both verified and rejected counts as positive.
    ``listed``: the split's image list that every ImageID must be in (None: no such list)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    trainable = pa.array(mids)
    all_mids = pa.array(list(known))
    ids_parts, cls_parts, pos_parts = [], [], []
    for line, batch in _batches(path, ANNOTATION_COLUMNS):
        ids = hex_ids(batch.column("ImageID"), path, line)
        labels, conf = batch.column("LabelName"), batch.column("Confidence")
        _check_batch(path, line, ids, labels, conf, listed, all_mids)
        cls = pc.index_in(labels, value_set=trainable)
        keep = cls.is_valid().to_numpy(zero_copy_only=False)
        ids_parts.append(ids[keep])
        cls_parts.append(cls.to_numpy(zero_copy_only=False)[keep].astype(np.int32))
        positive = pc.is_in(conf, value_set=pa.array(["1", "1.0"]))
        pos_parts.append(positive.to_numpy(zero_copy_only=False)[keep])
    return _group(ids_parts, cls_parts, pos_parts, len(mids))


def _check_batch(path, line, ids, labels, conf, listed, all_mids) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    ok_conf = pc.is_in(conf, value_set=pa.array(["0", "1", "0.0", "1.0"])).to_numpy(
        zero_copy_only=False
    )
    if not ok_conf.all():
        k = int(np.flatnonzero(~ok_conf)[0])
        raise WsmlError(
            f"{path}:{line + k}: confidence {conf[k].as_py()!r} is not 0 or 1 "
            "(human-verified labels are binary)"
        )
    ok_mid = pc.is_in(labels, value_set=all_mids).to_numpy(zero_copy_only=False)
    if not ok_mid.all():
        k = int(np.flatnonzero(~ok_mid)[0])
        raise WsmlError(
            f"{path}:{line + k}: unknown class id {labels[k].as_py()!r} "
            "(not in class-descriptions.csv)"
        )
    if listed is None:
        return
    at = np.searchsorted(listed, ids)
    found = (at < len(listed)) & (listed[np.minimum(at, len(listed) - 1)] == ids)
    if len(listed) == 0 or not found.all():
        k = int(np.flatnonzero(~found)[0]) if len(listed) else 0
        raise WsmlError(f"{path}:{line + k}: ImageID {int(ids[k]):016x} is not in images.csv")


def _group(ids_parts, cls_parts, pos_parts, num_classes: int):
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.uint64)
    cls = np.concatenate(cls_parts) if cls_parts else np.zeros(0, np.int32)
    pos = np.concatenate(pos_parts) if pos_parts else np.zeros(0, bool)
    order = np.lexsort((~pos, cls, ids))  # per image, per class: a positive first
    ids, cls, pos = ids[order], cls[order], pos[order]
    first = np.ones(len(ids), bool)
    first[1:] = (ids[1:] != ids[:-1]) | (cls[1:] != cls[:-1])  # one label per (image, class)
    ids, cls, pos = ids[first], cls[first], pos[first]
    starts = np.ones(len(ids), bool)
    starts[1:] = ids[1:] != ids[:-1]
    uniq, group = ids[starts], np.cumsum(starts) - 1  # ids are sorted: groups are runs
    return uniq, _csr(group[pos], cls[pos], len(uniq)), _csr(group[~pos], cls[~pos], len(uniq))


def _csr(group: np.ndarray, values: np.ndarray, n: int) -> Lists:
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(group, minlength=n), out=offsets[1:])
    return Lists(offsets, values.astype(np.int64))
