"""The runs ``predict`` and ``export`` are tested on, built once per session (read-only: copy a
run before changing it): a tiny digits shard set whose test split holds one image of every
kind a user has (tests/support/image_kinds.py: 16-bit and palette PNGs, CMYK, each EXIF orientation),
a real CLIP cache of the random-weight tiny CLIP, a backbone cache made from a local weights
file, and runs on them: linear, zero-shot, a toy cache no encoder made, e2e (tiny ResNet, 32
px) and a linear --sweep that keeps every member."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

import cli
from models.backbones import create_backbone
from models.cache import cache_clip, cache_features
from shards.caches import write_cache
from shards.convert.convert import convert
from shards.shardset import open_shard_set
from shards.synth.digits import write_demo_data
from tests.support.image_kinds import image_kinds
from train.config import RunConfig
from train.run import train

TAG = "wsml-tiny-clip__none"
SWEEP = {"sweep_lrs": (1e-2, 1e-3), "sweep_batches": (8, 16)}
_built: dict[str, dict[str, Path]] = {}


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def probs_of(table) -> np.ndarray:
    return np.stack([table.column(c).to_numpy() for c in table.column_names if c[:2] == "p_"], 1)


def get_predict_setup(tmp_path_factory) -> dict[str, Path]:
    if "setup" not in _built:
        _built["setup"] = build(tmp_path_factory.mktemp("predict"))
    return _built["setup"]


def mix_kinds(raw: Path) -> dict[str, str]:
    """The first official val images (the test split) replaced by every kind of file showing
    the same digits; {key: kind}."""
    ann = raw / "annotations" / "instances_val.json"
    doc = json.loads(ann.read_text())
    kinds: dict[str, str] = {}
    for im in doc["images"]:
        path = raw / "val" / im["file_name"]
        with Image.open(path) as opened:
            made = image_kinds(np.asarray(opened.convert("RGB")))
        todo = [k for k in made if k not in kinds.values() and k != "plain"]
        if not todo:
            break
        data, suffix = made[todo[0]]
        path.unlink()
        im["file_name"] = path.stem + suffix
        (raw / "val" / im["file_name"]).write_bytes(data)
        kinds[path.stem] = todo[0]
    ann.write_text(json.dumps(doc))
    return kinds


def build(base: Path) -> dict[str, Path]:
    """Shards (train 60, val 30, test 30 images), the caches, the runs, and the test split's
    shard members as loose JPEGs (``images``)."""
    write_demo_data(base / "raw", n_train=60, n_val=30, size=32)
    kinds = mix_kinds(base / "raw")
    convert("coco", base / "raw", base / "shards", {}, {}, workers=1, fsync=False)
    sh = base / "shards"
    cache_clip(sh, model="wsml-tiny-clip", pretrained="none", device="cpu", backend="torch")
    ss = open_shard_set(sh)
    rng = np.random.default_rng(0)
    toy = {s: rng.normal(size=(len(ss.full_labels(s)), 8)) for s in ss.splits}
    write_cache(sh, "toy", toy, model="toy")
    backbone, _ = create_backbone("test_resnet", weights="none")  # a local weights file
    torch.save(backbone.state_dict(), base / "resnet.pt")
    made = cache_features(
        sh, backbone="test_resnet", weights=str(base / "resnet.pt"), preset="backbone",
        image_size=32, device="cpu", backend="torch",
    )  # fmt: skip
    common = dict(shards=str(sh), loader="torch", overwrite=True)
    opts = {"epochs": "2", "lr": "0.01"}
    runs = {
        "linear": RunConfig(method="an", features=TAG, method_options=opts, **common),
        "zeroshot": RunConfig(method="clip-zeroshot", features=TAG, **common),
        "toy": RunConfig(method="an", features="toy", method_options=opts, **common),
        "file": RunConfig(method="an", features=made["tag"], method_options=opts, **common),
        "e2e": RunConfig(
            method="an",
            setting="e2e",
            backbone="test_resnet",
            weights="none",
            image_size=32,
            method_options={"epochs": "1", "lr": "0.01", "batch_size": "16"},
            **common,
        ),  # fmt: skip
        "sweep": RunConfig(
            method="an",
            features=TAG,
            method_options={"epochs": "2"},
            sweep=True,
            keep_members=True,
            **SWEEP,
            **common,
        ),  # fmt: skip
    }
    out = {"base": base, "shards": sh, "images": base / "images", "weights": base / "resnet.pt"}
    out["raw_test"] = base / "raw" / "val"
    out["kinds"] = kinds  # type: ignore[assignment]
    for name, config in runs.items():
        out[name] = base / "runs" / name
        train(RunConfig(**{**config.__dict__, "out": str(out[name])}))
    with tarfile.open(sh / "test-000000.tar") as tar:
        for m in tar.getmembers():
            if m.name.endswith(".jpg"):
                (out["images"] / "sub").mkdir(parents=True, exist_ok=True)
                (out["images"] / "sub" / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    return out


def resized_photos(folder: Path, sources: list[Path]) -> list[Path]:
    """Non-square, resized copies of ``sources`` (JPEG and PNG), as an application gets them."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(57, 31), (23, 70), (100, 45), (64, 65), (41, 90), (300, 120)]
    made = []
    for i, src in enumerate(sources):
        with Image.open(src) as im:
            w, h = sizes[i % len(sizes)]
            small = im.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
        fmt, suffix = ("PNG", ".png") if i % 3 == 2 else ("JPEG", ".jpg")
        buf = io.BytesIO()
        small.save(buf, fmt)
        made.append(folder / f"photo{i:02d}{suffix}")
        made[-1].write_bytes(buf.getvalue())
    return made
