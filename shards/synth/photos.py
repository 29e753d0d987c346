"""The benches' generated photos: JPEGs with roughly a photo's entropy, and datasets of them in
COCO's layout and Open Images V3's."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shards.synth.coco_layout import write_coco_split

CLASSES = ("person", "dog", "cat", "car", "bicycle", "bird", "boat", "bottle", "chair", "sofa")
VAL_FRACTION = 0.2


def photo_like_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG with roughly a photo's entropy: smooth colour field + shapes + sensor-like noise."""
    low = rng.uniform(0, 255, (max(2, height // 24), max(2, width // 24), 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(4, max(5, width // 2)))
        y1 = y0 + int(rng.integers(4, max(5, height // 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.int16)
    sigma = rng.uniform(8, 24) * min(1.0, width / 500)  # ~55-120 KB at 500x375, quality 90
    arr = arr + rng.normal(0, sigma, arr.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_pool(seed: int, n: int, width: tuple[int, int], height: tuple[int, int]) -> list[tuple]:
    """``n`` distinct (bytes, width, height) with sizes drawn in the given [lo, hi] ranges."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        w, h = (
            int(rng.integers(width[0], width[1] + 1)),
            int(rng.integers(height[0], height[1] + 1)),
        )
        pool.append((photo_like_jpeg(rng, w, h), w, h))
    return pool


def write_coco_dataset(root: Path, n: int, pool: Sequence[tuple], seed: int = 0) -> int:
    """COCO layout (annotations/instances_{train,val}.json + train/ + val/) of ``n`` images
    cycling through ``pool``; 1-3 of 10 categories with a bbox each. Returns the image bytes."""
    rng = np.random.default_rng(seed)
    n_val = min(n - 1, max(1, round(VAL_FRACTION * n)))
    cats = [{"id": k + 1, "name": c, "supercategory": "object"} for k, c in enumerate(CLASSES)]
    total, ann_id = 0, 1
    for split, ids in (("train", range(1, n - n_val + 1)), ("val", range(n - n_val + 1, n + 1))):
        files, imgs, anns = {}, [], []
        for image_id in ids:
            data, w, h = pool[int(rng.integers(len(pool)))]
            name = f"{image_id:012d}.jpg"
            files[name] = data
            total += len(data)
            imgs.append({"id": image_id, "file_name": name, "width": w, "height": h})
            for c in rng.choice(len(CLASSES), size=int(rng.integers(1, 4)), replace=False):
                bw, bh = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
                x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": int(c) + 1,
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
        doc = {"images": imgs, "annotations": anns, "categories": cats}
        write_coco_split(root, split, files, doc)
    return total


OI_IMAGES_HEADER = (
    "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,"
    "OriginalSize,OriginalMD5,Thumbnail300KURL\n"
)


def write_openimages_dataset(
    root: Path, n: int, pool: Sequence[tuple], classes: int, annotations: float, seed: int = 0
) -> int:
    """Open Images V3 layout (``2017_11/`` metadata, ``images_<split>/<ImageID>.jpg``) of ``n``
    images cycling through ``pool`` (80 / 10 / 10 % train / validation / test): about
    ``annotations`` human labels an image over ``classes`` trainable classes, drawn Zipf-like
    (class c with weight (c + 1) ** -0.9), the most frequent of them positive, the others with
    probability 0.6, the rest explicit negatives; every other entry unknown. Returns the image
    bytes."""
    rng = np.random.default_rng(seed)
    meta = root / "2017_11"
    meta.mkdir(parents=True)
    mids = [f"/m/0{k:06d}" for k in range(classes)]
    (meta / "classes-trainable.txt").write_text("".join(m + "\n" for m in mids))
    (meta / "class-descriptions.csv").write_text(
        "".join(f"{m},class {k}\n" for k, m in enumerate(mids))
    )
    weights = (np.arange(classes) + 1.0) ** -0.9
    p = weights / weights.sum()
    total, start, held = 0, 0, max(1, round(0.1 * n))  # validation and test each
    for split, count in (("train", n - 2 * held), ("validation", held), ("test", held)):
        ids = [f"{start + k + 1:016x}" for k in range(count)]
        start += count
        (meta / split).mkdir()
        (meta / split / "images.csv").write_text(
            OI_IMAGES_HEADER + "".join(f"{i},{split},,,,,,,,,\n" for i in ids)
        )
        rows, folder = ["ImageID,Source,LabelName,Confidence\n"], root / f"images_{split}"
        folder.mkdir()
        for i in ids:
            data = pool[int(rng.integers(len(pool)))][0]
            (folder / f"{i}.jpg").write_bytes(data)
            total += len(data)
            extra = rng.poisson(max(0.0, annotations - 1))
            drawn = np.unique(rng.choice(classes, size=1 + extra, p=p))
            positive = rng.random(len(drawn)) < 0.6
            positive[0] = True
            rows += [
                f"{i},verification,{mids[c]},{int(v)}\n"
                for c, v in zip(drawn, positive, strict=True)
            ]
        (meta / split / "annotations-human.csv").write_text("".join(rows))
    return total
