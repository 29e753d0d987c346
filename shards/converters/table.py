"""``table``: your own multi-label data, from a CSV, TSV or Parquet file of one row per image
(walk-through: ``docs/own-data.md``).

Columns (names set with ``-o``):
- ``path``: the image, relative to ``--root`` (an absolute path, or one through ``..``, is
  refused);
- labels, in one of two forms, never both in one file:
  - a ``labels`` column of class names joined by ``separator`` (a Parquet list column holds the
    names as a list); a blank cell: no positive; every class not named is a negative;
  - one column per class (every column but the path, split, box and ``ignore`` columns) holding
    ``1`` (positive), ``0`` or ``-1`` (negative) or blank (unknown: a partially labelled source
    works as is);
- ``split`` (optional): ``train``, ``val`` or ``test``. Without it every row is in train, cut
  into train/val by ``--val-frac``; ``-o test_frac=F`` first sets aside a random fraction F
  (seeded by ``test_seed``) as test. With it, a train split is cut by ``--val-frac`` unless the
  file has val rows;
- ``size_weight`` / ``location_weight`` (optional): per positive class, its boxes' summed area
  over the image's and summed 1/distance from box centre to image centre (``shards.bias``, as
  the COCO converter stores them), one number per positive in the order the row names them.

Classes: ``-o classes=FILE`` (one name a line, in class-index order); else the sorted set of
names in the labels column, or the class columns in file order. Rows are taken in path order
before anything is drawn, so the test and val draws depend on the set of rows, not on the
order a script wrote them: a shuffled file gives the same shard set, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from shards.base.errors import WsmlError
from shards.bias import BOX_COLUMNS
from shards.convert.source import (
    ConverterInfo,
    OfficialSplit,
    Record,
    Source,
    register_converter,
    require_dir,
)
from shards.table_file import Cell, TableFile, find_table_file, read_class_list, read_table_file

SPLITS = ("train", "val", "test")  # split value -> official split of that role
BOXES = tuple(BOX_COLUMNS.values())  # optional per-positive weight columns
COMMON_SEPARATORS = (",", ";", "|", "\t", " ")
_OPTION = {" ": "-o separator=space", "\t": "-o separator=tab", ",": "-o separator=,"}
_NAMED = {"space": " ", "tab": "\t", "\\t": "\t"}


@dataclass(frozen=True)
class TableOptions:
    file: str = ""  # relative to --root (or absolute); default: labels.csv|.tsv|.parquet there
    path_column: str = "path"
    labels_column: str = ""  # default: "labels" if the file has one, else one column per class
    separator: str = " "  # between class names in the labels column: a character, space or tab
    split_column: str = ""  # default: "split" if the file has one
    classes: str = ""  # a file of class names, one a line
    ignore: tuple[str, ...] = ()  # columns that are neither labels nor classes (e.g. notes)
    test_frac: float = 0.0  # without a split column: this fraction of the rows -> test
    test_seed: int = 1200


@dataclass(frozen=True)
class _Columns:
    """What each column of the file is."""

    path: str
    split: str
    labels: str  # "" in the class-columns form
    classes: tuple[str, ...]  # the class columns ("" labels) in file order
    boxes: tuple[str, ...]  # the box-weight columns present


@dataclass(frozen=True)
class _Labels:
    classes: list[str]
    positives: list[tuple[int, ...]]  # sorted class indices
    negatives: list[tuple[int, ...] | None]  # None: every other class is negative
    named: list[list[int]]  # per row, its positives in the order the row names them


def open_table(root: Path, opts: TableOptions) -> Source:
    require_dir(root, "the image folder (--root)")
    table = read_table_file(find_table_file(root, opts.file))
    sep = _separator(opts.separator)
    cols = _columns(table, opts)
    paths = _paths(root, table, cols.path)
    given = read_class_list(root / opts.classes) if opts.classes else None
    if cols.labels:
        labels = _from_names(table, cols.labels, sep, given)
    else:
        labels = _from_columns(table, cols.classes, given)
    extras = _box_extras(table, cols.boxes, labels, sep)
    order = sorted(range(len(paths)), key=paths.__getitem__)  # the file's order plays no part
    roles = _roles(table, cols.split, opts, order)
    splits = []
    for role in SPLITS:
        records = tuple(
            Record(paths[i], str(root / paths[i]), os.path.splitext(paths[i])[0].replace("/", "_"),
                   labels.positives[i], labels.negatives[i], extras[i])
            for i in order
            if roles[i] == role
        )  # fmt: skip
        if records:
            splits.append(OfficialSplit(role, role, records))
    if not any(s.role == "train" for s in splits):
        raise WsmlError(f"{table.path.name} has no train rows; mark some with split=train")
    return Source(
        dataset="table",
        root=str(root.resolve()),
        classes=tuple(labels.classes),
        splits=tuple(splits),
        fingerprint=_fingerprint(labels.classes, splits, cols, opts),
        complete_labels=all(n is None for n in labels.negatives),
        extra_columns=tuple((c, "list<float64>") for c in cols.boxes),
        notes={"labels_file": str(table.path)},
    )


def _separator(text: str) -> str:
    sep = _NAMED.get(text, text)
    if not sep:
        raise WsmlError(
            "-o separator= is empty (spaces around an option's value are dropped): for a space "
            "give -o separator=space, for a tab -o separator=tab"
        )
    return sep


def _option(sep: str) -> str:
    """The ``-o separator=`` that reads ``sep``, quoted for a shell where it must be."""
    return _OPTION.get(sep, f"-o 'separator={sep}'")


def _columns(table: TableFile, opts: TableOptions) -> _Columns:
    names = list(table.columns)
    if opts.path_column not in table.columns:
        raise WsmlError(
            f"{table.path.name} has no path column {opts.path_column!r}; columns: {names} "
            "(name it with -o path_column=)"
        )
    for name in filter(None, (opts.split_column, opts.labels_column, *opts.ignore)):
        if name not in table.columns:
            raise WsmlError(f"{table.path.name} has no column {name!r}; columns: {names}")
    split = opts.split_column or ("split" if "split" in names else "")
    labels = opts.labels_column or ("labels" if "labels" in names else "")
    boxes = tuple(c for c in BOXES if c in names)
    taken = {opts.path_column, split, labels, *boxes, *opts.ignore}
    rest = tuple(c for c in names if c not in taken)
    if labels and rest:
        raise WsmlError(
            f"{table.path.name} has a labels column ({labels!r}) and other columns "
            f"({', '.join(map(repr, rest[:5]))}{', ...' if len(rest) > 5 else ''}), which the "
            "other label form reads as one column per class: keep one form, or skip columns "
            "that are not labels with -o ignore=a,b"
        )
    if not labels and not rest:
        raise WsmlError(f"{table.path.name} has no class columns and no labels column")
    return _Columns(opts.path_column, split, labels, rest, boxes)


def _paths(root: Path, table: TableFile, column: str) -> list[str]:
    """The image paths, relative to ``root`` (``./`` and doubled slashes dropped), each once."""
    seen: dict[str, int] = {}
    paths = []
    for i, cell in enumerate(table.text(column, "path")):
        rel = _relative(cell, table.where(i), root)
        if rel in seen:
            raise WsmlError(f"{table.where(i)}: duplicate path {rel!r} (also {table.where(seen[rel])})")  # fmt: skip
        seen[rel] = i
        if not (root / rel).is_file():
            raise WsmlError(f"{table.where(i)}: image {rel!r} not found under {root}")
        paths.append(rel)
    return paths


def _relative(cell: str, where: str, root: Path) -> str:
    if not cell:
        raise WsmlError(f"{where}: empty path")
    path = PurePosixPath(cell)
    if path.is_absolute() or ".." in path.parts:
        how = "is absolute" if path.is_absolute() else "leads out through '..'"
        raise WsmlError(
            f"{where}: path {cell!r} {how}; paths are relative to --root ({root}): move the "
            "images under it, or choose a --root that holds them"
        )
    return str(path)


def _from_names(table: TableFile, column: str, sep: str, given: list[str] | None) -> _Labels:
    cells = table.columns[column]
    if given is not None:
        bad = next((c for c in given if sep in c), None)
        if bad is not None:
            other = next((s for s in COMMON_SEPARATORS if not any(s in c for c in given)), ";")
            raise WsmlError(
                f"class {bad!r} of the classes file contains the separator {sep!r}, so no "
                f"labels cell could name it: separate the names with another, e.g. {_option(other)}"
            )
    rows = [_split_names(c, sep) for c in cells]
    _check_separators(table, column, cells, rows, sep, set(given or ()))
    classes = given or sorted({n for r in rows for n in r})
    if not classes:
        raise WsmlError(f"{table.path.name}: the {column} column names no class")
    index = {n: k for k, n in enumerate(classes)}
    named = []
    for i, names in enumerate(rows):
        unknown = [n for n in names if n not in index]
        if unknown:
            raise WsmlError(f"{table.where(i)}: class {unknown[0]!r} is not in the classes file")
        named.append([index[n] for n in names])
    positives = [tuple(sorted(set(r))) for r in named]
    return _Labels(classes, positives, [None] * len(rows), named)


def _split_names(cell: Cell, sep: str) -> list[str]:
    names = cell if isinstance(cell, tuple) else cell.split(sep)
    return [n for n in (s.strip() for s in names) if n]


def _check_separators(table: TableFile, column: str, cells, rows, sep: str, known: set) -> None:
    """Refuse a name holding another common separator (``photo,person`` read with a space):
    the row was written with that one, and would silently become a compound class."""
    for i, (cell, names) in enumerate(zip(cells, rows, strict=True)):
        if isinstance(cell, tuple):
            continue  # a list names its classes one by one
        for name in names:
            other = next((s for s in COMMON_SEPARATORS[:4] if s != sep and s in name), None)
            if other is not None and name not in known:
                raise WsmlError(
                    f"{table.where(i)}: the {column} cell {cell!r} holds {other!r}, but class "
                    f"names are split at {sep!r}: pass {_option(other)} if {other!r} "
                    "separates them (or list such names in -o classes=FILE)"
                )


_VALUES = {"1": 1, "0": -1, "-1": -1, "": 0}


def _from_columns(table: TableFile, class_cols: tuple[str, ...], given: list[str] | None) -> _Labels:  # fmt: skip
    if given is not None and sorted(given) != sorted(class_cols):
        extra = sorted(set(class_cols) ^ set(given))
        raise WsmlError(f"the classes file and the class columns of {table.path.name} differ: {extra}")  # fmt: skip
    classes = list(given or class_cols)
    dense = np.zeros((len(table), len(classes)), np.int8)
    for k, name in enumerate(classes):
        for i, cell in enumerate(table.text(name, "class")):
            value = _VALUES.get(cell[:-2] if cell.endswith(".0") else cell)
            if value is None:
                raise WsmlError(f"{table.where(i)}: column {name!r} holds {cell!r}; expected 1, 0, -1 or blank")  # fmt: skip
            dense[i, k] = value
    complete = not (dense == 0).any()
    positives = [tuple(np.flatnonzero(r == 1).tolist()) for r in dense]
    negatives = [None if complete else tuple(np.flatnonzero(r == -1).tolist()) for r in dense]
    in_file = [classes.index(c) for c in class_cols]  # a row names its positives left to right
    named = [[k for k in in_file if r[k] == 1] for r in dense]
    return _Labels(classes, positives, negatives, named)


def _box_extras(table: TableFile, boxes: tuple[str, ...], labels: _Labels, sep: str) -> list:
    """Per row, one tuple per box column: its numbers reordered to the sorted positives."""
    columns = []
    for column in boxes:
        values = []
        for i, (cell, named) in enumerate(zip(table.columns[column], labels.named, strict=True)):
            numbers = _numbers(cell, sep, table.where(i), column)
            if len(numbers) != len(named) or len(set(named)) != len(named):
                shown = ", ".join(labels.classes[k] for k in named) or "none"
                raise WsmlError(
                    f"{table.where(i)}: {column} holds {len(numbers)} number(s) for the row's "
                    f"positives ({shown}); give one per positive, each class once, in the order "
                    "the row names them"
                )
            by_class = dict(zip(named, numbers, strict=True))
            values.append(tuple(by_class[k] for k in sorted(by_class)))
        columns.append(values)
    return [tuple(c[i] for c in columns) for i in range(len(table))]


def _numbers(cell: Cell, sep: str, where: str, column: str) -> list[float]:
    out = []
    for text in _split_names(cell, sep):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise WsmlError(f"{where}: {column} holds {text!r}; expected numbers >= 0")
        out.append(value)
    return out


def _roles(table: TableFile, split_col: str, opts: TableOptions, order: list[int]) -> list[str]:
    """Each row's split; the test draw is over the rows in path order."""
    if split_col:
        if opts.test_frac:
            raise WsmlError("-o test_frac applies without a split column; drop one of them")
        values = table.text(split_col, "split")
        for i, v in enumerate(values):
            if v not in SPLITS:
                raise WsmlError(f"{table.where(i)}: split {v!r} is not one of {', '.join(SPLITS)}")
        return list(values)
    if not 0.0 <= opts.test_frac < 1.0:
        raise WsmlError(f"-o test_frac must be in [0, 1), got {opts.test_frac}")
    n = len(order)
    roles = ["train"] * n
    test = np.random.RandomState(opts.test_seed).permutation(n)[: round(opts.test_frac * n)]
    for k in test.tolist():
        roles[order[k]] = "test"
    return roles


def _fingerprint(classes: list[str], splits: list[OfficialSplit], cols: _Columns, opts) -> str:
    """sha256 of what the file says (classes, and every record in path order) and the options
    that read it, not of its bytes: the same rows in another order are the same source."""
    h = hashlib.sha256(json.dumps([classes, cols.boxes, opts.test_frac, opts.test_seed]).encode())
    for split in splits:
        for r in split.records:
            h.update(json.dumps([split.name, r.source_id, r.positives, r.negatives, r.extra]).encode())  # fmt: skip
    return h.hexdigest()


register_converter(
    ConverterInfo(
        "table",
        "your own labels: a CSV/TSV/Parquet file of image paths and labels",
        TableOptions,
        open_table,
    )
)
