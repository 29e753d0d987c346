"""Shared fixtures: tiny real-layout datasets built in tmp_path, and the real raw-format files
in ../shared/fixtures/real."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.coco_layout import write_coco_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "fixtures" / "real"


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
    root: Path, n_train: int = 24, n_val: int = 8, num_classes: int = 4, seed: int = 0
) -> Path:
    """A COCO-layout dataset: annotations/instances_{train,val}.json + train/ + val/."""
    rng = np.random.default_rng(seed)
    cats = [
        {"id": 10 + k, "name": f"class{k}", "supercategory": "even" if k % 2 == 0 else "odd"}
        for k in range(num_classes)
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_ann = 1
    for split, n, first in (("train", n_train, 1), ("val", n_val, 5001)):
        (root / split).mkdir(exist_ok=True)
        images, anns = [], []
        for i in range(n):
            iid = first + i
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
        write_coco_json(root / "annotations" / f"instances_{split}.json", data)
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


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "raw")


@pytest.fixture(scope="session")
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at {REAL}")
    return REAL


def shard_cli(root: Path, out: Path, *extra: str, dataset: str = "coco"):
    """``cli.py shard`` through click's CliRunner, one worker."""
    from click.testing import CliRunner

    import cli

    args = ["shard", "--dataset", dataset, "--root", str(root), "--out", str(out)]
    return CliRunner().invoke(cli.main, [*args, "--workers", "1", *extra])


def assert_refused(result, *names: str, out: Path | None = None, fresh: bool = True) -> str:
    """exit 1 with a one-line ``Error:`` naming ``names``, no traceback; ``out`` holds no
    manifest, and a fresh ``out`` is not left behind at all. Returns the error line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], f"{name!r} not named in: {errors[0]}"
    if out is not None:
        assert not (out / "manifest.json").exists()
        if fresh:
            assert not out.exists(), f"left behind: {sorted(p.name for p in out.rglob('*'))}"
    return errors[0]


def gpu_selected(config) -> bool:
    """Whether this session runs the ``gpu`` tests: ``-m gpu`` (or an expression naming gpu
    without negating it)."""
    expr = config.getoption("markexpr", "") or ""
    return "gpu" in expr and "not gpu" not in expr


def pytest_configure(config):
    """Pin the CPU suite to the CPU: on a GPU machine a plain ``pytest`` must run exactly as on
    CI (fp32, gloo, no cuda:1 for a second torchrun rank). Set before anything initialises CUDA;
    child processes (torchrun tests) inherit it. Only ``-m gpu`` sees the GPUs."""
    if not gpu_selected(config):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run with ``-m gpu`` on a machine with CUDA; skipped otherwise."""
    import torch

    if gpu_selected(config) and torch.cuda.is_available():
        return
    why = "needs a CUDA GPU" if gpu_selected(config) else "gpu tests run with -m gpu"
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
