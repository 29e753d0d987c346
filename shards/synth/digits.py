"""A real multi-label demo dataset without network: mosaics of scikit-learn's handwritten digits
(UCI optdigits, 1,797 real 8x8 scans) with structured class co-occurrence, written in COCO layout.
"""

from __future__ import annotations

import io
import numbers
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shards.base.errors import WsmlError
from shards.base.fileio import read_json
from shards.synth.coco_layout import write_coco_json
from shards.synth.paint import NAMES, Painter, sample_labels, split_digits

GENERATOR_VERSION = 1
JPEG_QUALITY = 90
SPLITS = ("train", "val")
_FILE_RE = re.compile(r"digits_(train|val)_[0-9]+\.jpg")
_LICENSE = {
    "id": 1,
    "name": "CC BY 4.0 (UCI Optical Recognition of Handwritten Digits)",
    "url": "https://creativecommons.org/licenses/by/4.0/",
}


def write_demo_data(
    out: str | Path,
    n_train: int = 3000,
    n_val: int = 1000,
    size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Write a COCO-layout multi-label digits dataset; returns a summary dict (counts per split,
    classes, out path). A complete dataset with the same parameters is kept as it is."""
    params = _check_params(n_train, n_val, size, seed)
    out = Path(out)
    existing = _existing_summary(out, params)
    if existing is not None:
        return existing
    rng = np.random.default_rng(seed)
    pools = split_digits(rng)
    docs: dict[str, dict] = {}
    with _progress_bar(n_train + n_val, progress) as bar, _Saver(bar) as saver:
        for split, n in zip(SPLITS, (n_train, n_val), strict=True):
            base = 0 if split == "train" else 10 ** max(5, len(str(n_train)))
            docs[split] = _write_split(out, split, n, base, pools[split], size, rng, params, saver)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_coco_json(out / "annotations" / f"instances_{split}.json", docs[split])
    return _summary(out, params, docs, written=True)


def _check_params(n_train: int, n_val: int, size: int, seed: int) -> dict[str, int]:
    values = {"n_train": n_train, "n_val": n_val, "seed": seed, "size": size}
    for name, value in values.items():
        low = {"seed": 0, "size": 32}.get(name, 1)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise WsmlError(f"{name} must be an integer >= {low}, got {value!r}")
    return {name: int(value) for name, value in values.items()}


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc="demo images", unit="img")


# ---------------------------------------------------------------- existing output


def _existing_summary(out: Path, params: dict[str, int]) -> dict | None:
    """Summary of a complete dataset with these parameters, None if ``out`` may be (re)written."""
    if out.exists() and not out.is_dir():
        raise WsmlError(f"demo output {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    docs = {s: _read_json(out / "annotations" / f"instances_{s}.json") for s in SPLITS}
    found = [d for d in docs.values() if d is not None]
    same = all(_stamp_of(d) == _stamp(params) for d in found)
    if same and len(found) == len(SPLITS) and _images_present(out, docs):
        return _summary(out, params, docs, written=False)
    if same and _only_demo_files(out):
        _remove_demo_files(out)  # an interrupted run of ours: start again
        return None
    raise WsmlError(
        f"{out} is not empty and does not hold a complete demo dataset with parameters "
        f"{params}; remove it or choose an empty or new folder"
    )


def _read_json(path: Path) -> dict | None:
    """A demo annotation file, or None where there is none we could have written."""
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _images_present(out: Path, docs: dict[str, dict | None]) -> bool:
    return all(
        (out / split / str(img.get("file_name", ""))).is_file()
        for split, doc in docs.items()
        for img in (doc or {}).get("images", [])
    )


def _only_demo_files(out: Path) -> bool:
    """True if everything under ``out`` has a name this module writes."""
    for entry in out.iterdir():
        if entry.name not in ("annotations", *SPLITS) or not entry.is_dir():
            return False
        names = [p.name for p in entry.iterdir()]
        if entry.name == "annotations":
            ok = all(
                re.fullmatch(r"\.?instances_(train|val)\.json(\.\d+\.wsml-tmp)?", n) for n in names
            )
        else:
            ok = all(_FILE_RE.fullmatch(n) for n in names)
        if not ok:
            return False
    return True


def _remove_demo_files(out: Path) -> None:
    for folder in ("annotations", *SPLITS):
        if (out / folder).is_dir():
            for path in (out / folder).iterdir():
                path.unlink()


def _summary(out: Path, params: dict[str, int], docs: dict, written: bool) -> dict:
    splits = {
        s: {"images": len(docs[s]["images"]), "annotations": len(docs[s]["annotations"])}
        for s in SPLITS
    }
    return {
        "out": str(out),
        "classes": list(NAMES),
        "splits": splits,
        "params": dict(params),
        "written": written,
    }


def _stamp(params: dict[str, int]) -> dict[str, int]:
    return {**params, "version": GENERATOR_VERSION}


def _stamp_of(doc: dict) -> Any:
    info = doc.get("info")
    return info.get("wsml_demo") if isinstance(info, dict) else None


# ---------------------------------------------------------------- writing


class _Saver:
    """Encodes and writes JPEGs on two threads (Pillow and file I/O release the GIL), keeping
    a bounded number of images in flight."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.pending: deque[Future] = deque()

    def submit(self, path: Path, pixels: np.ndarray) -> None:
        self.pending.append(self.pool.submit(_save_jpeg, path, pixels))
        while len(self.pending) > 64:
            self._finish_one()

    def _finish_one(self) -> None:
        self.pending.popleft().result()
        self.bar.update(1)

    def __enter__(self) -> _Saver:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            while self.pending and exc_type is None:
                self._finish_one()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    """Baseline JPEG, encoded in memory and written with one call (cheaper on slow filesystems)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, progressive=False)
    path.write_bytes(buffer.getbuffer())


def _write_split(
    out: Path,
    split: str,
    n: int,
    base: int,
    pool: list[np.ndarray],
    size: int,
    rng: np.random.Generator,
    params: dict[str, int],
    saver: _Saver,
) -> dict:
    """Render and save one split's images; returns its COCO instances document."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    painter = Painter(pool, size, rng)
    images, annotations = [], []
    for i, classes in enumerate(sample_labels(rng, n)):
        pixels, objects = painter.render(rng, classes)
        name = f"digits_{split}_{i + 1:06d}.jpg"
        saver.submit(folder / name, pixels)
        image_id = base + i + 1
        images.append(
            {"id": image_id, "file_name": name, "width": size, "height": size, "license": 1}
        )
        for c, bbox in objects:
            annotations.append(_annotation(base + len(annotations) + 1, image_id, c, bbox))
    return _coco_document(split, params, images, annotations)


def _annotation(ann_id: int, image_id: int, c: int, bbox: list[float]) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": c + 1,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        "segmentation": [],
    }


def _coco_document(split: str, params: dict[str, int], images: list, annotations: list) -> dict:
    info = {
        "description": f"wsml demo: multi-label mosaics of handwritten digits ({split})",
        "contributor": "wsml, from scikit-learn load_digits (UCI optdigits)",
        "url": "",
        "version": str(GENERATOR_VERSION),
        "year": 2024,
        "date_created": "",
        "wsml_demo": _stamp(params),
    }
    categories = [
        {"id": c + 1, "name": name, "supercategory": "odd" if c % 2 else "even"}
        for c, name in enumerate(NAMES)
    ]
    return {
        "info": info,
        "licenses": [_LICENSE],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
