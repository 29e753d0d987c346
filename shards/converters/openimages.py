"""Open Images V3 (2017_11 metadata), the field's large real partial-label benchmark (LL, BoostLU).

Human-verified image-level labels: confidence 1 is a positive, 0 an explicit negative, every other
trainable class is unknown. CSVs are streamed with pyarrow and labels kept as flat arrays, so the
9M-image train split never becomes per-image Python objects or a dense matrix.
"""

from __future__ import annotations

import json
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
from shards.converters.oi_images import ImageFolders, list_image_folders
from shards.lists import Lists

SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))


@dataclass(frozen=True)
class OpenImagesOptions:
    images: str = (
        ""  # folders of <ImageID>.jpg for every split: a,b or a glob (shards.converters.oi_images)
    )
    classes: str = "classes-trainable.txt"  # the class list, relative to the metadata folder
    hierarchy: str = ""  # optional V4-style hierarchy json: groups = top-level categories


class OpenImagesRecords:
    """The records of one split as arrays: 64-bit image ids, flat label lists, and the folder
    of each image (``where`` indexes ``folders``; None: all in the first)."""

    def __init__(
        self,
        ids: np.ndarray,
        positives: Lists,
        negatives: Lists,
        folders: str | ImageFolders,
    ):
        self.ids, self.positives, self.negatives = ids, positives, negatives
        if isinstance(folders, str):
            folders = ImageFolders([Path(folders)])
        self.folders, self.where = folders.folders, folders.locate(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Record:
        sid = self.source_ids([i])[0]
        return Record(
            sid,
            self.paths([i])[0],
            sid,
            tuple(self.positives.row(i).tolist()),
            tuple(self.negatives.row(i).tolist()),
        )

    def source_ids(self, idx) -> list[str]:
        return [f"{v:016x}" for v in self.ids[np.asarray(idx, dtype=np.int64)].tolist()]

    key_hints = source_ids

    def paths(self, idx) -> list[str]:
        if self.where is None:
            return [f"{self.folders[0]}/{s}.jpg" for s in self.source_ids(idx)]
        where = self.where[np.asarray(idx, dtype=np.int64)].tolist()
        return [f"{self.folders[w]}/{s}.jpg" for w, s in zip(where, self.source_ids(idx), strict=True)]  # fmt: skip

    def labels(self, idx) -> tuple[Lists, Lists]:
        idx = np.asarray(idx, dtype=np.int64)
        return self.positives.take(idx), self.negatives.take(idx)

    def extras(self, k: int, idx) -> list:
        raise IndexError("Open Images records have no extra columns")


def open_openimages(root: Path, opts: OpenImagesOptions) -> Source:
    # pyarrow is imported only now: a process that has loaded it cannot fork its worker pool
    # (shards.convert.scan.Workers), and every converter module is imported by every conversion.
    from shards.converters.oi_labels import read_descriptions, read_human_labels, read_image_ids

    require_dir(root, "the dataset root")
    meta = _metadata_folder(root)
    known = read_descriptions(
        require_file(meta / "class-descriptions.csv", "the class descriptions")
    )
    mids, names = read_trainable(meta / opts.classes, known, "class-descriptions.csv")
    files = [meta / opts.classes, meta / "class-descriptions.csv"]
    given = ImageFolders(list_image_folders(root, opts.images)) if opts.images else None
    splits, notes = [], {"mids": mids, "metadata": str(meta), "without_labels": {}}
    for folder_name, role in SPLITS:
        images_csv = require_file(
            meta / folder_name / "images.csv", f"the {folder_name} image list"
        )
        ann_csv = require_file(
            meta / folder_name / "annotations-human.csv", f"the {folder_name} human labels"
        )
        listed = read_image_ids(images_csv)
        ids, pos, neg = read_human_labels(ann_csv, mids, known, listed)
        notes["without_labels"][folder_name] = int(len(listed) - len(ids))
        folders = given or _images_folder(root, meta, folder_name)
        splits.append(OfficialSplit(folder_name, role, OpenImagesRecords(ids, pos, neg, folders)))
        files += [images_csv, ann_csv]
    groups = read_class_groups(meta, opts.hierarchy, mids, known) if opts.hierarchy else None
    return Source(
        dataset="openimages-v3",
        root=str(root.resolve()),
        classes=tuple(names),
        splits=tuple(splits),
        fingerprint=fingerprint_files(files, [opts.hierarchy]),
        complete_labels=False,
        groups=groups,
        notes=notes,
        default_regimes=(),  # the human labels are the observed labels (real unknowns)
    )


def _metadata_folder(root: Path) -> Path:
    for cand in (root / "2017_11", root):
        if (cand / "classes-trainable.txt").is_file() or (cand / "train").is_dir():
            return cand
    raise WsmlError(
        f"expected the Open Images 2017_11 metadata (classes-trainable.txt, class-descriptions.csv, "
        f"train/, validation/, test/) in {root / '2017_11'} or {root}"
    )


def _images_folder(root: Path, meta: Path, split: str) -> str:
    short = {"validation": "val"}.get(split, split)
    cands = [
        root / f"images_{split}",
        root / f"images_{short}",
        root / "images" / split,
        root / "images" / short,
        meta / split / "images",
        root / "images",
    ]
    for cand in cands:
        if cand.is_dir():
            return str(cand.resolve())
    raise WsmlError(
        f"expected the {split} images (<ImageID>.jpg) in {cands[0]}/, {cands[2]}/ or "
        f"{cands[-1]}/; name the folder with -o images="
    )


def read_trainable(path: Path, desc: dict, desc_name: str) -> tuple[list[str], list[str]]:
    """The trainable class ids listed in ``path`` (each once, each described in ``desc``, read
    from the file ``desc_name``) and their display names."""
    path = require_file(path, "the trainable class list")
    mids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(mids)) != len(mids):
        raise WsmlError(f"{path} lists a class twice")
    unknown = [m for m in mids if m not in desc]
    if unknown:
        raise WsmlError(f"{path}: class {unknown[0]} is not in {desc_name}")
    return mids, [desc[m] for m in mids]


def read_class_groups(meta: Path, name: str, mids: list[str], known: dict) -> tuple[str, ...]:
    """Top-level category of each class from a V4-style hierarchy json
    (``{"LabelName": root, "Subcategory": [...]}``); classes outside it: ``other``."""
    path = require_file(meta / name, "the class hierarchy (-o hierarchy=)")
    try:
        tree = json.loads(path.read_text())
    except ValueError as e:
        raise WsmlError(f"{path} is not valid JSON: {e}") from None
    top: dict[str, str] = {}
    for child in tree.get("Subcategory", []):
        group = known.get(child["LabelName"], child["LabelName"])
        stack = [child]
        while stack:
            node = stack.pop()
            top.setdefault(node["LabelName"], group)
            stack.extend(node.get("Subcategory", []))
    return tuple(top.get(m, "other") for m in mids)


register_converter(
    ConverterInfo(
        "openimages-v3",
        "Open Images V3 (2017_11): 5,000 trainable classes, human labels with real unknowns",
        OpenImagesOptions,
        open_openimages,
        allows_missing_images=True,
        family="openimages",
    )
)
