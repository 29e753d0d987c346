"""NUS-WIDE (81 concepts) from the official release (image lists + per-concept label files) or
from the pre-formatted ``formatted_{train,val}_{images,labels}.npy`` that most papers' code uses.
Images live under ``Flickr/``; many are gone from Flickr, so missing ones are skipped and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.base.errors import WsmlError
from shards.convert.source import (
    ConverterInfo,
    OfficialSplit,
    Record,
    Source,
    fingerprint_files,
    register_converter,
    require_dir,
    require_file,
)

# Concepts81.txt, in its order.
NUS_CONCEPTS = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog",
    "earthquake", "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden",
    "glacier", "grass", "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon",
    "mountain", "nighttime", "ocean", "person", "plane", "plants", "police", "protest", "railroad",
    "rainbow", "reflection", "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer",
    "sports", "statue", "street", "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger",
    "tower", "town", "toy", "train", "tree", "valley", "vehicle", "water", "waterfall", "wedding",
    "whales", "window", "zebra",
)  # fmt: skip
# HSPNet's group of each concept (nuswide_super_labels_index.npy over nuswide_super_labels.txt).
NUS_GROUPS = (
    "scene", "object", "scene", "object", "object", "object", "object", "scene", "scene",
    "object", "scene", "object", "scene", "scene", "object", "object", "object", "activity",
    "object", "activity", "object", "activity", "object", "object", "object", "object", "object",
    "scene", "scene", "scene", "scene", "scene", "object", "scene", "scene", "object", "graphics",
    "people", "scene", "scene", "scene", "scene", "people", "object", "scene", "people",
    "activity", "scene", "scene", "scene", "scene", "object", "activity", "object", "object",
    "scene", "scene", "activity", "program", "object", "scene", "object", "scene", "activity",
    "activity", "people", "scene", "object", "object", "scene", "object", "object", "object",
    "scene", "object", "scene", "scene", "activity", "object", "scene", "object",
)  # fmt: skip
GROUP_OF = dict(zip(NUS_CONCEPTS, NUS_GROUPS, strict=True))

CONCEPT_PLACES = ("Concepts81.txt", "ConceptsList/Concepts81.txt", "Groundtruth/Concepts81.txt")
OFFICIAL_LISTS = {"train": ("TrainImagelist.txt", "Train"), "test": ("TestImagelist.txt", "Test")}
FORMATTED = {"train": "formatted_train", "test": "formatted_val"}  # Cole's "val" = official test
ROLES = {"train": "train", "test": "test"}
LAYOUTS = ("official", "formatted")


@dataclass(frozen=True)
class NusOptions:
    layout: str = ""  # official | formatted; default: official if ImageList/ exists, else formatted


@dataclass(frozen=True)
class _Read:
    """What one layout yields: classes, per official split (image paths under Flickr/, 0/1
    matrix), the files read, and notes."""

    classes: tuple[str, ...]
    splits: dict[str, tuple[list[str], np.ndarray]]
    files: list[Path]
    notes: dict


def open_nuswide(root: Path, opts: NusOptions) -> Source:
    """Check and read a NUS-WIDE root in either layout; records keep the file (row) order."""
    require_dir(root, "the dataset root")
    layout = _layout(root, opts.layout)
    flickr = require_dir(
        root / "Flickr", "the image folder Flickr/ (images at Flickr/<folder>/<file>.jpg)"
    ).resolve()
    read = _read_official(root) if layout == "official" else _read_formatted(root)
    _check_disjoint(read.splits)
    splits = tuple(
        _official_split(name, ROLES[name], ids, y, str(flickr))
        for name, (ids, y) in read.splits.items()
    )
    notes = {
        "layout": layout,
        **read.notes,
        "listed": {name: len(ids) for name, (ids, _) in read.splits.items()},
        "without_positive": {name: int((~y.any(1)).sum()) for name, (_, y) in read.splits.items()},
    }
    return Source(
        dataset="nuswide",
        root=str(root.resolve()),
        classes=read.classes,
        splits=splits,
        fingerprint=fingerprint_files(read.files, [layout, *read.classes]),
        groups=tuple(GROUP_OF[c] for c in read.classes),
        notes=notes,
    )


def _layout(root: Path, given: str) -> str:
    if given and given not in LAYOUTS:
        raise WsmlError(f"option layout expects official or formatted, got {given!r}")
    if given:
        return given
    if (root / "ImageList").is_dir():
        return "official"
    if any(root.glob("formatted_*.npy")):
        return "formatted"
    raise WsmlError(
        f"{root} holds neither NUS-WIDE layout: expected the official release "
        "(ImageList/TrainImagelist.txt, ImageList/TestImagelist.txt, "
        "Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt, Concepts81.txt, Flickr/) "
        "or the pre-formatted files (formatted_train_images.npy, formatted_train_labels.npy, "
        "formatted_val_images.npy, formatted_val_labels.npy, Flickr/)"
    )


# -- the official release -------------------------------------------------------------------------


def _read_official(root: Path) -> _Read:
    lists = require_dir(root / "ImageList", "the image lists folder ImageList/ (official layout)")
    paths = {
        name: require_file(lists / file, f"the official {name} image list")
        for name, (file, _) in OFFICIAL_LISTS.items()
    }
    concepts = _find_concepts(root, required=True)
    classes = _read_concepts(concepts)
    gt = require_dir(
        root / "Groundtruth" / "TrainTestLabels",
        "the label folder Groundtruth/TrainTestLabels/ (Labels_<concept>_{Train,Test}.txt)",
    )
    label_files = {
        name: [gt / f"Labels_{c}_{suffix}.txt" for c in classes]
        for name, (_, suffix) in OFFICIAL_LISTS.items()
    }
    for name, files in label_files.items():  # every file named before any is read
        for c, p in zip(classes, files, strict=True):
            require_file(p, f"the {name} labels of concept {c!r}")
    splits = {}
    for name, list_path in paths.items():
        ids = _read_image_list(list_path)
        y = np.empty((len(ids), len(classes)), np.uint8)
        for k, p in enumerate(label_files[name]):
            y[:, k] = _read_label_file(p, len(ids), list_path)
        splits[name] = (ids, y)
    files = [paths["train"], paths["test"], concepts, *label_files["train"], *label_files["test"]]
    return _Read(classes, splits, files, {"concepts": _rel(concepts, root)})


def _read_image_list(path: Path) -> list[str]:
    """``folder\\file.jpg`` lines (Windows separators, CRLF or LF) -> ``folder/file.jpg``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise WsmlError(f"{path} is not UTF-8 text: {e}") from None
    lines = text.split("\n")  # not splitlines(): other breaks would misalign the label files
    while lines and not lines[-1].strip():
        lines.pop()
    ids = []
    for i, line in enumerate(lines, 1):
        rel = _normalise(line.strip())
        if rel is None:
            raise WsmlError(
                f"{path}:{i}: expected a relative image path like actor\\0001_2124494179.jpg, "
                f"got {line.strip()!r}"
            )
        ids.append(rel)
    if not ids:
        raise WsmlError(f"{path} lists no images")
    _check_unique(ids, path, lines=True)
    return ids


