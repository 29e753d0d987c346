"""COCO-format sources: ``coco2014`` (Cole et al.'s MS-COCO 2014 protocol) and ``coco`` (any
dataset with COCO instances json files).

Rules from Cole et al.'s ``format_coco.py``: class index = position in ``categories`` (the train
and test files must agree), any annotation of a class makes it positive, rows are the image ids
that have annotations, sorted as strings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from shards.base.errors import WsmlError
from shards.bias import inverse_distances
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


@dataclass(frozen=True)
class CocoOptions:
    train_json: str = ""  # relative to the root; default: annotations/instances_*train*.json
    test_json: str = ""  # default: annotations/instances_*val*.json (else *test*)
    train_images: str = ""  # default: folder named like the json suffix (train2014/, train/)
    test_images: str = ""
    keep_empty: bool = False  # keep images without annotations (all-negative rows)


@dataclass(frozen=True)
class Coco2014Options:
    keep_empty: bool = False


def open_coco(root: Path, opts: CocoOptions, dataset: str = "coco") -> Source:
    require_dir(root, "the dataset root")
    train_json = _find_json(root, opts.train_json, ("train",))
    test_json = _find_json(root, opts.test_json, ("val", "test"))
    train_dir = _images_dir(root, opts.train_images, train_json)
    test_dir = _images_dir(root, opts.test_images, test_json)
    splits, cats = [], None
    for role, path, folder in (("train", train_json, train_dir), ("test", test_json, test_dir)):
        data = _read_instances(path)  # one parsed file in memory at a time
        if cats is not None and data["categories"] != cats:
            raise WsmlError(f"{train_json.name} and {test_json.name} list different categories")
        cats = data["categories"]
        splits.append(_split(_stem(path), role, data, folder, path, opts.keep_empty))
        del data
    groups = tuple(c.get("supercategory") or "" for c in cats)
    with_boxes = all(len(r.extra) == 2 for sp in splits for r in sp.records)
    if not with_boxes:  # one split without boxes: none has box columns
        splits = [_without_extras(sp) for sp in splits]
    return Source(
        dataset=dataset,
        root=str(root.resolve()),
        classes=tuple(c["name"] for c in cats),
        splits=tuple(splits),
        fingerprint=fingerprint_files([train_json, test_json], [str(opts.keep_empty)]),
        groups=groups if all(groups) else None,
        extra_columns=BOX_EXTRAS if with_boxes else (),
        notes={
            "annotations": [str(train_json.relative_to(root)), str(test_json.relative_to(root))]
        },
    )


BOX_EXTRAS = (("size_weight", "list<float64>"), ("location_weight", "list<float64>"))


def _without_extras(split: OfficialSplit) -> OfficialSplit:
    records = [dataclasses.replace(r, extra=()) for r in split.records]
    return OfficialSplit(split.name, split.role, tuple(records))


def _stem(path: Path) -> str:
    return path.stem.removeprefix("instances_")


def _find_json(root: Path, given: str, words: tuple[str, ...]) -> Path:
    if given:
        return require_file(root / given, "a COCO instances json")
    folder = require_dir(root / "annotations", "an annotations/ folder with instances_*.json")
    found = sorted(folder.glob("instances_*.json"))
    for word in words:
        hits = [p for p in found if word in _stem(p)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(p.name for p in hits)
            raise WsmlError(f"several {word} files in {folder} ({names}); name one with -o")
    raise WsmlError(
        f"expected annotations/instances_<{'|'.join(words)}…>.json in {root}; found "
        f"{', '.join(p.name for p in found) or 'none'}. Name the file with -o train_json=/test_json="
    )


def _images_dir(root: Path, given: str, json_path: Path) -> Path:
    if given:
        return require_dir(root / given, "an image folder")
    stem = _stem(json_path)
    for cand in (root / stem, root / "images" / stem, root / "images"):
        if cand.is_dir():
            return cand
    raise WsmlError(
        f"expected the images of {json_path.name} in {root / stem}/ (or images/{stem}/); "
        "name the folder with -o train_images=/test_images="
    )


def _slim(obj: dict) -> dict | tuple:
    """Keep only what labels need, as the json is parsed: COCO's polygons and RLE masks are
    most of its size. Annotations become (id, image_id, category_id, area, bbox), images
    (id, file_name, width, height); area, bbox and sizes may be None (then no box columns)."""
    if "image_id" in obj and "category_id" in obj:
        return (
            obj.get("id"),
            obj["image_id"],
            obj["category_id"],
            obj.get("area"),
            obj.get("bbox"),
        )
    if "file_name" in obj and "id" in obj:
        return (obj["id"], obj["file_name"], obj.get("width"), obj.get("height"))
    return obj


def _read_instances(path: Path) -> dict:
    text = read_utf8(path)
    try:
        data = json.loads(text, object_hook=_slim)
    except json.JSONDecodeError as e:
        raise WsmlError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise WsmlError(
            f"{path}: the top level is a JSON {type(data).__name__}, expected an object with "
            "'images', 'annotations' and 'categories' (COCO instances format)"
        )
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise WsmlError(f"{path} has no '{field}' list; expected COCO instances format")
    check_duplicates([str(c["id"]) for c in data["categories"]], f"the categories of {path}")
    for field, size in (("images", 4), ("annotations", 5)):
        bad = next((x for x in data[field] if not isinstance(x, tuple) or len(x) != size), None)
        if bad is not None:
            raise WsmlError(f"{path}: an entry of '{field}' lacks its ids: {str(bad)[:200]}")
    check_duplicates([str(im[0]) for im in data["images"]], f"the images of {path}")
    data["categories"] = [
        {"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory")}
        for c in data["categories"]
    ]
    return data


def _split(name, role, data, image_dir: Path, path: Path, keep_empty: bool) -> OfficialSplit:
    index = {c["id"]: i for i, c in enumerate(data["categories"])}
    images = {im[0]: im[1] for im in data["images"]}  # id -> file name
    labels: dict[int, set[int]] = {}
    for ann_id, image_id, cat, _, _ in data["annotations"]:
        c = index.get(cat)
        if c is None:
            raise WsmlError(
                f"annotation {ann_id} of image {image_id} in {path} has unknown "
                f"category id {cat}; known ids: {sorted(index)}"
            )
        if image_id not in images:
            raise WsmlError(f"annotation {ann_id} in {path} names unknown image id {image_id}")
        classes = labels.get(image_id)
        if classes is None:
            labels[image_id] = {c}
        else:
            classes.add(c)
    weights = _box_weights(data, index)
    ids = images if keep_empty else labels
    by_str = {str(i): i for i in ids}
    records, folder = [], os.path.join(str(image_dir), "")
    for sid in sorted(by_str):  # sorted as strings, as the field's formatter does
        image_id = by_str[sid]
        file_name = check_name(images[image_id], f"{path}, image id {sid}")
        positives = tuple(sorted(labels.get(image_id, ())))
        extra = ()
        if weights is not None:
            per_class = weights.get(image_id, {})
            pairs = [per_class[c] for c in positives]
            extra = (tuple(s for s, _ in pairs), tuple(loc for _, loc in pairs))
        hint = os.path.splitext(file_name)[0].replace("/", "_")
        records.append(Record(sid, folder + file_name, hint, positives, None, extra))
    return OfficialSplit(name, role, tuple(records))


def _box_weights(data: dict, index: dict) -> dict | None:
    """Per image and class, the (size, location) weights of the biased single-positive
    protocols (:mod:`shards.bias`); None when any annotation lacks its box or area, or any
    image its size (such a source has no box columns). Summed in annotation order, as
    :func:`shards.bias.object_weights` sums one class's instances."""
    sizes = {im[0]: (im[2], im[3]) for im in data["images"]}
    if any(not w or not h for w, h in sizes.values()):
        return None
    anns = data["annotations"]
    if any(area is None or not isinstance(bbox, list) or len(bbox) != 4 for *_, area, bbox in anns):
        return None
    dims = [sizes[image_id] for _, image_id, *_ in anns]
    inverse = inverse_distances([a[4] for a in anns], *zip(*dims, strict=True)) if anns else []
    sums: dict[int, dict[int, list]] = {}
    for (_, image_id, cat, area, _), inv in zip(anns, inverse, strict=True):
        per_class = sums.setdefault(image_id, {})
        acc = per_class.get(index[cat])
        if acc is None:  # started as sum() and the scalar loop start: 0 and 0.0
            per_class[index[cat]] = [0 + area, 0.0 + inv]
        else:
            acc[0] += area
            acc[1] += inv
    out = {}
    for i, per_class in sums.items():
        pixels = float(sizes[i][0] * sizes[i][1])
        out[i] = {c: (area / pixels, location) for c, (area, location) in per_class.items()}
    return out


def _open_coco2014(root: Path, opts: Coco2014Options) -> Source:
    generic = CocoOptions(
        train_json="annotations/instances_train2014.json",
        test_json="annotations/instances_val2014.json",
        train_images="train2014",
        test_images="val2014",
        keep_empty=opts.keep_empty,
    )
    return open_coco(root, generic, dataset="coco2014")


register_converter(
    ConverterInfo(
        "coco2014",
        "MS-COCO 2014 (80 classes), Cole et al.'s protocol",
        Coco2014Options,
        _open_coco2014,
        family="coco",
    )
)
register_converter(
    ConverterInfo(
        "coco", "any dataset in COCO instances-json layout", CocoOptions, open_coco, family="coco"
    )
)
