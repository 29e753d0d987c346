"""Open Images V6 (Feb 2020) and V7 (Oct 2022; the same image-level label format): the released
human-verified image-level labels, which current partial-label work trains on.

Files, as the download pages (storage.googleapis.com/openimages/web/download_v6.html and
download_v7.html) name them, in one folder (``--root``, or its ``labels/`` or ``metadata/``):
- labels, columns ``ImageID,Source,LabelName,Confidence``:
  V6 ``oidv6-train-annotations-human-imagelabels.csv``, ``validation-annotations-human-imagelabels.csv``,
  ``test-annotations-human-imagelabels.csv``; V7 ``oidv7-{train,val,test}-annotations-human-imagelabels.csv``;
- classes: ``oidv6-class-descriptions.csv`` / ``oidv7-class-descriptions.csv`` (header
  ``LabelName,DisplayName``) and the trainable list ``oidv6-classes-trainable.txt`` /
  ``oidv7-classes-trainable.txt`` (one MID a line; 9,605 classes in V6);
- optional: ``bbox_labels_600_hierarchy.json`` (class groups = top-level categories).
The semantics are V3's (``openimages-v3``): confidence 1 is positive, 0 an explicit negative,
every other trainable class unknown; the images are those with a human label on a trainable
class. V6 also publishes per-split image lists (``oidv6-train-images-with-labels-with-rotation.csv``,
``validation-images-with-rotation.csv``, ``test-images-with-rotation.csv``: ids, URLs, licences,
rotation), which this converter does not need: an image listed there without a human label on
a trainable class would have no observed label. Same streaming columnar reading.

Images: ``<ImageID>.jpg`` in ``images/<split>/``, ``<split>/``, ``<split>/data/``, the CVDF
tarballs' folders (``train_0/`` … ``train_f/``, ``validation/``, ``test/``: the train folders are
searched together) or ``images/``; or ``-o images=`` naming folders for every split, several
comma-separated or as a glob (``train_*,validation,test``; ``shards.converters.oi_images``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shards.base.errors import WsmlError
from shards.convert.source import (
    ConverterInfo,
    OfficialSplit,
    Source,
    fingerprint_files,
    register_converter,
    require_dir,
    require_file,
)
from shards.converters.oi_images import ImageFolders, list_image_folders
from shards.converters.openimages import OpenImagesRecords, read_class_groups, read_trainable

FILES = {
    "6": {
        "descriptions": "oidv6-class-descriptions.csv",
        "trainable": "oidv6-classes-trainable.txt",
        "train": "oidv6-train-annotations-human-imagelabels.csv",
        "validation": "validation-annotations-human-imagelabels.csv",
        "test": "test-annotations-human-imagelabels.csv",
    },
    "7": {
        "descriptions": "oidv7-class-descriptions.csv",
        "trainable": "oidv7-classes-trainable.txt",
        "train": "oidv7-train-annotations-human-imagelabels.csv",
        "validation": "oidv7-val-annotations-human-imagelabels.csv",
        "test": "oidv7-test-annotations-human-imagelabels.csv",
    },
}
SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))
HIERARCHY = "bbox_labels_600_hierarchy.json"


@dataclass(frozen=True)
class OpenImagesV6Options:
    version: str = ""  # 6 or 7 (default: the one whose class descriptions are there)
    images: str = (
        ""  # folders of <ImageID>.jpg for every split: a,b or a glob (shards.converters.oi_images)
    )
    hierarchy: str = ""  # default: bbox_labels_600_hierarchy.json when present


def open_openimages_v6(root: Path, opts: OpenImagesV6Options) -> Source:
    from shards.converters.oi_labels import read_descriptions, read_human_labels

    require_dir(root, "the dataset root")
    folder, version = _labels_folder(root, opts.version)
    names = FILES[version]
    desc_file = require_file(folder / names["descriptions"], "the class descriptions")
    known = read_descriptions(desc_file, header=True)
    trainable = folder / names["trainable"]
    mids, classes = read_trainable(trainable, known, desc_file.name)
    files, splits = [desc_file, trainable], []
    given = ImageFolders(list_image_folders(root, opts.images)) if opts.images else None
    for split, role in SPLITS:
        labels = require_file(folder / names[split], f"the {split} human-verified labels")
        ids, pos, neg = read_human_labels(labels, mids, known, None)
        images = given or _images_folders(root, split)
        splits.append(OfficialSplit(split, role, OpenImagesRecords(ids, pos, neg, images)))
        files.append(labels)
    hierarchy = opts.hierarchy or (HIERARCHY if (folder / HIERARCHY).is_file() else "")
    return Source(
        dataset="openimages-v6",
        root=str(root.resolve()),
        classes=tuple(classes),
        splits=tuple(splits),
        fingerprint=fingerprint_files(files, [version, hierarchy]),
        complete_labels=False,
        groups=read_class_groups(folder, hierarchy, mids, known) if hierarchy else None,
        notes={"mids": mids, "metadata": str(folder), "version": version},
        default_regimes=(),  # the human labels are the observed labels (real unknowns)
    )


def _labels_folder(root: Path, version: str) -> tuple[Path, str]:
    if version and version not in FILES:
        raise WsmlError(f"-o version must be 6 or 7, got {version!r}")
    for folder in (root, root / "labels", root / "metadata"):
        for v in [version] if version else ["7", "6"]:
            if (folder / FILES[v]["descriptions"]).is_file():
                return folder, v
    wanted = " or ".join(FILES[v]["descriptions"] for v in ([version] if version else ["6", "7"]))
    raise WsmlError(
        f"expected {wanted} with the human-verified image-level label CSVs in {root} "
        f"(or {root / 'labels'}/, {root / 'metadata'}/)"
    )


def _images_folders(root: Path, split: str) -> ImageFolders:
    """A split's images where they are found first: ``images/<split>/``, ``<split>/``,
    ``<split>/data/``, the CVDF tarballs' ``<split>_0/`` … ``<split>_f/`` (all searched), or
    ``images/``."""
    cands = [root / "images" / split, root / split, root / split / "data"]
    for cand in cands:
        if cand.is_dir():
            return ImageFolders([cand])
    parts = sorted(p for p in root.glob(f"{split}_[0-9a-f]") if p.is_dir())
    if parts:
        return ImageFolders(parts)
    if (root / "images").is_dir():
        return ImageFolders([root / "images"])
    raise WsmlError(
        f"expected the {split} images (<ImageID>.jpg) in {cands[0]}/, {cands[1]}/, "
        f"{root / split}_0/ … {split}_f/ (the CVDF tarballs) or {root / 'images'}/; name the "
        "folders with -o images= (several: a,b or a glob, e.g. train_*)"
    )


register_converter(
    ConverterInfo(
        "openimages-v6",
        "Open Images V6/V7: human-verified image-level labels (9,605 trainable classes in V6)",
        OpenImagesV6Options,
        open_openimages_v6,
        allows_missing_images=True,
        family="openimages",
    )
)