def _read_label_file(path: Path, n: int, list_path: Path) -> np.ndarray:
    """One ``0``/``1`` per line, aligned with the image list (CRLF, spaces and a missing final
    newline allowed). Vectorised: 162 files of 100k+ lines are read in well under a second."""
    buf = np.frombuffer(path.read_bytes(), np.uint8)
    digit = (buf == 48) | (buf == 49)
    newline = buf == 10
    if (digit | newline | (buf == 13) | (buf == 32) | (buf == 9)).all():
        sig = buf[digit | newline]  # one digit a line: "d\nd\n...d", then only newlines
        values = sig[sig != 10]
        head = sig[: 2 * n - 1]
        if len(values) == n and len(head) == 2 * n - 1 and (head[1::2] == 10).all():
            return values - 48
    return _read_label_lines(path, n, list_path)


def _read_label_lines(path: Path, n: int, list_path: Path) -> np.ndarray:
    """The line-by-line reader: names the first bad line, or the line count that differs."""
    lines = path.read_bytes().decode("latin-1").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        value = line.strip()
        if value not in ("0", "1"):
            got = repr(value) if value else "an empty line"
            raise WsmlError(f"{path}:{i}: expected a label 0 or 1, got {got}")
    if len(lines) != n:
        raise WsmlError(
            f"{path} has {len(lines)} lines, but {list_path} lists {n} images; "
            "every label file needs one line per listed image"
        )
    return np.array([line.strip() == "1" for line in lines], np.uint8)


