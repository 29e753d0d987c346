"""Writes the Parquet side of a shard set: label tables per split, the official-split tables
(the field's formatted matrices) and observed views derived from them by a label regime."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from shards.fileio import write_json_atomic
from shards.images import target_size
from shards.regimes import REGIME_KIND, OfficialLabels, Partial, SinglePositive
from shards.scan import MISSING
from shards.tables import label_columns, list_column, lists_from_column, read_table, write_table


def write_official_and_label_tables(
    out: Path, source, scans, splits, report, max_side=None
) -> dict:
    """Write ``labels/<split>.parquet`` and ``labels/official/<name>.parquet``; return their
    entries for the manifest (path, rows, sha256)."""
    entries = {}
    placement: dict[int, dict[int, tuple[str, int]]] = {i: {} for i in range(len(source.splits))}
    for rows in splits:
        recs, scan = source.splits[rows.official].records, scans[rows.official]
        sel = [recs[j] for j in rows.records.tolist()]
        dims = [
            target_size(int(scan.width[j]), int(scan.height[j]), max_side)
            for j in rows.records.tolist()
        ]
        cols = {
            "row": pa.array(np.arange(len(sel), dtype=np.int64)),
            "key": pa.array(rows.keys, pa.string()),
            "source_id": pa.array([r.source_id for r in sel], pa.string()),
            "path": pa.array([os.path.relpath(r.path, source.root) for r in sel], pa.string()),
            "width": pa.array([d[0] for d in dims], pa.int32()),
            "height": pa.array([d[1] for d in dims], pa.int32()),
            **label_columns(
                [r.positives for r in sel],
                None if source.complete_labels else [r.negatives for r in sel],
            ),
            "source_index": pa.array(rows.records.astype(np.int64)),
        }
        if source.notes.get("has_difficult"):
            cols["difficult"] = list_column([r.difficult for r in sel])
        rel = f"labels/{rows.name}.parquet"
        entries[rows.name] = {"path": rel, "rows": len(sel), "sha256": write_table(out / rel, cols)}
        for row, j in enumerate(rows.records.tolist()):
            placement[rows.official][j] = (rows.name, row)
    for i, split in enumerate(source.splits):
        present = np.flatnonzero(scans[i].status != MISSING).tolist()
        recs, place = split.records, placement[i]
        cols = {
            "index": pa.array(present, pa.int64()),
            "source_id": pa.array([recs[j].source_id for j in present], pa.string()),
            **label_columns(
                [recs[j].positives for j in present],
                None if source.complete_labels else [recs[j].negatives for j in present],
            ),
            "split": pa.array([place.get(j, (None, None))[0] for j in present], pa.string()),
            "row": pa.array([place.get(j, (None, None))[1] for j in present], pa.int64()),
        }
        rel = f"labels/official/{split.name}.parquet"
        entries[f"official/{split.name}"] = {
            "path": rel,
            "rows": len(present),
            "sha256": write_table(out / rel, cols),
        }
    return entries


def read_official_labels(path: Path, num_classes: int) -> tuple[OfficialLabels, pa.Table]:
    table = read_table(path)
    labels = OfficialLabels(
        positives=lists_from_column(table["positives"]),
        negatives=lists_from_column(table["negatives"]),
        num_classes=num_classes,
    )
    return labels, table


def write_regime_view(out: Path, regime: SinglePositive | Partial, num_classes: int) -> dict:
    """Generate a regime on every official split and write ``observed/<view>/<split>.parquet``;
    ``regime.json`` is written last and marks the view complete. Tars are never touched."""
    view = regime.view_name()
    folder = out / "observed" / view
    splits = {}
    for path in sorted((out / "labels" / "official").glob("*.parquet")):
        labels, table = read_official_labels(path, num_classes)
        pos, neg = regime.generate(labels)
        split_col = table["split"].to_pylist()
        row_col = table["row"].to_pylist()
        for name in sorted({s for s in split_col if s is not None}):
            sel = [
                (r, k) for k, (s, r) in enumerate(zip(split_col, row_col, strict=True)) if s == name
            ]
            sel.sort()
            ks = [k for _, k in sel]
            cols = {
                "row": pa.array([r for r, _ in sel], pa.int64()),
                **label_columns([pos[k] for k in ks], [neg[k] for k in ks]),
            }
            rel = f"observed/{view}/{name}.parquet"
            splits[name] = {"path": rel, "rows": len(sel), "sha256": write_table(out / rel, cols)}
    meta = {
        "view": view,
        "regime": REGIME_KIND[type(regime)],
        "params": asdict(regime),
        "splits": splits,
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "regime.json", meta)
    return meta
