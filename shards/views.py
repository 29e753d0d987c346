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
from shards.lists import Lists
from shards.regimes import REGIME_KIND, OfficialLabels, Partial, SinglePositive
from shards.scan import MISSING
from shards.tables import from_arrow, label_columns, read_table, to_arrow, write_table


def _labels(source, records: list) -> dict[str, pa.Array]:
    pos = Lists.from_rows(r.positives for r in records)
    neg = None if source.complete_labels else Lists.from_rows(r.negatives for r in records)
    return label_columns(pos, neg)


def write_official_and_label_tables(
    out: Path, source, scans, splits, report, max_side=None
) -> dict:
    """Write ``labels/<split>.parquet`` and ``labels/official/<name>.parquet``; return their
    entries for the manifest (path, rows, sha256)."""
    entries = {}
    split_of = [np.full(len(s.records), -1, np.int64) for s in source.splits]  # split index
    row_of = [np.full(len(s.records), -1, np.int64) for s in source.splits]
    for k, rows in enumerate(splits):
        recs, scan = source.splits[rows.official].records, scans[rows.official]
        idx = rows.records
        sel = [recs[j] for j in idx.tolist()]
        dims = [
            target_size(int(w), int(h), max_side)
            for w, h in zip(scan.width[idx], scan.height[idx], strict=True)
        ]
        cols = {
            "row": pa.array(np.arange(len(sel), dtype=np.int64)),
            "key": pa.array(rows.keys, pa.string()),
            "source_id": pa.array([r.source_id for r in sel], pa.string()),
            "path": pa.array([os.path.relpath(r.path, source.root) for r in sel], pa.string()),
            "width": pa.array([d[0] for d in dims], pa.int32()),
            "height": pa.array([d[1] for d in dims], pa.int32()),
            **_labels(source, sel),
            "source_index": pa.array(idx.astype(np.int64)),
        }
        if source.notes.get("has_difficult"):
            cols["difficult"] = to_arrow(Lists.from_rows(r.difficult for r in sel))
        rel = f"labels/{rows.name}.parquet"
        entries[rows.name] = {"path": rel, "rows": len(sel), "sha256": write_table(out / rel, cols)}
        split_of[rows.official][idx] = k
        row_of[rows.official][idx] = np.arange(len(idx))
    names = np.array([s.name for s in splits] + [None], dtype=object)
    for i, split in enumerate(source.splits):
        present = np.flatnonzero(scans[i].status != MISSING)
        placed = row_of[i][present] >= 0
        cols = {
            "index": pa.array(present.astype(np.int64)),
            "source_id": pa.array(
                [split.records[j].source_id for j in present.tolist()], pa.string()
            ),
            **_labels(source, [split.records[j] for j in present.tolist()]),
            "split": pa.array(names[split_of[i][present]].tolist(), pa.string()),
            "row": pa.array(row_of[i][present], pa.int64(), mask=~placed),
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
        from_arrow(table["positives"]), from_arrow(table["negatives"]), num_classes
    )
    return labels, table


def write_regime_view(out: Path, regime: SinglePositive | Partial, num_classes: int) -> dict:
    """Generate a regime on every official split and write ``observed/<view>/<split>.parquet``;
    ``regime.json`` is written last and marks the view complete. Tars are never touched."""
    view = regime.view_name()
    splits = {}
    for path in sorted((out / "labels" / "official").glob("*.parquet")):
        labels, table = read_official_labels(path, num_classes)
        pos, neg = regime.generate(labels)
        split_col = np.array(table["split"].to_pylist(), dtype=object)
        row_col = table["row"].to_numpy(zero_copy_only=False)
        for name in sorted({s for s in split_col.tolist() if s is not None}):
            at = np.flatnonzero(split_col == name)
            at = at[np.argsort(row_col[at], kind="stable")]
            cols = {
                "row": pa.array(row_col[at].astype(np.int64)),
                **label_columns(pos.take(at), neg.take(at)),
            }
            rel = f"observed/{view}/{name}.parquet"
            splits[name] = {"path": rel, "rows": len(at), "sha256": write_table(out / rel, cols)}
    meta = {
        "view": view,
        "regime": REGIME_KIND[type(regime)],
        "params": asdict(regime),
        "splits": splits,
    }
    (out / "observed" / view).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "observed" / view / "regime.json", meta)
    return meta
