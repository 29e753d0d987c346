"""Tiny NUS-WIDE datasets in the two real layouts: the official release (backslash image lists
with CRLF, one 0/1 label file per concept and split) and the pre-formatted .npy files; a few
listed images are absent on disk, as in real partial downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards.converters.nuswide import NUS_CONCEPTS
from tests.support.raw_datasets import REAL, jpeg_bytes

REAL_NUS = REAL / "nuswide"
REAL_CONCEPTS = REAL_NUS / "ConceptsList" / "Concepts81.txt"
FOLDERS = ("actor", "airport", "beach", "zebra")

Rows = list[tuple[str, tuple[int, ...]]]  # (path under Flickr/ with '/', sorted positives)


def tiny_data(n_train: int = 30, n_test: int = 12, seed: int = 0) -> dict[str, Rows]:
    """Per official split, image paths like the release's and 1-3 positives each."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, n, first in (("train", n_train, 1), ("test", n_test, 5001)):
        rows = []
        for k in range(n):
            i = first + k
            rel = f"{FOLDERS[k % len(FOLDERS)]}/{i:04d}_{2124494179 + 7919 * i}.jpg"
            pos = rng.choice(len(NUS_CONCEPTS), size=int(rng.integers(1, 4)), replace=False)
            rows.append((rel, tuple(sorted(pos.tolist()))))
        data[name] = rows
    return data


def absent(data: dict[str, Rows], missing: int) -> dict[str, list[str]]:
    """The ``missing`` images of each split left off the disk (every 4th from the 2nd)."""
    return {name: [rel for rel, _ in rows[1::4][:missing]] for name, rows in data.items()}


def write_images(root: Path, data: dict[str, Rows], missing: int) -> None:
    gone = {rel for rels in absent(data, missing).values() for rel in rels}
    for name, rows in data.items():
        for k, (rel, _) in enumerate(rows):
            if rel not in gone:
                path = root / "Flickr" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                seed = k + (0 if name == "train" else 1000)
                path.write_bytes(jpeg_bytes(32 + k % 5, 24 + k % 3, seed))


def concepts_bytes() -> bytes:
    """Concepts81.txt: the real file where present, else the built-in names (CRLF as released)."""
    if REAL_CONCEPTS.is_file():
        return REAL_CONCEPTS.read_bytes()
    return "".join(f"{c}\r\n" for c in NUS_CONCEPTS).encode()


def nuswide_official(
    root: Path,
    missing: int = 2,
    data: dict[str, Rows] | None = None,
    concepts_at: str = "ConceptsList",
) -> Path:
    """ImageList/{Train,Test}Imagelist.txt, Groundtruth/TrainTestLabels/Labels_<c>_<S>.txt,
    <concepts_at>/Concepts81.txt and Flickr/<folder>/<file>.jpg."""
    data = data or tiny_data()
    (root / "ImageList").mkdir(parents=True)
    gt = root / "Groundtruth" / "TrainTestLabels"
    gt.mkdir(parents=True)
    (root / concepts_at).mkdir(parents=True, exist_ok=True)
    (root / concepts_at / "Concepts81.txt").write_bytes(concepts_bytes())
    for name, suffix in (("train", "Train"), ("test", "Test")):
        rows = data[name]
        listing = "".join(rel.replace("/", "\\") + "\r\n" for rel, _ in rows)
        (root / "ImageList" / f"{suffix}Imagelist.txt").write_text(listing, newline="")
        for k, concept in enumerate(NUS_CONCEPTS):
            values = [str(int(k in pos)) for _, pos in rows]
            if name == "train":  # CRLF with a trailing space, as some copies have
                text = "".join(f"{v} \r\n" for v in values)
            else:  # LF, no final newline
                text = "\n".join(values)
            (gt / f"Labels_{concept}_{suffix}.txt").write_text(text, newline="")
    write_images(root, data, missing)
    return root


def nuswide_formatted(
    root: Path,
    missing: int = 2,
    data: dict[str, Rows] | None = None,
    prefix: str = "Flickr/",
    sep: str = "/",
    dtype: type = np.float32,
) -> Path:
    """formatted_{train,val}_{images,labels}.npy (val = the official test split) and Flickr/;
    image paths ``prefix + folder + sep + file``, labels an N x 81 0/1 matrix of ``dtype``."""
    data = data or tiny_data()
    root.mkdir(parents=True)
    for name, stem in (("train", "formatted_train"), ("test", "formatted_val")):
        rows = data[name]
        images = np.array([prefix + rel.replace("/", sep) for rel, _ in rows])
        labels = np.zeros((len(rows), len(NUS_CONCEPTS)), dtype)
        for i, (_, pos) in enumerate(rows):
            labels[i, list(pos)] = 1
        np.save(root / f"{stem}_images.npy", images)
        np.save(root / f"{stem}_labels.npy", labels)
    write_images(root, data, missing)
    return root
