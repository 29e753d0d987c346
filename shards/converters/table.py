"""``table``: your own multi-label data, from a CSV, TSV or Parquet file of one row per image.

Columns (names set with ``-o``):
- ``path``: the image, relative to ``--root``;
- labels, in one of two forms: a ``labels`` column of class names joined by ``separator`` (a
  blank cell: no positive; every class not named is a negative), or one column per class
  (every column but the path and split columns) holding ``1`` (positive), ``0`` or ``-1``
  (negative) or blank (unknown, so a partially labelled source works as is);
- ``split`` (optional): ``train``, ``val`` or ``test``. Without it every row is in train, cut
  into train/val by ``--val-frac``; ``-o test_frac=F`` first sets aside a random fraction F
  (seeded by ``test_seed``) as test. With it, a train split is cut by ``--val-frac`` unless the
  file has val rows.

Classes: ``-o classes=FILE`` (one name a line, in class-index order); else the sorted set of
names in the labels column, or the class columns in file order. Rows keep the file's order.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.errors import WsmlError
from shards.source import (
    ConverterInfo,
    OfficialSplit,
    Record,
    Source,
    fingerprint_files,
    register_converter,
    require_dir,
    require_file,
)

SPLITS = ("train", "val", "test")  # split value -> official split of that role


@dataclass(frozen=True)
class TableOptions:
    file: str = ""  # relative to --root (or absolute); default: labels.csv|.tsv|.parquet there
    path_column: str = "path"
    labels_column: str = ""  # default: "labels" if the file has one, else one column per class
    separator: str = " "  # between class names in the labels column
    split_column: str = ""  # default: "split" if the file has one
    classes: str = ""  # a file of class names, one a line
    test_frac: float = 0.0  # without a split column: this fraction of the rows -> test
    test_seed: int = 1200


@dataclass(frozen=True)
class _Rows:
    """The file as columns of strings ("" for blank), and how to name a row in errors."""

    path: Path
    columns: dict[str, list[str]]
    first_line: int  # CSV/TSV: data rows start at line 2; Parquet: row numbers from 1

    def where(self, i: int) -> str:
        return f"{self.path.name} {'line' if self.first_line == 2 else 'row'} {i + self.first_line}"


def open_table(root: Path, opts: TableOptions) -> Source:
    require_dir(root, "the image folder (--root)")
    table = _read_file(_find_file(root, opts.file))
    paths = _paths(root, table, opts.path_column)
    split_col = opts.split_column or ("split" if "split" in table.columns else "")
    labels_col = opts.labels_column or ("labels" if "labels" in table.columns else "")
    for name in filter(None, (split_col, labels_col)):
        if name not in table.columns:
            raise WsmlError(f"{table.path.name} has no column {name!r}; columns: {list(table.columns)}")  # fmt: skip
    given = _read_classes(root / opts.classes) if opts.classes else None
    if labels_col:
        classes, positives = _from_names(table, labels_col, opts.separator, given)
        negatives = [None] * len(paths)
    else:
        class_cols = [c for c in table.columns if c not in (opts.path_column, split_col)]
        classes, positives, negatives = _from_columns(table, class_cols, given)
    complete = all(n is None for n in negatives)
    roles = _roles(table, split_col, opts, len(paths))
    splits = []
    for role in SPLITS:
        idx = [i for i, r in enumerate(roles) if r == role]
        records = tuple(
            Record(rel, str(root / rel), os.path.splitext(rel)[0].replace("/", "_"),
                   positives[i], negatives[i])
            for i in idx
            for rel in (paths[i],)
        )  # fmt: skip
        if records:
            splits.append(OfficialSplit(role, role, records))
    if not any(s.role == "train" for s in splits):
        raise WsmlError(f"{table.path.name} has no train rows; mark some with split=train")
    extra = [opts.separator, labels_col, split_col, str(opts.test_frac), str(opts.test_seed)]
    used = [table.path] + ([root / opts.classes] if opts.classes else [])
    return Source(
        dataset="table",
        root=str(root.resolve()),
        classes=tuple(classes),
        splits=tuple(splits),
        fingerprint=fingerprint_files(used, extra),
        complete_labels=complete,
        notes={"labels_file": str(table.path)},
    )


DEFAULT_FILES = ("labels.csv", "labels.tsv", "labels.parquet")


def _find_file(root: Path, given: str) -> Path:
    if given:
        return require_file(root / given, "the labels file (-o file=)")
    found = [root / n for n in DEFAULT_FILES if (root / n).is_file()]
    if len(found) != 1:
        raise WsmlError(
            f"expected one of {', '.join(DEFAULT_FILES)} in {root}, found {len(found)}; "
            "name the labels file with -o file="
        )
    return found[0]


def _read_file(path: Path) -> _Rows:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        data = pq.read_table(path).to_pydict()
        columns = {k: [_cell(v) for v in vals] for k, vals in data.items()}
        rows = _Rows(path, columns, 1)
    elif suffix in (".csv", ".tsv", ".txt"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")
            header = next(reader, None)
            body = list(reader)
        if header is None:
            raise WsmlError(f"{path} is empty; expected a header line and one row per image")
        bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
        if bad is not None:
            raise WsmlError(f"{path.name} line {bad + 2} has {len(body[bad])} cells, the header {len(header)}")  # fmt: skip
        header = [h.strip() for h in header]
        columns = {h: [r[k].strip() for r in body] for k, h in enumerate(header)}
        rows = _Rows(path, columns, 2)
    else:
        raise WsmlError(f"{path}: expected a .csv, .tsv or .parquet labels file")
    if not rows.columns or not next(iter(rows.columns.values())):
        raise WsmlError(f"{path} has no rows; expected one row per image")
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _paths(root: Path, table: _Rows, column: str) -> list[str]:
    if column not in table.columns:
        raise WsmlError(
            f"{table.path.name} has no path column {column!r}; columns: {list(table.columns)} "
            "(name it with -o path_column=)"
        )
    seen: dict[str, int] = {}
    paths = table.columns[column]
    for i, rel in enumerate(paths):
        if not rel:
            raise WsmlError(f"{table.where(i)}: empty path")
        if rel in seen:
            raise WsmlError(f"{table.where(i)}: duplicate path {rel!r} (also {table.where(seen[rel])})")  # fmt: skip
        seen[rel] = i
        if not (root / rel).is_file():
            raise WsmlError(f"{table.where(i)}: image {rel!r} not found under {root}")
    return paths


def _read_classes(path: Path) -> list[str]:
    names = [s.strip() for s in require_file(path, "the classes file").read_text().splitlines()]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise WsmlError(f"{path}: expected distinct class names, one a line")
    return names


def _from_names(table: _Rows, column: str, sep: str, given: list[str] | None):
    cells = [[n for n in c.split(sep) if n.strip()] if c else [] for c in table.columns[column]]
    cells = [[n.strip() for n in c] for c in cells]
    classes = given or sorted({n for c in cells for n in c})
    if not classes:
        raise WsmlError(f"{table.path.name}: the {column} column names no class")
    index = {n: k for k, n in enumerate(classes)}
    positives = []
    for i, names in enumerate(cells):
        unknown = [n for n in names if n not in index]
        if unknown:
            raise WsmlError(f"{table.where(i)}: class {unknown[0]!r} is not in the classes file")
        positives.append(tuple(sorted({index[n] for n in names})))
    return classes, positives


_VALUES = {"1": 1, "0": -1, "-1": -1, "": 0}


def _from_columns(table: _Rows, class_cols: list[str], given: list[str] | None):
    if not class_cols:
        raise WsmlError(f"{table.path.name} has no class columns and no labels column")
    if given is not None and sorted(given) != sorted(class_cols):
        extra = sorted(set(class_cols) ^ set(given))
        raise WsmlError(f"the classes file and the class columns of {table.path.name} differ: {extra}")  # fmt: skip
    classes = given or class_cols
    n = len(table.columns[class_cols[0]])
    dense = np.zeros((n, len(classes)), np.int8)
    for k, name in enumerate(classes):
        for i, cell in enumerate(table.columns[name]):
            value = _VALUES.get(cell[:-2] if cell.endswith(".0") else cell)
            if value is None:
                raise WsmlError(f"{table.where(i)}: column {name!r} holds {cell!r}; expected 1, 0, -1 or blank")  # fmt: skip
            dense[i, k] = value
    complete = not (dense == 0).any()
    positives = [tuple(np.flatnonzero(r == 1).tolist()) for r in dense]
    negatives = [None if complete else tuple(np.flatnonzero(r == -1).tolist()) for r in dense]
    return classes, positives, negatives


def _roles(table: _Rows, split_col: str, opts: TableOptions, n: int) -> list[str]:
    if split_col:
        if opts.test_frac:
            raise WsmlError("-o test_frac applies without a split column; drop one of them")
        values = table.columns[split_col]
        for i, v in enumerate(values):
            if v not in SPLITS:
                raise WsmlError(f"{table.where(i)}: split {v!r} is not one of {', '.join(SPLITS)}")
        return list(values)
    if not 0.0 <= opts.test_frac < 1.0:
        raise WsmlError(f"-o test_frac must be in [0, 1), got {opts.test_frac}")
    roles = ["train"] * n
    test = np.random.RandomState(opts.test_seed).permutation(n)[: round(opts.test_frac * n)]
    for i in test.tolist():
        roles[i] = "test"
    return roles


register_converter(
    ConverterInfo(
        "table",
        "your own labels: a CSV/TSV/Parquet file of image paths and labels",
        TableOptions,
        open_table,
    )
)