# -- the pre-formatted files ----------------------------------------------------------------------


def _read_formatted(root: Path) -> _Read:
    files = {}
    for name, stem in FORMATTED.items():  # every file named before any is read
        for part in ("images", "labels"):
            path = root / f"{stem}_{part}.npy"
            files[name, part] = require_file(path, f"the pre-formatted {name} {part}")
    concepts = _find_concepts(root, required=False)
    classes = _read_concepts(concepts) if concepts else NUS_CONCEPTS
    splits = {}
    for name in FORMATTED:
        images, labels = files[name, "images"], files[name, "labels"]
        ids = _formatted_ids(_load_npy(images), images)
        y = _formatted_labels(_load_npy(labels), labels, images, len(ids), classes)
        splits[name] = (ids, y)
    notes = {
        "concepts": _rel(concepts, root) if concepts else "built-in",
        "files": {n: f"{FORMATTED[n]}_{{images,labels}}.npy" for n in FORMATTED},
    }
    used = list(files.values()) + ([concepts] if concepts else [])
    return _Read(classes, splits, used, notes)


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise WsmlError(f"{path} is not a .npy file (it lacks the NumPy header)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise WsmlError(
                f"{path} holds pickled Python objects, which are not loaded; save it as a "
                "plain array, e.g. np.save(path, np.load(path, allow_pickle=True).astype(str))"
            ) from None
        raise WsmlError(f"{path} is not a readable .npy file: {e}") from None
    except (OSError, EOFError) as e:
        raise WsmlError(f"{path} is not a readable .npy file: {e}") from None


def _formatted_ids(arr: np.ndarray, path: Path) -> list[str]:
    """Image paths relative to the root or to Flickr/, with ``/`` or ``\\``."""
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise WsmlError(
            f"{path} holds a {arr.dtype} array of shape {arr.shape}; expected a 1-D array of "
            "image paths (strings)"
        )
    if arr.dtype.kind == "S":
        try:
            arr = np.char.decode(arr, "utf-8")
        except UnicodeDecodeError as e:
            raise WsmlError(f"{path} holds paths that are not UTF-8: {e}") from None
    ids = []
    for i, text in enumerate(arr.tolist()):
        rel = _normalise(text.strip(), under_root=True)
        if rel is None:
            raise WsmlError(
                f"{path} row {i}: expected a relative image path like "
                f"Flickr/actor/0001_2124494179.jpg, got {text!r}"
            )
        ids.append(rel)
    if not ids:
        raise WsmlError(f"{path} lists no images")
    _check_unique(ids, path, lines=False)
    return ids


