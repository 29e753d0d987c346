"""The tests' generated raw datasets, in the real on-disk layouts, and the real fixtures.

- ``make_coco`` / ``make_voc``: COCO (boxes, images of random sizes) and a VOC devkit folder with
  per-class lists: what the converters, pipelines and trainer tests shard;
- ``make_coco_fixed`` / ``make_voc_devkit``: fixed ids and 24x16 images (COCO without boxes,
  ``VOCdevkit/VOC<year>`` with XML labels) that the CLI and bad-input tests point into by id;
- the real fixtures of ../shared/fixtures/real (``real_voc2007``, ``real_coco2014``), the ways a
  downloaded JPEG goes wrong (``CORRUPTIONS``) and ``tree_digest``. Every dataset is written
  through ``shards.synth.coco_layout`` or plain files; none is a second writer of shard sets."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from shards.synth import coco_layout

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "fixtures" / "real"

REAL_VOC2007 = REAL / "voc" / "VOCdevkit" / "VOC2007"
REAL_COCO = REAL / "coco"
REAL_COCO_JSON = REAL_COCO / "annotations" / "instances_val2014_100.json"

COCO_CATEGORIES = [
    {"id": 1, "name": "cat", "supercategory": "animal"},
    {"id": 3, "name": "dog", "supercategory": "animal"},
    {"id": 7, "name": "car", "supercategory": "vehicle"},
]


def jpeg_bytes(w: int, h: int, seed: int, quality: int = 85, progressive: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    y, x = np.mgrid[0:h, 0:w]
    img = (base + 40 * np.sin(x[..., None] / (3 + seed % 5)) + 30 * np.cos(y[..., None] / 4)) % 255
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(
        buf, format="JPEG", quality=quality, progressive=progressive
    )
    return buf.getvalue()


def make_coco(
    root: Path,
    n_train: int = 24,
    n_val: int = 8,
    num_classes: int = 4,
    seed: int = 0,
    first: tuple[int, int] = (1, 5001),
) -> Path:
    """A COCO-layout dataset: annotations/instances_{train,val}.json + train/ + val/; image ids
    count from ``first`` (train, val)."""
    rng = np.random.default_rng(seed)
    cats = [
        {"id": 10 + k, "name": f"class{k}", "supercategory": "even" if k % 2 == 0 else "odd"}
        for k in range(num_classes)
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_ann = 1
    for split, n, start in (("train", n_train, first[0]), ("val", n_val, first[1])):
        (root / split).mkdir(exist_ok=True)
        images, anns = [], []
        for i in range(n):
            iid = start + i
            w, h = int(rng.integers(24, 64)), int(rng.integers(24, 64))
            name = f"img_{split}_{iid:06d}.jpg"
            (root / split / name).write_bytes(jpeg_bytes(w, h, iid))
            images.append({"id": iid, "file_name": name, "width": w, "height": h})
            for c in rng.choice(num_classes, size=int(rng.integers(1, 3)), replace=False):
                anns.append(
                    {
                        "id": next_ann,
                        "image_id": iid,
                        "category_id": cats[int(c)]["id"],
                        "bbox": [0, 0, 4, 4],
                        "area": 16,
                        "iscrowd": 0,
                    }
                )
                next_ann += 1
        data = {"images": images, "annotations": anns, "categories": cats}
        coco_layout.write_coco_json(root / "annotations" / f"instances_{split}.json", data)
    return root


def make_voc(
    root: Path,
    ids_train: list[str],
    ids_test: list[str],
    labels: dict,
    classes,
    class_lists: bool = True,
    seed: int = 0,
) -> Path:
    """A VOC devkit folder: JPEGImages/, ImageSets/Main/ (per-class lists or set lists +
    Annotations/). ``labels[id] = {class: 1 | 0 | -1}`` (0 = difficult)."""
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations").mkdir()
    for k, i in enumerate(ids_train + ids_test):
        (root / "JPEGImages" / f"{i}.jpg").write_bytes(jpeg_bytes(40, 30, seed + k))
        objs = "".join(
            f"<object><name>{c}</name><difficult>{1 if v == 0 else 0}</difficult></object>"
            for c, v in labels[i].items()
            if v >= 0
        )
        (root / "Annotations" / f"{i}.xml").write_text(f"<annotation>{objs}</annotation>")
    for set_name, ids in (("train", ids_train), ("val", ids_test)):
        (main / f"{set_name}.txt").write_text("".join(f"{i}\n" for i in ids))
        if class_lists:
            for c in classes:
                lines = "".join(f"{i} {labels[i].get(c, -1):>2}\n" for i in ids)
                (main / f"{c}_{set_name}.txt").write_text(lines)
    return root


_COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def flat_jpeg_bytes(size: tuple[int, int] = (24, 16), seed: int = 0) -> bytes:
    """A small, valid baseline JPEG whose pixels depend on ``seed``."""
    im = Image.new("RGB", size, _COLORS[seed % len(_COLORS)])
    im.putpixel((seed % size[0], (seed // size[0]) % size[1]), (255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_jpeg(path: Path, size: tuple[int, int] = (24, 16), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flat_jpeg_bytes(size, seed))
    return path


# Ways a downloaded .jpg goes wrong (each must be refused, or skipped with --on-bad skip).
def corrupt_truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_random(path: Path) -> None:
    path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(700)))


def corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def corrupt_html(path: Path) -> None:
    path.write_bytes(b"<html><body>404 Not Found</body></html>\n")


CORRUPTIONS = {
    "truncated": corrupt_truncated,
    "random-bytes": corrupt_random,
    "empty": corrupt_empty,
    "html-page": corrupt_html,
}


def coco_image(image_id: int, split: str) -> dict:
    return {"id": image_id, "file_name": f"{split}_{image_id:06d}.jpg", "width": 24, "height": 16}


def make_coco_fixed(
    root: Path,
    n_train: int = 10,
    n_test: int = 5,
    categories: list[dict] | None = None,
) -> Path:
    """``root/annotations/instances_{train,val}.json`` + ``root/{train,val}/*.jpg`` (dataset
    ``coco``). Image ids start at 1 (train) and 1001 (val); every image has 1-2 labels."""
    cats = categories or COCO_CATEGORIES
    for split, n, first in (("train", n_train, 1), ("val", n_test, 1001)):
        images, anns = [], []
        for k in range(n):
            iid = first + k
            im = coco_image(iid, split)
            images.append(im)
            write_jpeg(root / split / im["file_name"], seed=iid)
            anns.append({"id": iid * 10, "image_id": iid, "category_id": cats[k % len(cats)]["id"]})
            if k % 2:
                cat = cats[(k + 1) % len(cats)]["id"]
                anns.append({"id": iid * 10 + 1, "image_id": iid, "category_id": cat})
        write_coco_json(root / "annotations" / f"instances_{split}.json", images, anns, cats)
    return root


def write_coco_json(path: Path, images: list, annotations: list, categories: list) -> Path:
    doc = {"images": images, "annotations": annotations, "categories": categories}
    return coco_layout.write_coco_json(path, doc)


def coco_json(root: Path, split: str = "train") -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def coco_image_path(root: Path, image_id: int, split: str = "train") -> Path:
    return root / split / coco_image(image_id, split)["file_name"]


VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{id}.jpg</filename>
\t<size><width>24</width><height>16</height><depth>3</depth></size>
{objects}</annotation>
"""
VOC_OBJECT = "\t<object><name>{name}</name><difficult>{difficult}</difficult></object>\n"


def make_voc_devkit(root: Path, trainval: list[str], test: list[str], year: str = "2007") -> Path:
    """``root/VOCdevkit/VOC<year>/{Annotations,ImageSets/Main,JPEGImages}`` with the given id
    lists (``voc2007`` preset: labels read from the XMLs). Returns the VOC<year> folder."""
    base = root / "VOCdevkit" / f"VOC{year}"
    names = ("dog", "person", "car", "chair")
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for set_name, ids in (("trainval", trainval), ("test", test)):
        (main / f"{set_name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for k, i in enumerate(ids):
            objs = VOC_OBJECT.format(name=names[k % len(names)], difficult=0)
            if k % 3 == 1:
                objs += VOC_OBJECT.format(name=names[(k + 1) % len(names)], difficult=1)
            xml = base / "Annotations" / f"{i}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(VOC_XML.format(id=i, objects=objs))
            write_jpeg(base / "JPEGImages" / f"{i}.jpg", seed=k)
    return base


def real_voc2007(dest: Path) -> Path:
    """A copy of the real VOC2007 fixture at ``dest/VOCdevkit/VOC2007``; returns ``dest``."""
    shutil.copytree(REAL_VOC2007, dest / "VOCdevkit" / "VOC2007")
    return dest


def real_coco2014(dest: Path, n_train: int = 5) -> Path:
    """A ``coco2014`` root made from the real val2014 sample: of the images present on disk, the
    first ``n_train`` (by id) form instances_train2014.json, the rest instances_val2014.json.
    Images are copied (tests may corrupt them)."""
    data = json.loads(REAL_COCO_JSON.read_text())
    on_disk = {p.name for p in (REAL_COCO / "val2014").glob("*.jpg")}
    images = sorted(
        (im for im in data["images"] if im["file_name"] in on_disk), key=lambda im: im["id"]
    )
    for split, ims in (("train2014", images[:n_train]), ("val2014", images[n_train:])):
        ids = {im["id"] for im in ims}
        anns = [a for a in data["annotations"] if a["image_id"] in ids]
        write_coco_json(
            dest / "annotations" / f"instances_{split}.json", ims, anns, data["categories"]
        )
        (dest / split).mkdir(parents=True, exist_ok=True)
        for im in ims:
            shutil.copy(REAL_COCO / "val2014" / im["file_name"], dest / split / im["file_name"])
    return dest


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
