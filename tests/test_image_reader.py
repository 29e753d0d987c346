"""The one image reader (shards/convert/images.py ``read_rgb``) gives, for every kind of file a user has,
the pixels a shard of that image holds: JPEGs (grey, CMYK, each EXIF orientation) are stored
as they are and decoded, by the PyTorch loader and by DALI alike, to exactly the reader's
pixels; other kinds (16-bit, palette with transparency, alpha) are stored as the JPEG of the
reader's pixels, byte for byte."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.loader import LoaderOptions, create_loader
from pipelines.presets import Preset
from shards.convert.convert import convert
from shards.convert.images import BadImage, encode_jpeg, read_rgb
from shards.shardset import open_shard_set
from tests.support.image_kinds import image_kinds, jpeg_turned, picture, png16, reencoded
from tests.support.pipelines_data import BACKENDS
from tests.support.raw_datasets import make_coco

SIDE = 40  # every kind is SIDE x SIDE, so that the loaders can batch them untouched


def _identity_dali(images, train: bool, device: str):
    return images, {}


def _identity_tensor(x, train: bool, rng):
    return x, False


# the stored pixels as they are, normalised by mean 0 and std 1: x / 255
IDENTITY = Preset(
    "identity", SIDE, (0.0,) * 3, (1.0,) * 3, "none", _identity_dali, _identity_tensor
)


@pytest.fixture(scope="module")
def kinds_set(tmp_path_factory) -> dict:
    """A COCO dataset whose official val split (the shard set's test split) holds one file of
    each kind, sharded; {key: (kind, raw file)}."""
    base = tmp_path_factory.mktemp("kinds")
    kinds = image_kinds(picture(SIDE, SIDE))
    raw = make_coco(base / "raw", n_train=12, n_val=len(kinds), num_classes=3, seed=3)
    ann = raw / "annotations" / "instances_val.json"
    doc = json.loads(ann.read_text())
    files = {}
    for im, (kind, (data, suffix)) in zip(doc["images"], kinds.items(), strict=True):
        (raw / "val" / im["file_name"]).unlink()
        im["file_name"] = Path(im["file_name"]).stem + suffix
        im["width"] = im["height"] = SIDE
        (raw / "val" / im["file_name"]).write_bytes(data)
        files[Path(im["file_name"]).stem] = (kind, raw / "val" / im["file_name"])
    ann.write_text(json.dumps(doc))
    convert("coco", raw, base / "shards", {}, {}, workers=1, fsync=False)
    return {"shards": base / "shards", "files": files}


def shard_members(root: Path, split: str) -> dict[str, bytes]:
    out = {}
    for tar in sorted(root.glob(f"{split}-*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".jpg"):
                    out[m.name[: -len(".jpg")]] = t.extractfile(m).read()
    return out


def loader_pixels(root: Path, split: str, backend: str) -> dict[str, np.ndarray]:
    """key -> (H, W, 3) uint8 of every image of the split, as the loader decodes it."""
    ss = open_shard_set(root)
    keys = ss.label_table(split).column("key").to_pylist()
    loader = create_loader(
        ss, split, regime="full", batch_size=8, preset=IDENTITY, train=False, labels=False,
        options=LoaderOptions(backend=backend, device="cpu", num_threads=1),
    )  # fmt: skip
    out = {}
    for batch in loader:
        valid = batch["valid"].cpu()
        x = (batch["image"].cpu()[valid] * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        for row, pixels in zip(batch["row"].cpu()[valid].tolist(), x.numpy(), strict=True):
            out[keys[row]] = pixels
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_kind_reads_as_its_shard_holds_it(kinds_set, backend):
    decoded = loader_pixels(kinds_set["shards"], "test", backend)
    stored = shard_members(kinds_set["shards"], "test")
    assert set(decoded) == set(kinds_set["files"])
    for key, (kind, path) in kinds_set["files"].items():
        mine = read_rgb(path.read_bytes())
        assert mine.shape == (SIDE, SIDE, 3) and mine.dtype == np.uint8
        if reencoded(kind):  # the shard holds the JPEG of the reader's pixels
            assert stored[key] == encode_jpeg(path.read_bytes(), (SIDE, SIDE), 90), kind
            np.testing.assert_array_equal(decoded[key], read_rgb(stored[key]), err_msg=kind)
            assert np.abs(decoded[key].astype(int) - mine).mean() < 8, kind  # JPEG q90
        else:  # the file's own bytes, decoded to the reader's pixels
            assert stored[key] == path.read_bytes(), kind
            np.testing.assert_array_equal(decoded[key], mine, err_msg=kind)


def test_reader_rules():
    a = picture(30, 44)
    for o in range(1, 9):  # every orientation shows the upright picture (JPEG's loss aside)
        got = read_rgb(jpeg_turned(a, o))
        assert got.shape == a.shape and np.abs(got.astype(int) - a).mean() < 2.5, o
    samples = np.arange(30 * 44, dtype=np.uint16).reshape(30, 44) * 47
    grey = read_rgb(png16(samples))  # 16 bits to 8 by the high byte, in every channel
    np.testing.assert_array_equal(grey, np.repeat((samples >> 8)[..., None], 3, -1))
    rgb = (np.arange(30 * 44 * 3, dtype=np.uint64).reshape(30, 44, 3) * 15 % 65536).astype(
        np.uint16
    )
    np.testing.assert_array_equal(read_rgb(png16(rgb)), rgb >> 8)
    rgba = np.dstack([a, np.zeros_like(a[..., :1])])  # fully transparent: the colour stays
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    np.testing.assert_array_equal(read_rgb(buf.getvalue()), a)
    with pytest.raises(BadImage, match="does not decode"):
        read_rgb(b"GIF89a not really")


def test_reencode_turns_with_the_exif_orientation():
    """A turned JPEG re-encoded under --max-side: the stored (unturned) size, turned."""
    a = picture(30, 60)
    data = jpeg_turned(a, 6)  # stored 60 x 30 (H x W), shown 30 x 60
    out = encode_jpeg(data, (15, 30), 90)  # target from the stored width 30, height 60, halved
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == (30, 15) and not im.getexif().get(0x0112)
    small = np.asarray(Image.fromarray(a).resize((30, 15), Image.Resampling.BICUBIC))
    assert np.abs(read_rgb(out).astype(int) - small).mean() < 8  # JPEG q90 (turned: 60+)