def _formatted_labels(y: np.ndarray, path: Path, images: Path, n: int, classes) -> np.ndarray:
    k = len(classes)
    if y.ndim != 2 or y.shape[1] != k:
        raise WsmlError(f"{path} has shape {y.shape}; expected (N, {k}): one column per concept")
    if y.shape[0] != n:
        raise WsmlError(f"{images} has {n} image paths, but {path} has {y.shape[0]} label rows")
    if y.dtype.kind not in "biuf":
        raise WsmlError(f"{path} holds {y.dtype} values; expected a 0/1 number matrix")
    bad = np.argwhere((y != 0) & (y != 1))
    if len(bad):
        r, c = bad[0].tolist()
        raise WsmlError(
            f"{path} row {r}, column {c} ({classes[c]}) holds {y[r, c].item()!r}; expected 0 or 1 "
            f"({len(bad)} such value(s))"
        )
    return (y == 1).astype(np.uint8)


# -- shared -----------------------------------------------------------------------------------------


def _find_concepts(root: Path, required: bool) -> Path | None:
    for rel in CONCEPT_PLACES:
        if (root / rel).is_file():
            return root / rel
    if required:
        places = ", ".join(str(root / rel) for rel in CONCEPT_PLACES)
        raise WsmlError(f"expected the concept list Concepts81.txt at one of {places}; none exists")
    return None


def _read_concepts(path: Path) -> tuple[str, ...]:
    """The 81 concept names, one a line (CRLF allowed), in the file's order."""
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise WsmlError(f"{path} is not UTF-8 text: {e}") from None
    names, seen = [], {}
    for i, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name not in GROUP_OF:
            raise WsmlError(f"{path}:{i}: unknown concept {name!r}; expected the 81 NUS-WIDE ones")
        if name in seen:
            raise WsmlError(f"{path}:{i}: concept {name!r} repeats line {seen[name]}")
        seen[name] = i
        names.append(name)
    absent = [c for c in NUS_CONCEPTS if c not in seen]
    if absent:
        raise WsmlError(f"{path} lacks {len(absent)} of the 81 concepts: {', '.join(absent[:10])}")
    return tuple(names)


def _normalise(text: str, under_root: bool = False) -> str | None:
    """A relative image path with ``/``, relative to Flickr/; None if it is not one."""
    rel = text.replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    if under_root and rel.startswith("Flickr/"):
        rel = rel[len("Flickr/") :]
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        return None
    return rel


def _check_unique(ids: list[str], path: Path, lines: bool) -> None:
    """No image twice; entries are named by 1-based line (text) or 0-based row (.npy)."""
    first: dict[str, int] = {}
    for i, rel in enumerate(ids, 1 if lines else 0):
        if rel in first:
            at, was = (
                (f":{i}", f"line {first[rel]}") if lines else (f" row {i}", f"row {first[rel]}")
            )
            raise WsmlError(f"{path}{at}: image {rel!r} is listed twice (first at {was})")
        first[rel] = i


def _check_disjoint(splits: dict[str, tuple[list[str], np.ndarray]]) -> None:
    train = set(splits["train"][0])
    both = [rel for rel in splits["test"][0] if rel in train]
    if both:
        raise WsmlError(
            f"{len(both)} image(s) are listed in both the train and the test split, e.g. {both[0]!r}"
        )


def _official_split(name: str, role: str, ids: list[str], y: np.ndarray, flickr: str):
    rows, cols = np.nonzero(y)  # row-major: each row's columns ascending
    bounds = np.searchsorted(rows, np.arange(len(ids) + 1)).tolist()
    cols = cols.tolist()
    folder = os.path.join(flickr, "")
    records = tuple(
        Record(rel, folder + rel, _stem(rel).replace("/", "_"), tuple(cols[a:b]))
        for rel, a, b in zip(ids, bounds[:-1], bounds[1:], strict=True)
    )
    return OfficialSplit(name, role, records)


def _stem(rel: str) -> str:
    dot = rel.rfind(".")
    return rel[:dot] if dot > rel.rfind("/") else rel


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


register_converter(
    ConverterInfo(
        "nuswide",
        "NUS-WIDE: 81 concepts; official release or pre-formatted .npy files",
        NusOptions,
        open_nuswide,
        allows_missing_images=True,
        family="nus",
    )
)
