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

from shards.coco_layout import write_coco_json
from shards.errors import WsmlError
from shards.fileio import read_json

GENERATOR_VERSION = 1
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Latent scene types: (name, favoured digits, probability). Digit 2 is in no group but has a
# high prior, so it goes with anything; "mixed" scenes follow the prior alone.
SCENES = (
    ("round", (0, 6, 8), 0.25),
    ("straight", (1, 4, 7), 0.30),
    ("curly", (3, 5, 9), 0.25),
    ("mixed", (), 0.20),
)
SCENE_BOOST = 20.0  # weight multiplier of a scene's favoured digits
CLASS_PRIOR = (1.0, 1.8, 3.0, 0.8, 1.2, 0.4, 0.9, 1.4, 0.5, 0.3)  # global imbalance: 9, 5, 8 rare
COUNT_P = (0.45, 0.30, 0.17, 0.08)  # probability of 1, 2, 3, 4 digits in an image
MAX_OVERLAP = 0.25  # max share of a digit's ink box covered by another digit's box
INK = 0.25  # alpha above which a pixel counts as ink (for the bounding box)
N_RAMPS = 16  # directions of the background gradient
NOISE_SIGMA = 5.0  # standard deviation of the background noise, in grey levels
VAL_FRACTION = 0.25
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
    pools = _split_digits(rng)
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


# ---------------------------------------------------------------- labels


