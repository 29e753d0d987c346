"""A tiny Open Images V3 (2017_11) layout in tmp_path: real class ids and descriptions from the
fixture where present, generated images.csv / annotations-human.csv in the real format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.support.raw_datasets import REAL, jpeg_bytes

OI_REAL = REAL / "openimages" / "2017_11"
IMAGES_HEADER = (
    "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,"
    "OriginalSize,OriginalMD5,Thumbnail300KURL\n"
)
FALLBACK = [f"/m/0{k:05d}" for k in range(8)]
NOT_TRAINABLE = "/m/0100nhbf"  # a real class outside the trainable 5,000 (Sprenger's tulip)


def class_files(meta: Path, num_classes: int = 6) -> list[str]:
    """Write classes-trainable.txt (the first ``num_classes`` real trainable ids) and
    class-descriptions.csv (the real file, CRLF and quoted fields included); return the ids."""
    meta.mkdir(parents=True, exist_ok=True)
    if (OI_REAL / "classes-trainable.txt").is_file():
        mids = (OI_REAL / "classes-trainable.txt").read_text().split()[:num_classes]
        (meta / "class-descriptions.csv").write_bytes(
            (OI_REAL / "class-descriptions.csv").read_bytes()
        )
    else:
        mids = FALLBACK[:num_classes]
        (meta / "class-descriptions.csv").write_text(
            "".join(f"{m},thing {k}\r\n" for k, m in enumerate(FALLBACK))
            + f'{NOT_TRAINABLE},"Sprenger\'s tulip"\r\n'
        )
    (meta / "classes-trainable.txt").write_text("".join(f"{m}\n" for m in mids))
    return mids


def human_labels(ids: list[str], mids: list[str], rng) -> list[str]:
    """annotations-human.csv lines: per image a positive, a negative, a second positive half the
    time, and a positive of a class that is described but not trainable."""
    rows = ["ImageID,Source,LabelName,Confidence\n"]
    for i in ids:
        labels = rng.choice(len(mids), size=3, replace=False)
        rows.append(f"{i},verification,{mids[labels[0]]},1\n")
        rows.append(f"{i},crowdsource-verification,{mids[labels[1]]},0\n")
        if rng.random() < 0.5:
            rows.append(f"{i},verification,{mids[labels[2]]},1\n")
        rows.append(f"{i},verification,{NOT_TRAINABLE},1\n")  # known, not trainable
    return rows


def openimages_layout(root: Path, missing: int = 0, seed: int = 0) -> Path:
    """root/2017_11/{classes-trainable.txt, class-descriptions.csv, {train,validation,test}/
    {images.csv, annotations-human.csv}} and root/images_{train,validation,test}/<id>.jpg.
    Every image has a positive; ``missing`` images per split are listed but not on disk."""
    rng = np.random.default_rng(seed)
    meta = root / "2017_11"
    mids = class_files(meta)
    for k, (split, n) in enumerate((("train", 24), ("validation", 8), ("test", 8))):
        ids = sorted({f"{int(v):016x}" for v in rng.integers(0, 2**63, size=n)})
        (meta / split).mkdir(parents=True)
        (meta / split / "images.csv").write_text(
            IMAGES_HEADER
            + "".join(
                f"{i},{split},https://x/{i}.jpg,https://x/{i},lic,,me,t,1,md5,\n" for i in ids
            )
        )
        rows = human_labels(ids, mids, rng)
        (meta / split / "annotations-human.csv").write_text("".join(rows))
        folder = root / f"images_{split}"
        folder.mkdir()
        for j, i in enumerate(ids[missing:]):
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes(32 + j % 7, 24, 100 * k + j))
    return root


def openimages_v6_layout(root: Path, version: str = "6", missing: int = 0, seed: int = 1) -> Path:
    """root/ with the V6 (or V7) files: ``oidv6-class-descriptions.csv`` (header line, then the
    real descriptions), ``oidv6-classes-trainable.txt``, the three human-verified image-level
    label CSVs, ``bbox_labels_600_hierarchy.json``; images in root/images/<split>/<id>.jpg."""
    from shards.converters.openimages_v6 import FILES

    names = FILES[version]
    rng = np.random.default_rng(seed)
    staging = root / ".v3"
    mids = class_files(staging)
    v3_desc = (staging / "class-descriptions.csv").read_bytes()
    (root / names["descriptions"]).write_bytes(b"LabelName,DisplayName\r\n" + v3_desc)
    (root / names["trainable"]).write_text("".join(f"{m}\n" for m in mids))
    for p in staging.iterdir():
        p.unlink()
    staging.rmdir()
    tree = {"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": mids[0], "Subcategory": [{"LabelName": mids[1]}]}, {"LabelName": mids[2]},
    ]}  # fmt: skip
    (root / "bbox_labels_600_hierarchy.json").write_text(json.dumps(tree))
    for k, split in enumerate(("train", "validation", "test")):
        ids = sorted({f"{int(v):016x}" for v in rng.integers(0, 2**63, size=(24, 8, 8)[k])})
        rows = human_labels(ids, mids, rng)
        (root / names[split]).write_text("".join(rows))
        folder = root / "images" / split
        folder.mkdir(parents=True)
        for j, i in enumerate(ids[missing:]):
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes(32 + j % 7, 24, 300 * k + j))
    return root
