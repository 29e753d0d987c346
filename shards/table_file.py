"""The ``table`` converter's labels file read as columns of cells: a CSV or TSV (UTF-8, or an
error naming the file and line) or a Parquet file (list columns kept as lists), and a class list.

A cell is a string ("" for blank) or, from a Parquet list column, a tuple of strings.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from shards.base.errors import WsmlError
from shards.convert.source import read_utf8, require_file

Cell = str | tuple[str, ...]
DEFAULT_FILES = ("labels.csv", "labels.tsv", "labels.parquet")


@dataclass(frozen=True)
class TableFile:
    """The file as columns of cells, and how to name a row in errors."""

    path: Path
    columns: dict[str, list[Cell]]
    first_line: int  # CSV/TSV: data rows start at line 2; Parquet: row numbers from 1

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def where(self, i: int) -> str:
        return f"{self.path.name} {'line' if self.first_line == 2 else 'row'} {i + self.first_line}"

    def text(self, column: str, what: str) -> list[str]:
        """A column whose cells must be plain strings (a path or split column)."""
        cells = self.columns[column]
        bad = next((i for i, c in enumerate(cells) if not isinstance(c, str)), None)
        if bad is not None:
            raise WsmlError(
                f"{self.where(bad)}: the {what} column {column!r} holds a list; expected one "
                "value a row"
            )
        return cells  # type: ignore[return-value]


def find_table_file(root: Path, given: str) -> Path:
    """``-o file=`` (relative to ``root``, or absolute), else the one default file there."""
    if given:
        return require_file(root / given, "the labels file (-o file=)")
    found = [root / n for n in DEFAULT_FILES if (root / n).is_file()]
    if len(found) != 1:
        raise WsmlError(
            f"expected one of {', '.join(DEFAULT_FILES)} in {root}, found {len(found)}; "
            "name the labels file with -o file="
        )
    return found[0]


def read_table_file(path: Path) -> TableFile:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        rows = _read_csv(path, "\t" if suffix == ".tsv" else ",")
    else:
        raise WsmlError(f"{path}: expected a .csv, .tsv or .parquet labels file")
    if not rows.columns or not len(rows):
        raise WsmlError(f"{path} has no rows; expected one row per image")
    return rows


def _read_csv(path: Path, delimiter: str) -> TableFile:
    text = read_utf8(path).removeprefix("\ufeff")  # a byte-order mark (spreadsheet exports)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        body = list(reader)
    except csv.Error as e:
        raise WsmlError(f"{path} line {reader.line_num}: {e}") from None
    if header is None:
        raise WsmlError(f"{path} is empty; expected a header line and one row per image")
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise WsmlError(f"{path.name} line {bad + 2} has {len(body[bad])} cells, the header {len(header)}")  # fmt: skip
    header = [h.strip() for h in header]
    _check_header(path, header)
    return TableFile(path, {h: [r[k].strip() for r in body] for k, h in enumerate(header)}, 2)


def _read_parquet(path: Path) -> TableFile:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(path).to_pydict()
    except (pa.ArrowException, OSError) as e:
        raise WsmlError(f"cannot read {path} as Parquet: {e}") from None
    data = {k: v for k, v in data.items() if not k.startswith("__index_level_")}  # pandas'
    _check_header(path, list(data))
    return TableFile(
        path, {k: [_cell(v, path, k, i) for i, v in enumerate(vals)] for k, vals in data.items()}, 1
    )


def _check_header(path: Path, header: list[str]) -> None:
    seen = set()
    for name in header:
        if not name or name in seen:
            what = "an empty" if not name else f"a second {name!r}"
            raise WsmlError(
                f"{path}: the header has {what} column name; name each column once (a pandas "
                "index written as a column has none: to_csv(index=False))"
            )
        seen.add(name)


def _cell(value, path: Path, column: str, i: int) -> Cell:
    """A Parquet value as a cell: a list becomes a tuple of strings, a whole float its integer
    text, bytes their UTF-8 text."""
    if isinstance(value, list):
        return tuple(s for s in (_scalar(v, path, column, i) for v in value) if s)
    return _scalar(value, path, column, i)


def _scalar(value, path: Path, column: str, i: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise WsmlError(
                f"{path.name} row {i + 1}: column {column!r} holds bytes that are not UTF-8"
            ) from None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        raise WsmlError(f"{path.name} row {i + 1}: column {column!r} holds a nested value")
    return str(value).strip()


def read_class_list(path: Path) -> list[str]:
    """``-o classes=FILE``: distinct class names, one a line, in class-index order."""
    text = read_utf8(require_file(path, "the classes file (-o classes=)"))
    names = [n for n in (s.strip() for s in text.removeprefix("\ufeff").splitlines()) if n]
    if not names or len(set(names)) != len(names):
        raise WsmlError(f"{path}: expected distinct class names, one a line")
    return names
