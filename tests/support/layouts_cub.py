"""A tiny CUB-200-2011 in its real on-disk layout: the tarball's flat ``CUB_200_2011/`` with
``attributes.txt`` beside it, or Cole's nested ``CUB_200_2011/CUB_200_2011/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.support.raw_datasets import REAL, jpeg_bytes

SPECIES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
PER_SPECIES = 6
REAL_ATTRIBUTES = REAL / "cub" / "attributes.txt"
_PARTS = ("bill", "wing", "upperparts", "underparts", "breast", "back", "tail", "head", "eye")


def attribute_names() -> list[str]:
    """The real 312 names when the fixture is there, else 312 names of the same form."""
    if REAL_ATTRIBUTES.is_file():
        return [line.split()[1] for line in REAL_ATTRIBUTES.read_text().splitlines() if line]
    return [f"has_{_PARTS[k % len(_PARTS)]}_color::c{k}" for k in range(312)]


def cub_base(root: Path, nested: bool = False) -> Path:
    """The folder holding images.txt in a layout made by :func:`cub_layout`."""
    return root / "CUB_200_2011" / "CUB_200_2011" if nested else root / "CUB_200_2011"


def cub_presence(n_images: int, n_attributes: int = 312, seed: int = 0) -> np.ndarray:
    """The is_present matrix the tiny layout writes: ~10% positives, at least one per image."""
    rng = np.random.default_rng(seed)
    present = rng.random((n_images, n_attributes)) < 0.1
    present[np.arange(n_images), rng.integers(0, n_attributes, n_images)] = True
    return present


def cub_layout(root: Path, nested: bool = False) -> Path:
    """3 species x 6 images (ids 1..18, every third one in test), 312 attributes; returns
    ``root``. One line of image_attribute_labels.txt carries extra fields, as a few real ones do."""
    base = cub_base(root, nested)
    names = attribute_names()
    attrs = base.parent / "attributes.txt"
    base.mkdir(parents=True)
    if REAL_ATTRIBUTES.is_file():
        shutil.copy(REAL_ATTRIBUTES, attrs)
    else:
        attrs.write_text("".join(f"{k} {n}\n" for k, n in enumerate(names, 1)))
    images, split, labels = [], [], []
    for s, species in enumerate(SPECIES):
        stem = species.split(".", 1)[1].title()
        for j in range(PER_SPECIES):
            image_id = s * PER_SPECIES + j + 1
            rel = f"{species}/{stem}_{j + 1:04d}_{790000 + image_id}.jpg"
            (base / "images" / species).mkdir(parents=True, exist_ok=True)
            (base / "images" / rel).write_bytes(jpeg_bytes(40 + j, 30 + s, image_id))
            images.append(f"{image_id} {rel}\n")
            split.append(f"{image_id} {0 if image_id % 3 == 0 else 1}\n")
            labels.append(f"{image_id} {s + 1}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "train_test_split.txt").write_text("".join(split))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(SPECIES, 1)))
    write_attribute_labels(base, cub_presence(len(images), len(names)))
    return root


def write_attribute_labels(base: Path, present: np.ndarray) -> Path:
    """``attributes/image_attribute_labels.txt`` for images 1..N: 312 rows per image,
    ``image_id attribute_id is_present certainty_id time``; row 2 of image 2 has extra fields."""
    lines = []
    for i, row in enumerate(present, 1):
        for a, p in enumerate(row, 1):
            extra = " 0 2" if (i, a) == (2, 2) else ""
            lines.append(f"{i} {a} {int(p)} {1 + (i + a) % 4} {(i * a) % 17}.{a % 10}{extra}\n")
    path = base / "attributes" / "image_attribute_labels.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path
