"""What a converter hands to the writer: a validated source with classes and records.

Converters only read. ``open(root, options)`` checks the layout before anything is returned
and raises :class:`WsmlError` naming the expected file; records are plain values, in the
field's formatted order for each official split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.base.errors import WsmlError
from shards.base.fileio import leaves_folder
from shards.base.options import parse_fields
from shards.base.registry import Registry
from shards.lists import Lists


@dataclass(frozen=True, slots=True)
class Record:
    """One image of an official split. ``negatives=None`` means every other class is negative."""

    source_id: str  # id in the source (COCO image id, VOC image name, ...)
    path: str  # absolute path of the image file
    key_hint: str  # readable basis for the tar key (sanitised by the writer)
    positives: tuple[int, ...]
    negatives: tuple[int, ...] | None = None
    extra: tuple = ()  # values of the source's extra columns (Source.extra_columns), in order


class RecordList(Sequence):
    """Records of an official split, read by columns for a set of indices (the writer's view).

    This plain form holds :class:`Record` objects; large sources (OpenImages) provide the same
    methods over arrays instead, so no per-image object needs to exist."""

    def __init__(self, items: Sequence[Record]):
        self._items = tuple(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def paths(self, idx: Sequence[int]) -> list[str]:
        return [self._items[i].path for i in idx]

    def key_hints(self, idx: Sequence[int]) -> list[str]:
        return [self._items[i].key_hint for i in idx]

    def source_ids(self, idx: Sequence[int]) -> list[str]:
        return [self._items[i].source_id for i in idx]

    def labels(self, idx: Sequence[int]) -> tuple[Lists, Lists]:
        """Positives and negatives of the rows ``idx`` (a null negatives row: all others)."""
        rows = [self._items[i] for i in idx]
        return Lists.from_rows(r.positives for r in rows), Lists.from_rows(
            r.negatives for r in rows
        )

    def extras(self, k: int, idx: Sequence[int]) -> list:
        return [self._items[i].extra[k] for i in idx]


@dataclass(frozen=True)
class OfficialSplit:
    """An official split of the source and its role: ``train`` is cut into train/val (unless the
    source has a ``val`` split of its own), ``val`` and ``test`` are kept as they are."""

    name: str
    role: str  # "train" | "val" | "test"
    records: Sequence[Record]  # a RecordList, or any object with its methods
    missing: tuple[str, ...] = ()  # source ids whose image is absent (sources that allow it)

    def __post_init__(self):
        if not hasattr(self.records, "paths"):
            object.__setattr__(self, "records", RecordList(self.records))


@dataclass(frozen=True)
class Source:
    """A validated raw dataset: classes, official splits and what identifies its content."""

    dataset: str
    root: str
    classes: tuple[str, ...]
    splits: tuple[OfficialSplit, ...]
    fingerprint: str  # sha256 over the annotation files and the image list
    complete_labels: bool = True  # every class not positive is a negative
    groups: tuple[str, ...] | None = None  # class group of each class, where the source has one
    notes: dict[str, Any] = field(default_factory=dict)
    # what else the source says per image, as label-table columns: (name, type) with type one
    # of EXTRA_TYPES, e.g. ("difficult", "list<int32>") for VOC, ("species", "int32") for CUB
    extra_columns: tuple[tuple[str, str], ...] = ()
    default_regimes: tuple[str, ...] | None = None  # observed views made unless asked otherwise

    def __post_init__(self):
        check_class_names(self.classes, self.dataset)


FAMILIES = ("voc", "coco", "nus", "cub", "openimages")
# Between class names wherever a list of labels is written as text (predict's CSV and terminal
# lines); a class name containing it is refused at shard time.
LABEL_SEPARATOR = ";"
EXTRA_TYPES = ("int32", "int64", "string", "list<int32>", "list<float64>")


def check_class_names(classes: Sequence[str], dataset: str) -> None:
    """Refuse a class name containing :data:`LABEL_SEPARATOR`: a list of labels written as text
    could not be read back. Every converter's source passes here, before anything is written."""
    bad = next((c for c in classes if LABEL_SEPARATOR in c), None)
    if bad is not None:
        raise WsmlError(
            f"class {bad!r} of the {dataset} source contains {LABEL_SEPARATOR!r}, the separator "
            "of label lists written as text (predict's CSV); rename the class in the source's "
            "class list or annotations"
        )


@dataclass(frozen=True)
class ConverterInfo:
    """Registry entry of a converter: its name, options dataclass and the function that opens a root."""

    name: str
    description: str
    options: type
    open: Callable[[Path, Any], Source]
    allows_missing_images: bool = False
    family: str = (
        "default"  # whose papers' protocol defaults apply (voc, coco, nus, cub, openimages)
    )


CONVERTERS: Registry[ConverterInfo] = Registry("dataset")


def register_converter(info: ConverterInfo) -> ConverterInfo:
    return CONVERTERS.register(info)


def dataset_family(dataset: str | None) -> str:
    """The protocol family of a dataset (a converter's name, as manifests record it:
    ``voc2012`` -> ``voc``); a family name maps to itself, anything else (own data) to
    ``default``."""
    import shards.converters  # noqa: F401  (registers them)

    if dataset in CONVERTERS:
        return CONVERTERS.get(dataset).family
    return dataset if dataset in FAMILIES else "default"


def parse_options(options_cls: type, raw: dict[str, str], what: str) -> Any:
    """Build an options dataclass from ``key=value`` strings; unknown keys fail listing the valid ones."""
    return options_cls(**parse_fields(options_cls, raw, what))


def fingerprint_files(paths: Sequence[Path], extra: Sequence[str] = ()) -> str:
    """sha256 over the named files' bytes (by relative order given) and extra strings."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    for s in extra:
        h.update(s.encode() + b"\0")
    return h.hexdigest()


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise WsmlError(f"expected {what} at {path}, but it {_absent(path)}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise WsmlError(f"expected {what} at {path}, but it {_absent(path)}")
    return path


def _absent(path: Path) -> str:
    return (
        "is not a folder"
        if path.exists() and not path.is_dir()
        else ("is a folder" if path.is_dir() else "does not exist")
    )


def check_duplicates(ids: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise WsmlError(f"duplicate id {i!r} in {where}")
        seen.add(i)


def read_utf8(path: Path) -> str:
    """A source's text file, which must be UTF-8: otherwise an error naming the file and the
    line of the first byte that is not."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise WsmlError(
            f"{path}, line {line}: bytes that are not UTF-8 ({data[e.start : e.end]!r}); "
            "save the file as UTF-8"
        ) from None


def check_name(name: str, where: str) -> str:
    """A file name from a source's annotations that can be a path and a tar member name (a JSON
    ``\\udcXX`` escape of a non-UTF-8 byte cannot) and stays in its image folder (an absolute
    name or one with ``..`` would read a file the dataset does not hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise WsmlError(
            f"{where}: file name {name.encode('utf-8', 'backslashreplace').decode()!r} is not "
            "valid UTF-8 (an undecodable byte); rename the file and fix the annotation"
        ) from None
    if leaves_folder(name):
        raise WsmlError(
            f"{where}: file name {name!r} is absolute or leaves the image folder (..); name "
            "the images relative to it"
        )
    return name
