"""A tiny dataset builder in each converter's real raw layout (the registry's contract tests use
these; a new converter needs an entry here, or its contract test fails)."""

from __future__ import annotations

from pathlib import Path

from shards.converters.voc import VOC_CLASSES
from tests.support.layouts_cub import cub_layout
from tests.support.layouts_nuswide import nuswide_official
from tests.support.layouts_openimages import openimages_layout, openimages_v6_layout
from tests.support.layouts_table import table_layout
from tests.support.raw_datasets import make_coco, make_voc


def _voc_labels(ids, classes, offset):
    labels = {}
    for k, i in enumerate(ids):
        a, b = classes[(k + offset) % len(classes)], classes[(3 * k + 1) % len(classes)]
        labels[i] = {a: 1, b: 1 if k % 3 else 0}  # every third image: b is 'difficult' only
    labels[ids[-1]] = {classes[0]: 0}  # only a difficult object: dropped (Cole)
    return labels


def voc_year(year: str, train: str, test: str, class_lists: bool):
    def build(root: Path) -> Path:
        base = root / "VOCdevkit" / f"VOC{year}"
        ids_tr = [f"{year}_{k:06d}" for k in range(30)]
        ids_te = [f"{year}_{k:06d}" for k in range(100, 112)]
        labels = _voc_labels(ids_tr, VOC_CLASSES, 0) | _voc_labels(ids_te, VOC_CLASSES, 5)
        make_voc(base, ids_tr, ids_te, labels, VOC_CLASSES, class_lists=class_lists)
        main = base / "ImageSets" / "Main"
        for p in main.glob("*.txt"):  # rename the generic train/val lists to the year's sets
            stem = p.stem.replace("_train", f"_{train}").replace("_val", f"_{test}")
            stem = {"train": train, "val": test}.get(stem, stem)
            p.rename(main / f"{stem}.tmp")
        for p in main.glob("*.tmp"):
            p.rename(p.with_suffix(".txt"))
        return root

    return build


def voc_generic(root: Path) -> Path:
    classes = ("cat", "dog", "fish")
    ids_tr = [f"img{k:03d}" for k in range(20)]
    ids_te = [f"img{k:03d}" for k in range(50, 58)]
    labels = _voc_labels(ids_tr, classes, 0) | _voc_labels(ids_te, classes, 1)
    return make_voc(root, ids_tr, ids_te, labels, classes, class_lists=True)


def coco2014(root: Path) -> Path:
    make_coco(root, n_train=30, n_val=10, num_classes=5)
    ann = root / "annotations"
    (ann / "instances_train.json").rename(ann / "instances_train2014.json")
    (ann / "instances_val.json").rename(ann / "instances_val2014.json")
    (root / "train").rename(root / "train2014")
    (root / "val").rename(root / "val2014")
    return root


LAYOUTS = {
    "coco": lambda root: make_coco(root, n_train=30, n_val=10),
    "coco2014": coco2014,
    "cub": cub_layout,
    "nuswide": lambda root: nuswide_official(root, missing=0),
    "voc": voc_generic,
    "voc2007": voc_year("2007", "trainval", "test", class_lists=True),
    "voc2012": voc_year("2012", "train", "val", class_lists=False),
    "openimages-v3": openimages_layout,
    "openimages-v6": openimages_v6_layout,
    "table": table_layout,
}
