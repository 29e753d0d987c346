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
class (V6 publishes no per-split image list with the labels). Same streaming columnar reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shards.converters.openimages import OpenImagesRecords, _groups, read_trainable
from shards.errors import WsmlError
from shards.source import (
    ConverterInfo,
    OfficialSplit,
    Source,
    fingerprint_files,
    register_converter,
    require_dir,
    require_file,
)

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
    images: str = ""  # one folder of <ImageID>.jpg for every split (default: found per split)
    hierarchy: str = ""  # default: bbox_labels_600_hierarchy.json when present


def open_openimages_v6(root: Path, opts: OpenImagesV6Options) -> Source:
    from shards.oi_labels import read_descriptions, read_human_labels

    require_dir(root, "the dataset root")
    folder, version = _labels_folder(root, opts.version)
    names = FILES[version]
    desc_file = require_file(folder / names["descriptions"], "the class descriptions")
    known = read_descriptions(desc_file, header=True)
    trainable = folder / names["trainable"]
    mids, classes = read_trainable(trainable, known, desc_file.name)
    files, splits = [desc_file, trainable], []
    for split, role in SPLITS:
        labels = require_file(folder / names[split], f"the {split} human-verified labels")
        ids, pos, neg = read_human_labels(labels, mids, known, None)
        images = _images_folder(root, opts.images, split)
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
        groups=_groups(folder, hierarchy, mids, known) if hierarchy else None,
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


def _images_folder(root: Path, given: str, split: str) -> str:
    if given:
        return str(require_dir(root / given, "the image folder (-o images=)").resolve())
    cands = [root / "images" / split, root / split, root / split / "data", root / "images"]
    for cand in cands:
        if cand.is_dir():
            return str(cand.resolve())
    raise WsmlError(
        f"expected the {split} images (<ImageID>.jpg) in {cands[0]}/, {cands[1]}/ or "
        f"{cands[-1]}/; name the folder with -o images="
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
