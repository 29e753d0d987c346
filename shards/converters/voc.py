"""VOC-format sources: ``voc2007``, ``voc2012`` (Cole et al.'s PASCAL protocol) and ``voc`` (any
dataset in VOC layout).

Rules from Cole et al.'s ``format_pascal.py``: labels come from ``ImageSets/Main/<class>_<set>.txt``;
only ``1`` is positive (``0`` = difficult and ``-1`` are negative); images without a positive are
dropped; ids sorted. Without per-class lists the same labels are read from ``Annotations/*.xml``.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from shards.base.errors import WsmlError
from shards.bias import object_weights
from shards.convert.source import (
    ConverterInfo,
    OfficialSplit,
    Record,
    Source,
    check_duplicates,
    check_name,
    fingerprint_files,
    read_utf8,
    register_converter,
    require_dir,
    require_file,
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_GROUPS = (
    "vehicles", "vehicles", "animals", "vehicles", "household", "vehicles", "vehicles",
    "animals", "household", "animals", "household", "animals", "animals", "vehicles", "person",
    "household", "animals", "household", "vehicles", "household",
)  # fmt: skip


@dataclass(frozen=True)
class VocOptions:
    year: str = ""  # look for VOCdevkit/VOC<year> or VOC<year> under the root
    train_set: str = "train"  # ImageSets/Main/<train_set>.txt -> train/val
    test_set: str = "val"  # ImageSets/Main/<test_set>.txt -> test
    classes: tuple[str, ...] = ()  # default: from ImageSets/Main/*_<train_set>.txt
    keep_no_positive: bool = False  # Cole drops images without a positive


@dataclass(frozen=True)
class VocPresetOptions:
    keep_no_positive: bool = False


def open_voc(root: Path, opts: VocOptions, dataset: str = "voc") -> Source:
    require_dir(root, "the dataset root")
    base = _find_base(root, opts.year)
    main = require_dir(base / "ImageSets" / "Main", "an ImageSets/Main/ folder (VOC layout)")
    require_dir(base / "JPEGImages", "a JPEGImages/ folder (VOC layout)")
    classes = opts.classes or _classes_from_lists(main, opts.train_set, base)
    used: list[Path] = []
    splits, dropped = [], {}
    for set_name, role in ((opts.train_set, "train"), (opts.test_set, "test")):
        labels = _read_set(base, main, set_name, classes, used)
        ids = sorted(labels)
        if not opts.keep_no_positive:
            ids = [i for i in ids if labels[i][0]]
            dropped[set_name] = len(labels) - len(ids)
        records = tuple(
            Record(i, str(base / "JPEGImages" / f"{i}.jpg"), i, labels[i][0], None, (labels[i][1],))
            for i in ids
        )
        splits.append(OfficialSplit(set_name, role, records))
    boxes = _box_extras(base, splits, classes, used)
    return Source(
        dataset=dataset,
        root=str(root.resolve()),
        classes=tuple(classes),
        splits=tuple(boxes or splits),
        fingerprint=fingerprint_files(used, list(classes)),
        groups=VOC_GROUPS if tuple(classes) == VOC_CLASSES else None,
        notes={"dropped_no_positive": dropped, "folder": str(base)},
        extra_columns=(("difficult", "list<int32>"),) + (BOX_EXTRAS if boxes else ()),
    )


BOX_EXTRAS = (("size_weight", "list<float64>"), ("location_weight", "list<float64>"))


def _box_extras(base: Path, splits, classes, used: list[Path]) -> list[OfficialSplit] | None:
    """The splits with the biased single-positive weights of each positive (shards.bias) from
    the boxes in ``Annotations/<id>.xml``; None when any image lacks its xml, size or boxes."""
    index = {c: k for k, c in enumerate(classes)}
    out, xmls = [], []
    for split in splits:
        records = []
        for r in split.records:
            xml = base / "Annotations" / f"{r.source_id}.xml"
            found = _xml_boxes(xml, index) if xml.is_file() else None
            if found is None:
                return None
            (width, height), per_class = found
            if any(not per_class.get(c) for c in r.positives):
                return None
            w = [object_weights(per_class[c], width, height) for c in r.positives]
            extra = (*r.extra, tuple(x[0] for x in w), tuple(x[1] for x in w))
            records.append(dataclasses.replace(r, extra=extra))
            xmls.append(xml)
        out.append(OfficialSplit(split.name, split.role, tuple(records)))
    seen = set(used)
    used.extend(p for p in xmls if p not in seen)
    return out


def _xml_boxes(path: Path, index: dict) -> tuple[tuple[int, int], dict] | None:
    """((width, height), class -> [(area, (x, y, w, h))] of its non-difficult boxes), or None."""
    try:
        root = ET.parse(path).getroot()
        width, height = (int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
    except (ET.ParseError, ValueError):
        return None
    if width <= 0 or height <= 0:
        return None
    per_class: dict[int, list] = {}
    for obj in root.iter("object"):
        name, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if box is None or name not in index:
            return None
        if (obj.findtext("difficult") or "0").strip() == "1":
            continue
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            return None
        w, h = x1 - x0, y1 - y0
        per_class.setdefault(index[name], []).append((w * h, (x0, y0, w, h)))
    return (width, height), per_class


def _find_base(root: Path, year: str) -> Path:
    if year:
        for cand in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
            if (cand / "ImageSets").is_dir() or (cand / "JPEGImages").is_dir():
                return cand
        raise WsmlError(
            f"expected a VOC{year} folder (with ImageSets/ and JPEGImages/) at "
            f"{root / 'VOCdevkit' / f'VOC{year}'} or {root / f'VOC{year}'}"
        )
    return root


def _classes_from_lists(main: Path, set_name: str, base: Path) -> tuple[str, ...]:
    suffix = f"_{set_name}.txt"
    names = sorted(p.name[: -len(suffix)] for p in main.glob(f"*{suffix}"))
    if names:
        return tuple(names)
    return _classes_from_xml(base, main, set_name)


def _classes_from_xml(base: Path, main: Path, set_name: str) -> tuple[str, ...]:
    names: set[str] = set()
    for i in _read_ids(require_file(main / f"{set_name}.txt", f"the {set_name} image list")):
        names.update(n for n, _ in _xml_objects(base / "Annotations" / f"{i}.xml"))
    if not names:
        raise WsmlError(
            f"no classes found: no ImageSets/Main/*_{set_name}.txt and no objects in Annotations/"
        )
    return tuple(sorted(names))


def _read_set(base, main, set_name, classes, used) -> dict[str, tuple[tuple, tuple]]:
    """id -> (positive classes, difficult-only classes)."""
    lists = [main / f"{c}_{set_name}.txt" for c in classes]
    present = [p.is_file() for p in lists]
    if all(present):
        used.extend(lists)
        return _from_class_lists(lists)
    if any(present):
        missing = lists[present.index(False)]
        raise WsmlError(f"expected per-class list {missing} (other classes have one)")
    set_file = require_file(main / f"{set_name}.txt", f"the {set_name} image list (VOC layout)")
    used.append(set_file)
    ids = _read_ids(set_file)
    require_dir(base / "Annotations", "an Annotations/ folder (no per-class lists found)")
    index = {c: k for k, c in enumerate(classes)}
    out = {}
    for i in ids:
        xml = base / "Annotations" / f"{i}.xml"
        used.append(xml)
        pos, diff = set(), set()
        for name, difficult in _xml_objects(xml):
            if name not in index:
                raise WsmlError(
                    f"{xml} has an object of unknown class {name!r}; classes: {', '.join(classes)}"
                )
            (diff if difficult else pos).add(index[name])
        out[i] = (tuple(sorted(pos)), tuple(sorted(diff - pos)))
    return out


def _read_ids(path: Path) -> list[str]:
    ids = [line.split()[0] for line in read_utf8(path).splitlines() if line.strip()]
    check_duplicates([check_name(i, str(path)) for i in ids], str(path))
    return ids


def _from_class_lists(lists: list[Path]) -> dict[str, tuple[tuple, tuple]]:
    pos: dict[str, list[int]] = {}
    diff: dict[str, list[int]] = {}
    first_ids: list[str] | None = None
    for k, path in enumerate(lists):
        ids = []
        for line in read_utf8(path).splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[-1] not in ("1", "0", "-1"):
                raise WsmlError(f"{path}: expected '<id> 1|0|-1' lines, got {line.strip()!r}")
            ids.append(parts[0])
            if parts[-1] == "1":
                pos.setdefault(parts[0], []).append(k)
            elif parts[-1] == "0":
                diff.setdefault(parts[0], []).append(k)
        check_duplicates([check_name(i, str(path)) for i in ids], str(path))
        if first_ids is None:
            first_ids = ids
        elif set(ids) != set(first_ids):
            raise WsmlError(f"{path} lists other images than {lists[0]}")
    return {i: (tuple(pos.get(i, ())), tuple(diff.get(i, ()))) for i in first_ids or []}


def _xml_objects(path: Path) -> list[tuple[str, bool]]:
    require_file(path, "an annotation file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise WsmlError(f"{path} is not valid XML: {e}") from None
    out = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        out.append((name, (obj.findtext("difficult") or "0").strip() == "1"))
    return out


def _preset(year: str, train_set: str, test_set: str):
    def open_preset(root: Path, opts: VocPresetOptions) -> Source:
        generic = VocOptions(year, train_set, test_set, VOC_CLASSES, opts.keep_no_positive)
        return open_voc(root, generic, dataset=f"voc{year}")

    return open_preset


register_converter(
    ConverterInfo(
        "voc2007",
        "PASCAL VOC 2007: trainval -> train/val, test -> test",
        VocPresetOptions,
        _preset("2007", "trainval", "test"),
        family="voc",
    )
)
register_converter(
    ConverterInfo(
        "voc2012",
        "PASCAL VOC 2012 (Cole et al.): train -> train/val, val -> test",
        VocPresetOptions,
        _preset("2012", "train", "val"),
        family="voc",
    )
)
register_converter(
    ConverterInfo("voc", "any dataset in VOC layout", VocOptions, open_voc, family="voc")
)
