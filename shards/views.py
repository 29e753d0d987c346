"""Writes the Parquet side of a shard set: label tables per split, the official-split tables
(the field's formatted matrices) and observed views derived from them by a label regime."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from shards.base.errors import WsmlError
from shards.base.fileio import write_json_atomic
from shards.bias import BOX_COLUMNS
from shards.convert.images import target_size
from shards.convert.scan import MISSING
from shards.convert.source import EXTRA_TYPES
from shards.lists import Lists
from shards.regimes import REGIME_KIND, REGIMES, OfficialLabels, Regime
from shards.tables import (
    from_arrow,
    label_columns,
    list_values,
    read_table,
    to_arrow,
    write_table,
)

OFFICIAL_EXTRAS = tuple(BOX_COLUMNS.values())  # extra columns the official tables carry too


def _labels(source, records, idx: list[int]) -> dict[str, pa.Array]:
    pos, neg = records.labels(idx)
    return label_columns(pos, None if source.complete_labels else neg)


def _split_columns(source, rows, scan, max_side):
    """Builds the label-table columns of rows[start:stop] of one split."""
    recs = source.splits[rows.official].records
    root = os.path.join(source.root, "")

    def columns(start: int, stop: int) -> dict:
        idx = rows.records[start:stop]
        ids = idx.tolist()
        dims = [
            target_size(int(w), int(h), max_side)
            for w, h in zip(scan.width[idx], scan.height[idx], strict=True)
        ]
        cols = {
            "row": pa.array(np.arange(start, stop, dtype=np.int64)),
            "key": pa.array(rows.keys(ids), pa.string()),
            "source_id": pa.array(recs.source_ids(ids), pa.string()),
            "path": pa.array([_relative(p, root) for p in recs.paths(ids)], pa.string()),
            "width": pa.array([d[0] for d in dims], pa.int32()),
            "height": pa.array([d[1] for d in dims], pa.int32()),
            **_labels(source, recs, ids),
            "source_index": pa.array(idx.astype(np.int64)),
        }
        for k, (name, typ) in enumerate(source.extra_columns):
            cols[name] = _extra_column(recs.extras(k, ids), typ)
        return cols

    return columns


def _extra_column(values: list, typ: str) -> pa.Array:
    if typ == "list<int32>":
        return to_arrow(Lists.from_rows(values))
    if typ == "list<float64>":
        return pa.array([list(v) for v in values], pa.list_(pa.float64()))
    if typ not in EXTRA_TYPES:
        raise ValueError(f"extra column type {typ!r} is not one of {EXTRA_TYPES}")
    return pa.array(values, {"int32": pa.int32(), "int64": pa.int64(), "string": pa.string()}[typ])


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` (which ends with a separator); relpath is 20x slower."""
    return path[len(root) :] if path.startswith(root) else os.path.relpath(path, root)


def _official_columns(source, i, present, split_names, split_of, row_of):
    """Builds the columns of rows[start:stop] of one official split's formatted table."""
    recs = source.splits[i].records

    def columns(start: int, stop: int) -> dict:
        idx = present[start:stop]
        rows = row_of[idx]
        cols = {
            "index": pa.array(idx.astype(np.int64)),
            "source_id": pa.array(recs.source_ids(idx.tolist()), pa.string()),
            **_labels(source, recs, idx.tolist()),
            "split": pa.array(split_names[split_of[idx]].tolist(), pa.string()),
            "row": pa.array(rows, pa.int64(), mask=rows < 0),
        }
        for k, (name, typ) in enumerate(source.extra_columns):
            if name in OFFICIAL_EXTRAS:
                cols[name] = _extra_column(recs.extras(k, idx.tolist()), typ)
        return cols

    return columns


def _missing_columns(source, i, missing):
    recs, root = source.splits[i].records, os.path.join(source.root, "")

    def columns(start: int, stop: int) -> dict:
        ids = missing[start:stop].tolist()
        return {
            "source_id": pa.array(recs.source_ids(ids), pa.string()),
            "path": pa.array([_relative(p, root) for p in recs.paths(ids)], pa.string()),
        }

    return columns


def write_official_and_label_tables(
    out: Path, source, scans, splits, max_side=None, durable: bool = True
) -> dict:
    """Write ``labels/<split>.parquet``, ``labels/official/<name>.parquet`` (and
    ``<name>-missing.parquet`` where images are missing); return their manifest entries."""
    entries = {}
    split_of = [np.full(len(s.records), -1, np.int64) for s in source.splits]  # split index
    row_of = [np.full(len(s.records), -1, np.int64) for s in source.splits]
    for k, rows in enumerate(splits):
        n, rel = len(rows.records), f"labels/{rows.name}.parquet"
        columns = _split_columns(source, rows, scans[rows.official], max_side)
        entries[rows.name] = {
            "path": rel,
            "rows": n,
            "sha256": write_table(out / rel, n, columns, durable),
        }
        split_of[rows.official][rows.records] = k
        row_of[rows.official][rows.records] = np.arange(n)
    names = np.array([s.name for s in splits] + [None], dtype=object)  # index -1: not placed
    for i, split in enumerate(source.splits):
        present = np.flatnonzero(scans[i].status != MISSING)
        columns = _official_columns(source, i, present, names, split_of[i], row_of[i])
        rel = f"labels/official/{split.name}.parquet"
        sha = write_table(out / rel, len(present), columns, durable)
        entries[f"official/{split.name}"] = {"path": rel, "rows": len(present), "sha256": sha}
        missing = np.flatnonzero(scans[i].status == MISSING)
        if len(missing):
            rel = f"labels/official/{split.name}-missing.parquet"
            sha = write_table(
                out / rel, len(missing), _missing_columns(source, i, missing), durable
            )
            entries[f"official/{split.name}-missing"] = {
                "path": rel,
                "rows": len(missing),
                "sha256": sha,
            }
    return entries


