"""``cache-clip --crops gridG`` on a tiny shard set with the tiny random CLIP: each crop row is
its image's tiles (AEVLP's geometry, cut here with PIL as the release cuts them) through the
model's own transform; the global embeddings are the same bytes as without crops; a run killed
mid-way resumes to the same bytes; two torchrun processes agree; bad options fail before any
work. And the preset of side-by-side tiles: DALI (its own operators, and on a CPU the split
graph) against the torch fallback."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.loader import LoaderOptions, create_loader
from pipelines.tiles import tile_boxes, tiles_preset
from shards import cache_writer as writer
from shards import caches
from tests import test_cache
from tests.support.pipelines_data import HAVE_DALI
from tests.support.raw_datasets import REPO
from tests.test_cache import ENV, TAG, TINY, arrays, assert_error, cache_tiny, tar_images

shard_set, fresh = test_cache.shard_set, test_cache.fresh  # the cache tests' fixtures

CROPS = ("--crops", "grid2")  # 48 training rows, chunks of 4 // 4 = 1 row: 48 tile chunks


@pytest.fixture(scope="module")
def made(shard_set: Path, tmp_path_factory) -> dict:
    """The same shard set cached without and with crops (uninterrupted, one process)."""
    out = {}
    for name, extra in (("plain", ()), ("crops", CROPS)):
        copy = Path(shutil.copytree(shard_set, tmp_path_factory.mktemp(name) / "set"))
        result = cache_tiny(copy, *extra)
        assert result.exit_code == 0, result.output
        out[name] = {
            "root": copy,
            "output": result.output,
            "arrays": arrays(copy / "embeddings" / TAG),
        }
    return out


def test_global_embeddings_are_unchanged_by_crops(made):
    plain, crops = made["plain"], made["crops"]
    assert crops["arrays"].keys() == {*plain["arrays"], "train.crops.npy"}
    for name, data in plain["arrays"].items():
        assert crops["arrays"][name] == data, name  # byte for byte
    assert "with the 2x2 tiles of every training image (4 embeddings a row)" in crops["output"]
    meta = caches.get_cache(crops["root"], TAG)
    assert (meta["crops"]["grid"], meta["crops"]["views"], meta["crops"]["overlap"]) == (2, 4, 0.0)
    assert "H // 2" in meta["crops"]["geometry"] and meta["crops"]["splits"]["train"]["rows"] == 48
    assert "crops" not in caches.get_cache(plain["root"], TAG)
    tiles = caches.read_crops(crops["root"], TAG)
    assert tiles.shape == (48, 4, 32) and tiles.dtype == np.float16
    assert np.allclose(np.linalg.norm(tiles.astype(np.float32), axis=2), 1, atol=2e-3)
    # asked again without crops: complete; with another grid: made otherwise
    again = cache_tiny(crops["root"])
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    assert_error(cache_tiny(crops["root"], "--crops", "grid3"), "other settings", "crops")
    assert_error(cache_tiny(plain["root"], *CROPS), "other settings", "crops", "--overwrite")


def test_crops_are_the_tiles_through_the_models_transform(made):
    import open_clip
    from PIL import Image

    from models.cache import INIT_SEED
    from models.clip import create_clip, encode_images

    root = made["crops"]["root"]
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        tiny = create_clip("wsml-tiny-clip", "none")
    p = tiny.preprocess
    transform = open_clip.image_transform(
        p.image_size, False, p.mean, p.std, p.resize_mode, p.interpolation
    )
    images = tar_images(root, "train")
    tiles = []
    for row in range(48):
        image = Image.open(io.BytesIO(images[row])).convert("RGB")
        w, h = image.size  # the release's datasets.py: (x tw, y th, (x+1) tw, (y+1) th), row-major
        tw, th = w // 2, h // 2
        boxes = [(x * tw, y * th, (x + 1) * tw, (y + 1) * th) for y in range(2) for x in range(2)]
        assert boxes == [(lf, t, r, b) for t, lf, b, r in tile_boxes(h, w, 2)]
        tiles += [transform(image.crop(box)) for box in boxes]
    direct = encode_images(tiny.model, torch.stack(tiles)).numpy()  # (48 x 4, 32)
    cached = caches.read_crops(root, TAG).astype(np.float32).reshape(-1, 32)
    sims = direct @ cached.T
    assert (sims.argmax(axis=1) == np.arange(len(direct))).all()
    assert np.diag(sims).min() > 0.98


def test_resume_after_kill_gives_the_same_bytes(fresh, made):
    folder = fresh / "embeddings" / TAG
    cmd = [sys.executable, "cli.py", "cache-clip", "--shards", str(fresh), *TINY, *CROPS]
    proc = subprocess.Popen(
        [*cmd, "--pretrained", "none"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while "train.crops" not in (writer.read_progress(folder) or {"done": {}})["done"]:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no crops chunk done in 120 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = writer.read_progress(folder)["done"]
    assert 1 <= len(done["train.crops"]) < 48
    assert not (folder / "meta.json").exists() and not list(folder.glob("*.npy"))
    resumed = cache_tiny(fresh, *CROPS)
    assert resumed.exit_code == 0, resumed.output
    total = sum(len(c) for c in done.values())
    assert f"resumed with {total} of 68 chunks done" in resumed.output  # 20 global + 48 crops
    assert arrays(folder) == made["crops"]["arrays"]  # byte for byte


def test_torchrun_two_processes_give_the_same_crops(fresh, made):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["cli.py", "cache-clip", "--shards", str(fresh), *TINY, "--pretrained", "none", *CROPS]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert arrays(fresh / "embeddings" / TAG) == made["crops"]["arrays"]


@pytest.mark.parametrize(
    "extra, code, names",
    [
        (("--crops", "grid"), 2, ["gridG", "grid4"]),
        (("--crops", "4x4"), 2, ["gridG"]),
        (("--crops", "grid2", "--splits", "val"), 1, ["tiles of split train", "--splits"]),
    ],
)
def test_bad_crops_fail_before_any_work(fresh, extra, code, names):
    assert_error(cache_tiny(fresh, *extra), *names, code=code)
    assert not (fresh / "embeddings").exists()


# ---- the preset of side-by-side tiles ---------------------------------------------------------


def tile_batches(root: Path, backend: str, cpu_resize: str = "torch") -> torch.Tensor:
    preset = tiles_preset(_clip_preset(), 2)
    opts = LoaderOptions(backend=backend, cpu_resize=cpu_resize, num_threads=1)
    ldr = create_loader(root, "val", regime="full", batch_size=4, preset=preset, train=False,
                        labels=False, options=opts)  # fmt: skip
    out = {}
    for b in ldr:
        for row, ok, image in zip(b["row"].tolist(), b["valid"].tolist(), b["image"], strict=True):
            if ok:
                out[row] = image
    return torch.stack([out[r] for r in sorted(out)])


def _clip_preset():
    from pipelines.presets import CLIP_MEAN, CLIP_STD, center_crop_preset

    return center_crop_preset(24, CLIP_MEAN, CLIP_STD, "bicubic", name="clip24")


def test_tiles_preset_cuts_each_tile_then_applies_the_base(shard_set):
    from PIL import Image

    torch_tiles = tile_batches(shard_set, "torch")
    assert torch_tiles.shape == (12, 3, 24, 96)
    base = _clip_preset()
    image = Image.open(io.BytesIO(tar_images(shard_set, "val")[0])).convert("RGB")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)
    h, w = x.shape[-2:]
    for k, (t, lf, b, r) in enumerate(tile_boxes(h, w, 2)):
        tile = base.tensor(x[..., t:b, lf:r], False, None)[0][0].float() / 255
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in (base.mean, base.std))
        got = torch_tiles[0][..., 24 * k : 24 * (k + 1)]
        torch.testing.assert_close(got, (tile - mean) / std, atol=1e-5, rtol=0)


def half_pixel_rows(root: Path) -> list[bool]:
    """Whether an image of the val split has a tile whose centre crop starts half a pixel in
    (the resized tile exceeds 24 by an odd number): DALI's crop anchors it one pixel further
    than torchvision's (round half to even) does, for whole images as for tiles."""
    from PIL import Image

    out = []
    for _, data in sorted(tar_images(root, "val").items()):
        w, h = Image.open(io.BytesIO(data)).size
        tw, th = w // 2, h // 2
        side = (int(24 * tw / th), 24) if th <= tw else (24, int(24 * th / tw))
        out.append(any((s - 24) % 2 for s in side))
    return out


@pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed")
def test_tiles_preset_dali_agrees_with_the_fallback(shard_set):
    fallback = tile_batches(shard_set, "torch")
    split = tile_batches(shard_set, "dali")  # DALI decodes, the same torchvision geometry
    assert (split - fallback).abs().max() < 0.1
    graph = tile_batches(shard_set, "dali", cpu_resize="dali")  # DALI's own operators (a GPU's)
    per_row = (graph - fallback).abs().flatten(1).mean(1)
    half = torch.tensor(half_pixel_rows(shard_set))
    assert 0 < half.sum() < len(half) // 2  # this set has both kinds
    assert per_row[~half].max() < 0.01 and (graph - fallback)[~half].abs().max() < 0.3
    assert per_row[half].max() < 0.4  # a one-pixel shift of some tiles
