"""CUB-200-2011 with its 312 attribute labels (``cub``), Cole et al.'s ``format_cub.py`` protocol
(METHODS.md §0.1): label = ``is_present`` (certainty ignored), read 312 rows per image in
``images.txt`` order; ``is_train == 1`` -> train (cut into train/val), else -> test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.base.errors import WsmlError
from shards.convert.source import (
    ConverterInfo,
    OfficialSplit,
    Record,
    Source,
    check_name,
    fingerprint_files,
    register_converter,
    require_dir,
    require_file,
)

FOLDER = "CUB_200_2011"
ATTRIBUTE_LABELS = Path("attributes") / "image_attribute_labels.txt"
_MAX_DIGITS = 9  # ids and flags of image_attribute_labels.txt are short non-negative integers


@dataclass(frozen=True)
class CubOptions:
    """No switches: Cole keeps every image and all 312 attributes."""


@dataclass(frozen=True)
class CubLayout:
    """Where the files are: ``base`` holds images.txt, images/ and attributes/."""

    base: Path
    attributes: Path  # attributes.txt (the 312 names)
    kind: str  # "nested" (Cole), "flat" (the tarball) or "folder" (root is CUB_200_2011/)


def open_cub(root: Path, opts: CubOptions) -> Source:
    require_dir(root, "the dataset root")
    layout = find_layout(root)
    base = layout.base
    files = {
        "images": require_file(base / "images.txt", "CUB's image list images.txt"),
        "split": require_file(base / "train_test_split.txt", "CUB's train_test_split.txt"),
        "species": require_file(base / "image_class_labels.txt", "CUB's image_class_labels.txt"),
        "classes": require_file(base / "classes.txt", "CUB's species list classes.txt"),
        "labels": require_file(base / ATTRIBUTE_LABELS, "CUB's attribute labels"),
    }
    images_dir = require_dir(base / "images", "CUB's images/ folder")
    attributes = read_numbered_names(layout.attributes, "attribute")
    species_names = read_numbered_names(files["classes"], "species")
    images = read_images(files["images"])
    ids = list(images)
    is_train = read_split(files["split"], ids, files["images"])
    species = read_species(files["species"], ids, files["images"], len(species_names))
    present = read_attribute_labels(files["labels"], ids, len(attributes))
    splits = []
    for name, role, wanted in (("train", "train", True), ("test", "test", False)):
        rows = np.flatnonzero(is_train == wanted).tolist()
        records = tuple(
            _record(ids[k], images[ids[k]], images_dir, present[k], int(species[k])) for k in rows
        )
        splits.append(OfficialSplit(name, role, records))
    return Source(
        dataset="cub",
        root=str(root.resolve()),
        classes=attributes,
        splits=tuple(splits),
        fingerprint=fingerprint_files([layout.attributes, *files.values()]),
        groups=tuple(attribute_part(a) for a in attributes),
        notes={"layout": layout.kind, "folder": str(base), "species": list(species_names)},
        extra_columns=(("species", "int32"),),
    )


def _record(image_id: int, rel: str, images_dir: Path, row: np.ndarray, species: int) -> Record:
    return Record(
        source_id=str(image_id),
        path=str(images_dir / rel),
        key_hint=Path(rel).stem,
        positives=tuple(np.flatnonzero(row).tolist()),
        negatives=None,
        extra=(species,),
    )


def find_layout(root: Path) -> CubLayout:
    """Cole's nested ``CUB_200_2011/CUB_200_2011/``, the tarball's ``CUB_200_2011/`` or the
    ``CUB_200_2011`` folder itself, told apart by where ``images.txt`` is; ``attributes.txt``
    is looked for next to it, then one level up (where the tarball and Cole put it)."""
    candidates = [
        (root / FOLDER / FOLDER, "nested"),
        (root / FOLDER, "flat"),
        (root, "folder"),
    ]
    found = [(base, kind) for base, kind in candidates if (base / "images.txt").is_file()]
    if not found:
        raise WsmlError(
            f"expected {FOLDER}/images.txt under {root} (or {FOLDER}/{FOLDER}/images.txt, "
            "Cole's layout, or images.txt when --root is the CUB_200_2011 folder itself)"
        )
    if len(found) > 1:
        where = " and ".join(str(base / "images.txt") for base, _ in found)
        raise WsmlError(f"found CUB's images.txt at {where}; point --root at the one to use")
    base, kind = found[0]
    names = [base / "attributes.txt", base.parent / "attributes.txt"]
    names.append(base / "attributes" / "attributes.txt")
    attributes = next((p for p in names if p.is_file()), None)
    if attributes is None:
        raise WsmlError(
            f"expected attributes.txt (the 312 attribute names) at {names[1]} or {names[0]}"
        )
    return CubLayout(base, attributes, kind)


def attribute_part(name: str) -> str:
    """The bird part an attribute describes: the first word after ``has_``
    (``has_bill_shape::dagger`` -> ``bill``, ``has_upper_tail_color::grey`` -> ``upper``)."""
    head = name.split("::", 1)[0].removeprefix("has_")
    return head.split("_", 1)[0]


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of the non-blank lines (LF or CRLF)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise WsmlError(f"{path} is not a UTF-8 text file: {e}") from None
    return [(n, line.split()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def read_id_table(path: Path, what: str) -> dict[int, tuple[int, str]]:
    """``<id> <value>`` lines: id -> (line number, value), in file order; ids unique integers."""
    out: dict[int, tuple[int, str]] = {}
    for n, fields in _lines(path):
        if len(fields) != 2 or not _is_number(fields[0]):
            shown = " ".join(fields)[:120]
            raise WsmlError(f"{path}:{n}: expected '<{what} id> <value>', got {shown!r}")
        key = int(fields[0])
        if key in out:
            raise WsmlError(f"{path}:{n}: duplicate {what} id {key} (first on line {out[key][0]})")
        out[key] = (n, fields[1])
    return out


def read_numbered_names(path: Path, what: str) -> tuple[str, ...]:
    """``attributes.txt`` / ``classes.txt``: names whose ids must run 1..N in order (the class
    index is the id minus one)."""
    table = read_id_table(path, what)
    for k, (key, (n, _)) in enumerate(table.items(), 1):
        if key != k:
            raise WsmlError(
                f"{path}:{n}: expected {what} id {k} (ids run 1..N in order), got {key}"
            )
    if not table:
        raise WsmlError(f"{path} lists no {what}")
    return tuple(name for _, name in table.values())


def read_images(path: Path) -> dict[int, str]:
    """images.txt: image id -> path relative to images/, in file order."""
    table = read_id_table(path, "image")
    if not table:
        raise WsmlError(f"{path} lists no image")
    return {key: check_name(rel, f"{path}:{n}") for key, (n, rel) in table.items()}


def _per_image(path: Path, ids: Sequence[int], images_path: Path) -> list[tuple[int, str]]:
    """A per-image table in images.txt order: (line, value) for each id; the ids must be
    exactly those of images.txt."""
    table = read_id_table(path, "image")
    known = set(ids)
    for key, (n, _) in table.items():
        if key not in known:
            raise WsmlError(f"{path}:{n}: unknown image id {key} (not in {images_path})")
    if len(table) != len(ids):
        lacking = next(i for i in ids if i not in table)
        raise WsmlError(
            f"{path} lists {len(table)} images but {images_path} lists {len(ids)}; "
            f"first image without a line: id {lacking}"
        )
    return [table[i] for i in ids]


def read_split(path: Path, ids: Sequence[int], images_path: Path) -> np.ndarray:
    """train_test_split.txt: bool ``is_train`` per image of images.txt, in its order."""
    out = np.zeros(len(ids), dtype=bool)
    for k, (n, value) in enumerate(_per_image(path, ids, images_path)):
        if value not in ("0", "1"):
            raise WsmlError(f"{path}:{n}: is_train must be 0 or 1, got {value!r}")
        out[k] = value == "1"
    return out


def read_species(path: Path, ids: Sequence[int], images_path: Path, n_species: int) -> np.ndarray:
    """image_class_labels.txt: 0-based species index per image of images.txt, in its order."""
    out = np.zeros(len(ids), dtype=np.int32)
    for k, (n, value) in enumerate(_per_image(path, ids, images_path)):
        if not _is_number(value) or not 1 <= int(value) <= n_species:
            raise WsmlError(
                f"{path}:{n}: unknown species id {value!r}; classes.txt has ids 1..{n_species}"
            )
        out[k] = int(value) - 1
    return out


def read_attribute_labels(path: Path, ids: Sequence[int], num_attributes: int) -> np.ndarray:
    """``image_attribute_labels.txt`` -> bool (images, attributes) ``is_present`` matrix.

    Lines are ``image_id attribute_id is_present certainty_id time``; only the first three
    fields are read (a few real lines carry extra fields). Like Cole, rows must come 312 per
    image (attribute ids 1..312) in images.txt order. Parsed with numpy, not line by line.
    """
    (image, attribute, present), lines = _first_three_ints(path)
    known = np.zeros(max(ids) + 2, dtype=bool)  # the last slot stands for every larger id
    known[np.asarray(ids)] = True
    fail = _failer(path, lines)
    fail(
        ~known[np.minimum(image, len(known) - 1)],
        lambda r: f"unknown image id {image[r]} (not in images.txt)",
    )
    fail(
        (attribute < 1) | (attribute > num_attributes),
        lambda r: f"unknown attribute id {attribute[r]} (attributes.txt has 1..{num_attributes})",
    )
    fail(present > 1, lambda r: f"is_present must be 0 or 1, got {present[r]}")
    _check_order(image, attribute, ids, num_attributes, fail, path)
    return present.reshape(len(ids), num_attributes).astype(bool)


def _check_order(image, attribute, ids, num_attributes: int, fail, path: Path) -> None:
    want = len(ids) * num_attributes
    m = min(len(image), want)
    exp_image = np.repeat(np.asarray(ids, dtype=np.int64), num_attributes)[:m]
    exp_attr = np.tile(np.arange(1, num_attributes + 1, dtype=np.int64), len(ids))[:m]
    fail(
        (image[:m] != exp_image) | (attribute[:m] != exp_attr),
        lambda r: (
            f"expected image id {exp_image[r]} attribute id {exp_attr[r]} ({num_attributes} rows "
            f"per image, in images.txt order), got image id {image[r]} attribute id {attribute[r]}"
        ),
        count=False,  # one row out of place shifts all later ones
    )
    if len(image) < want:
        lacking = ids[len(image) // num_attributes]
        raise WsmlError(
            f"{path} has {len(image)} rows, expected {num_attributes} for each of the {len(ids)} "
            f"images of images.txt ({want}); image id {lacking} is the first without all of them"
        )
    extra = np.zeros(len(image), dtype=bool)
    extra[want:] = True
    fail(extra, lambda r: f"more rows than {num_attributes} per image for the {len(ids)} images")


def _failer(path: Path, lines: np.ndarray):
    """``fail(mask, why)``: raise for the first row where ``mask`` holds, naming its line."""

    def fail(mask: np.ndarray, why, count: bool = True) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            r = int(rows[0])
            more = f" ({len(rows)} such rows)" if count and len(rows) > 1 else ""
            raise WsmlError(f"{path}:{lines[r]}: {why(r)}{more}")

    return fail


def _lookup(chars: tuple[int, ...]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(chars)] = True
    return table


_IS_SPACE = _lookup((32, 9))  # separators within a line
_IS_END = _lookup((10, 13))  # LF and CR end a line
_IS_SPACE_OR_END = _IS_SPACE | _IS_END


def _first_three_ints(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first three fields of every non-blank line as int64 (3, rows) plus each row's
    1-based line number. Scans all lines at once, one byte position per step."""
    size = path.stat().st_size
    buf = np.empty(size + 1, dtype=np.uint8)
    with open(path, "rb") as f:
        if f.readinto(memoryview(buf)[:size]) != size:
            raise WsmlError(f"{path} changed while being read")
    buf[size] = 10  # a final newline stops every scan
    starts = np.concatenate(([0], np.flatnonzero(buf[:size] == 10) + 1))
    pos = _skip(buf, starts.copy(), _IS_SPACE)
    filled = ~_IS_END[buf[pos]]
    pos, starts, lines = pos[filled], starts[filled], np.flatnonzero(filled) + 1

    def malformed(bad: np.ndarray) -> None:
        _failer(path, lines)(
            bad,
            lambda r: (
                "expected 'image_id attribute_id is_present certainty_id time', got "
                + repr(bytes(buf[starts[r] : starts[r] + 80]).split(b"\n")[0].decode("latin-1"))
            ),
        )

    cols = np.empty((3, len(pos)), dtype=np.int64)
    for c in range(3):
        if c:
            malformed(~_IS_SPACE[buf[pos]])  # too few fields, or a non-digit in the last
            pos = _skip(buf, pos, _IS_SPACE)
        cols[c], pos, digits = _digits(buf, pos)
        malformed((digits == 0) | (digits > _MAX_DIGITS))
    malformed(~_IS_SPACE_OR_END[buf[pos]])
    return cols, lines


def _skip(buf: np.ndarray, pos: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Advance each position past the bytes ``table`` marks."""
    while True:
        hit = table[buf[pos]]
        if not hit.any():
            return pos
        pos += hit


def _digits(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decimal number at each position: (value, position after it, its digit count)."""
    value = np.zeros(len(pos), dtype=np.int64)
    count = np.zeros(len(pos), dtype=np.int64)
    for _ in range(_MAX_DIGITS + 1):
        digit = buf[pos] - np.uint8(48)  # wraps around below '0'
        hit = digit <= 9
        if not hit.any():
            break
        value = np.where(hit, value * 10 + digit, value)
        pos += hit
        count += hit
    return value, pos, count


register_converter(
    ConverterInfo(
        "cub",
        "CUB-200-2011: 312 attribute labels (Cole et al.)",
        CubOptions,
        open_cub,
        family="cub",
    )
)