def read_official_labels(path: Path, num_classes: int) -> tuple[OfficialLabels, pa.Table]:
    table = read_table(path)
    positives = from_arrow(table["positives"])
    columns = {}
    for name in OFFICIAL_EXTRAS:
        if name in table.column_names:
            values = list_values(table[name]).astype(np.float64)
            if len(values) != len(positives.values):
                raise WsmlError(f"{path}: column {name} is not aligned with positives")
            columns[name] = values
    labels = OfficialLabels(positives, from_arrow(table["negatives"]), num_classes, columns)
    return labels, table


def write_regime_view(out: Path, regime: Regime, num_classes: int, durable: bool = True) -> dict:
    """Generate a regime on every official split and write ``observed/<view>/<split>.parquet``;
    ``regime.json`` is written last and marks the view complete. Tars are never touched.
    Refused before anything is written: a name that holds a view of other parameters, and a
    train split with no observed positive (a run on it would learn nothing)."""
    view, kind, params = regime.view_name(), REGIME_KIND[type(regime)], asdict(regime)
    check_view_name(out, view, params)
    drawn = []  # (split, its rows of the official table, row column, positives, negatives)
    official = sorted((out / "labels" / "official").glob("*.parquet"))
    for path in [p for p in official if not p.stem.endswith("-missing")]:
        labels, table = read_official_labels(path, num_classes)
        pos, neg = regime.generate(labels)
        split_col = np.array(table["split"].to_pylist(), dtype=object)
        row_col = table["row"].to_numpy(zero_copy_only=False)
        for name in sorted({s for s in split_col.tolist() if s is not None}):
            at = np.flatnonzero(split_col == name)
            drawn.append((name, at[np.argsort(row_col[at], kind="stable")], row_col, pos, neg))
    for name, at, _, pos, neg in drawn:
        if name == "train":
            check_view_labels(out, view, _count(pos, at), _count(neg, at), len(at))
    splits = {}
    for name, at, row_col, pos, neg in drawn:
        rel = f"observed/{view}/{name}.parquet"
        sha = write_table(out / rel, len(at), _view_columns(at, row_col, pos, neg), durable)
        splits[name] = {"path": rel, "rows": len(at), "sha256": sha}
    meta = {
        "view": view,
        "regime": kind,
        "trains_as": REGIMES.get(kind).trains_as or kind,
        "params": params,
        "splits": splits,
    }
    (out / "observed" / view).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "observed" / view / "regime.json", meta, durable)
    return meta


def _count(lists: Lists, at: np.ndarray) -> int:
    return int((lists.offsets[at + 1] - lists.offsets[at]).sum())


def check_view_name(out: Path, view: str, params: dict) -> None:
    """A view's name must identify its parameters: a second view of other parameters under the
    same name (another semantic bias's class weights) is refused, not written over the first."""
    path = Path(out) / "observed" / view / "regime.json"
    try:
        held = json.loads(path.read_text()).get("params")
    except (OSError, ValueError, AttributeError):
        return  # none, or not a view: written afresh
    ours = json.loads(json.dumps(params))
    if held != ours:
        differ = ", ".join(
            k for k in sorted(set(held or {}) | set(ours)) if (held or {}).get(k) != ours.get(k)
        )
        raise WsmlError(
            f"observed/{view} of {out} holds a view made with other parameters (differing: "
            f"{differ}), which its name does not tell apart: remove that folder to replace "
            "it, or give this view another --seed"
        )


def check_view_labels(root: Path, view: str, positives: int, negatives: int, rows: int) -> None:
    """A view whose train split keeps no positive label trains nothing, yet a run on it would
    end and be ranked: refused, as ``shard`` refuses a train split without positives."""
    if positives == 0:
        raise WsmlError(
            f"view {view} of {root} keeps no positive label in its train split ({negatives} "
            f"negatives over {rows} rows): a run on it would learn nothing; make a view that "
            "keeps labels (a larger --fraction, or another regime)"
        )


def _view_columns(at: np.ndarray, row_col: np.ndarray, pos: Lists, neg: Lists):
    def columns(start: int, stop: int) -> dict:
        sel = at[start:stop]
        return {
            "row": pa.array(row_col[sel].astype(np.int64)),
            **label_columns(pos.take(sel), neg.take(sel)),
        }

    return columns