def _split_digits(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Split the digit scans once (stratified), so val handwriting is unseen in train."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images.astype(np.float32) / 16.0, 0.0, 1.0)
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for c in range(len(NAMES)):
        members = rng.permutation(np.flatnonzero(digits.target == c))
        n_val = max(1, round(len(members) * VAL_FRACTION))
        pools["val"].append(images[members[:n_val]])
        pools["train"].append(images[members[n_val:]])
    return pools


def _sample_labels(rng: np.random.Generator, n: int) -> list[list[int]]:
    """Digit classes of each image (repeats allowed), from a latent scene type per image."""
    scene_p = np.array([p for _, _, p in SCENES])
    weights = np.tile(np.array(CLASS_PRIOR), (len(SCENES), 1))
    for s, (_, favoured, _) in enumerate(SCENES):
        weights[s, list(favoured)] *= SCENE_BOOST
    cdf = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    scenes = rng.choice(len(SCENES), size=n, p=scene_p)
    counts = rng.choice(len(COUNT_P), size=n, p=np.array(COUNT_P)) + 1
    u = rng.random((n, len(COUNT_P)))
    classes = (u[:, :, None] > cdf[scenes][:, None, :]).sum(-1)
    classes = np.minimum(classes, len(NAMES) - 1)
    plans = [classes[i, : counts[i]].tolist() for i in range(n)]
    _cover_classes(rng, plans)
    return plans


def _cover_classes(rng: np.random.Generator, plans: list[list[int]]) -> None:
    """Put each class absent from the split into some image (only matters for small splits)."""
    counts = np.bincount(np.concatenate(plans), minlength=len(NAMES))
    for c in np.flatnonzero(counts == 0).tolist():
        roomy = [i for i, p in enumerate(plans) if len(p) < len(COUNT_P)]
        if roomy:
            plans[roomy[rng.integers(len(roomy))]].append(c)
        else:
            spare = [(i, j) for i, p in enumerate(plans) for j, d in enumerate(p) if counts[d] > 1]
            if not spare:
                continue
            i, j = spare[rng.integers(len(spare))]
            counts[plans[i][j]] -= 1
            plans[i][j] = c
        counts[c] += 1


# ---------------------------------------------------------------- images


class _Painter:
    """Renders one split's mosaics from cached digit patches, gradient ramps and a noise field."""

    def __init__(self, pool: list[np.ndarray], size: int, rng: np.random.Generator) -> None:
        self.pool, self.size = pool, size
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        angles = np.linspace(0.0, 2 * np.pi, N_RAMPS, endpoint=False)[:, None, None]
        ramps = np.cos(angles) * x + np.sin(angles) * y
        ramps -= ramps.min(axis=(1, 2), keepdims=True)
        self.ramps = (ramps / ramps.max(axis=(1, 2), keepdims=True)).astype(np.float32)
        noise = rng.standard_normal((3, 2 * size, 2 * size), dtype=np.float32)
        self.noise = noise * np.float32(NOISE_SIGMA)
        self.matrices: dict[int, np.ndarray] = {}
        self.patches: dict[tuple[int, int, int], tuple[np.ndarray, tuple[int, ...]]] = {}

    def patch(self, c: int, k: int, side: int) -> tuple[np.ndarray, tuple[int, ...]]:
        """Digit ``k`` of class ``c`` upscaled to ``side`` px (alpha 0..1) and its ink box."""
        key = (c, k, side)
        if key not in self.patches:
            if side not in self.matrices:
                self.matrices[side] = _upscale_matrix(side, self.pool[c].shape[1])
            m = self.matrices[side]
            alpha = np.clip(m @ self.pool[c][k] @ m.T * np.float32(1.15), 0.0, 1.0)
            rows = np.flatnonzero((alpha > INK).any(1))
            cols = np.flatnonzero((alpha > INK).any(0))
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            self.patches[key] = (alpha, box)
        return self.patches[key]

    def background(self, rng: np.random.Generator) -> np.ndarray:
        """Dark canvas (channels first, float32 0..255): a coloured gradient plus mild noise."""
        size = self.size
        ramp = self.ramps[rng.integers(N_RAMPS)]
        base = rng.uniform(0.0, 40.0, 3).astype(np.float32)
        tilt = rng.uniform(0.0, 35.0, 3).astype(np.float32)
        x, y = rng.integers(0, size + 1, size=2)
        canvas = tilt[:, None, None] * ramp + self.noise[:, y : y + size, x : x + size]
        canvas += base[:, None, None]
        return canvas

    def render(
        self, rng: np.random.Generator, classes: list[int]
    ) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
        """One mosaic (uint8 RGB, height x width x 3) and its (class, [x, y, w, h]) boxes."""
        size = self.size
        canvas = self.background(rng)
        top = 0.44 if len(classes) <= 2 else 0.34
        low, high = max(8, round(0.16 * size)), max(9, round(top * size))
        boxes: list[tuple[int, ...]] = []
        objects = []
        for c in classes:
            side = int(rng.integers(low, high + 1))
            alpha, box = self.patch(c, int(rng.integers(len(self.pool[c]))), side)
            x, y = _place(rng, box, side, size, boxes)
            tint = rng.uniform(0.3, 1.0, 3)
            colour = (tint / tint.max() * rng.uniform(190.0, 255.0)).astype(np.float32)
            region = canvas[:, y : y + side, x : x + side]
            np.maximum(region, colour[:, None, None] * alpha, out=region)
            boxes.append((x + box[0], y + box[1], x + box[2], y + box[3]))
            w, h = box[2] - box[0], box[3] - box[1]
            objects.append((c, [float(x + box[0]), float(y + box[1]), float(w), float(h)]))
        np.clip(canvas + np.float32(0.5), 0, 255, out=canvas)
        return np.dstack(canvas.astype(np.uint8)), objects


def _upscale_matrix(side: int, src: int) -> np.ndarray:
    """(side, src) bicubic interpolation weights (Keys, a = -0.5), edges clamped, rows sum to 1."""
    centre = (np.arange(side) + 0.5) * src / side - 0.5
    taps = np.floor(centre)[:, None] + np.arange(-1, 3)
    t = np.abs(centre[:, None] - taps)
    a = -0.5
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    weights = np.where(t <= 1, near, np.where(t < 2, far, 0.0))
    matrix = np.zeros((side, src))
    rows = np.repeat(np.arange(side)[:, None], taps.shape[1], axis=1)
    np.add.at(matrix, (rows, np.clip(taps, 0, src - 1).astype(int)), weights)
    return (matrix / matrix.sum(1, keepdims=True)).astype(np.float32)


def _place(
    rng: np.random.Generator, box: tuple[int, ...], side: int, size: int, boxes: list
) -> tuple[int, int]:
    """Top-left corner for a patch: first of 16 random tries whose ink box is mostly uncovered."""
    corners = rng.integers(0, size - side + 1, size=(16, 2))
    if not boxes:
        return int(corners[0, 0]), int(corners[0, 1])
    ink = np.array(box, dtype=np.float64)
    cand = np.concatenate([corners + ink[:2], corners + ink[2:]], axis=1)  # (16, 4) x0 y0 x1 y1
    old = np.array(boxes, dtype=np.float64)
    wx = np.minimum(cand[:, None, 2], old[None, :, 2]) - np.maximum(cand[:, None, 0], old[:, 0])
    wy = np.minimum(cand[:, None, 3], old[None, :, 3]) - np.maximum(cand[:, None, 1], old[:, 1])
    inter = np.clip(wx, 0, None) * np.clip(wy, 0, None)
    area_new = (ink[2] - ink[0]) * (ink[3] - ink[1])
    area_old = (old[:, 2] - old[:, 0]) * (old[:, 3] - old[:, 1])
    worst = (inter / np.minimum(area_new, area_old[None, :])).max(1)
    ok = np.flatnonzero(worst < MAX_OVERLAP)
    pick = int(ok[0]) if len(ok) else int(worst.argmin())
    return int(corners[pick, 0]), int(corners[pick, 1])


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
    painter = _Painter(pool, size, rng)
    images, annotations = [], []
    for i, classes in enumerate(_sample_labels(rng, n)):
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
