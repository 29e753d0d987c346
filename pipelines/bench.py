"""``cli.py bench loader``: DALI, the PyTorch fallback and the papers' reference loader (a folder
of JPEGs, one PIL file at a time, torchvision transforms, DataLoader workers) on the same images,
batch size and CPU threads, plus where DALI's graph spends its time."""

from __future__ import annotations

import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipelines.loader import create_loader, default_threads
from pipelines.presets import Preset, get_preset
from shards.errors import WsmlError
from shards.shardset import open_shard_set


def bench_photos(n: int, seed: int = 0) -> list[tuple[bytes, int, int]]:
    """``n`` distinct VOC-sized JPEGs (500x375, a fifth portrait, quality 90) cut from
    scikit-learn's two bundled photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        landscape = rng.random() < 0.8
        ar = 4 / 3 if landscape else 3 / 4
        h = int(min(p.height, p.width / ar) * rng.uniform(0.55, 1.0))
        w = int(h * ar)
        x, y = int(rng.integers(0, p.width - w + 1)), int(rng.integers(0, p.height - h + 1))
        size = (500, 375) if landscape else (375, 500)
        im = p.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append((buf.getvalue(), *size))
    return out


def make_bench_set(work: Path, images: int) -> Path:
    """A COCO-layout folder of ``images`` photos, sharded with val-frac 0 (all in train)."""
    from shards.bench import write_coco_dataset
    from shards.convert import convert

    raw, out = work / "loader-raw", work / "loader-shards"
    if (out / "manifest.json").is_file():
        return out
    shutil.rmtree(raw, ignore_errors=True)
    write_coco_dataset(raw, images + 1, bench_photos(min(images, 256)))
    convert("coco", raw, out, {}, {"val_frac": 0.0}, workers=default_threads(1))
    return out


def extract_folder(ss, split: str, folder: Path) -> list[Path]:
    """The split's images as a folder of JPEG files, named by row (the reference loader's input)."""
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for tar in ss.shard_paths(split):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    path = folder / m.name
                    if not path.is_file():
                        path.write_bytes(tf.extractfile(m).read())
                    files.append(path)
    return sorted(files)


class FolderDataset(torch.utils.data.Dataset):
    """The papers' loader: one JPEG file at a time through PIL and torchvision transforms."""

    def __init__(self, files: list[Path], transform: Callable):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), i


def reference_transform(preset: Preset) -> Callable:
    """torchvision's transforms for the preset, as the papers' code writes them."""
    import torchvision.transforms as T

    norm = [T.ToTensor(), T.Normalize(preset.mean, preset.std)]
    if preset.name == "cole448":
        return T.Compose([T.Resize((448, 448)), T.RandomHorizontalFlip(), *norm])
    if preset.name == "clip224":
        bicubic = T.InterpolationMode.BICUBIC
        return T.Compose([T.Resize(224, interpolation=bicubic), T.CenterCrop(224), *norm])
    rng = np.random.default_rng(0)  # the preset's own PIL operations: the same work

    def apply(img):
        img, mirror = preset.pil(img, True, rng)
        x = T.functional.to_tensor(img)
        return T.functional.normalize(x.flip(-1) if mirror else x, preset.mean, preset.std)

    return apply


def time_epochs(run: Callable[[], int], repeats: int) -> dict:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - t))
    return {"images_per_s": statistics.median(rates), "runs": [round(r, 1) for r in rates]}


def run_loader_bench(
    shards: str | None,
    *,
    preset: str = "cole448",
    batch_size: int = 32,
    threads: int | None = None,
    images: int = 2000,
    workdir: str | None = None,
    repeats: int = 3,
    profile: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    from shards.bench import _warm, machine_info

    p = get_preset(preset)
    threads = threads or default_threads(1)
    own = workdir is None and shards is None
    work = Path(tempfile.mkdtemp(prefix="wsml-bench-loader-")) if own else Path(workdir or ".")
    torch.set_num_threads(threads)
    try:
        ss = open_shard_set(shards or make_bench_set(work, images))
        split = "train"
        files = extract_folder(ss, split, work / f"loader-folder-{split}")
        if len(files) < batch_size:
            raise WsmlError(f"split {split} has {len(files)} images, fewer than a batch")
        _warm(ss.root)
        _warm(files[0].parent)
        m = machine_info()
        echo(
            f"{m.get('cpu', '?')}, {threads} CPU threads per loader, batch {batch_size}, "
            f"preset {preset} ({p.summary}); {len(files)} images"
        )

        def ours(backend: str) -> Callable[[], int]:
            loader = create_loader(
                ss, split, regime="full", batch_size=batch_size, preset=preset, rank=0,
                world_size=1, backend=backend, num_threads=threads, train=True,
            )  # fmt: skip

            def run() -> int:
                return sum(int(b["image"].shape[0]) for b in loader)

            return run

        def reference() -> int:
            dl = torch.utils.data.DataLoader(
                FolderDataset(files, reference_transform(p)),
                batch_size=batch_size,
                shuffle=True,
                num_workers=threads,
                drop_last=True,
            )
            return sum(int(x.shape[0]) for x, _ in dl)

        result = {"machine": m, "preset": preset, "batch_size": batch_size, "threads": threads}
        result["images"] = len(files)
        loaders = {"dali": ours("dali"), "torch": ours("torch"), "reference": reference}
        for name, run in loaders.items():
            result[name] = time_epochs(run, repeats)
        ref = result["reference"]["images_per_s"]
        echo(f"{'loader':<34}{'images/s':>10}{'vs reference':>14}   runs")
        labels = {
            "dali": "1. DALI (CPU)" if not torch.cuda.is_available() else "1. DALI (mixed)",
            "torch": "2. torch fallback",
            "reference": "3. reference (folder + PIL)",
        }
        for name, label in labels.items():
            r = result[name]
            r["ratio"] = r["images_per_s"] / ref
            echo(f"{label:<34}{r['images_per_s']:>10.0f}{r['ratio']:>13.2f}x   {r['runs']}")
        if profile:
            result["dali_stages"] = profile_dali(ss, split, p, batch_size, threads, echo)
        return result
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def profile_dali(ss, split: str, preset: Preset, batch_size: int, threads: int, echo) -> dict:
    """DALI's graph cut after each stage (read, decode, resize, normalise, copy to torch)."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines.dali_loader import create_dali_pipeline, iterate_dali

    n = sum(int(s["num_samples"]) for s in ss.split(split)["shards"])
    steps = n // batch_size
    tars, idx = ss.shard_paths(split), ss.index_paths(split)

    def stage(upto: str):
        @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, seed=1)
        def graph():
            jpegs, rows = fn.readers.webdataset(
                paths=[str(t) for t in tars], index_paths=[str(i) for i in idx],
                ext=["jpg", "row"], dtypes=[types.UINT8, types.INT64], random_shuffle=True,
                initial_fill=min(4096, n), name="reader",
            )  # fmt: skip
            if upto == "read":
                return rows
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            if upto == "decode":
                return images.shape()
            images, norm = preset.dali(images, True, "cpu")
            if upto == "augment":
                return images.shape()
            out = fn.crop_mirror_normalize(
                images, dtype=types.FLOAT, output_layout="CHW",
                mean=[255 * m for m in preset.mean], std=[255 * s for s in preset.std], **norm,
            )  # fmt: skip
            return out.shape()

        return graph()

    def run_stage(upto: str) -> Callable[[], int]:
        def run() -> int:
            pipe = stage(upto)
            pipe.build()
            for _ in range(steps):
                pipe.run()
            return steps * batch_size

        return run

    def run_full() -> int:
        pipe = create_dali_pipeline(
            tars, idx, preset=preset, train=True, batch_size=batch_size, shard_id=0,
            num_shards=1, seed=1, num_threads=threads, device_id=None, shuffle_buffer=min(4096, n),
        )  # fmt: skip
        return sum(len(r) for _, r in iterate_dali(pipe, steps, "bench"))

    out = {}
    echo("DALI graph cut after each stage (images/s; the time a stage adds per image):")
    prev = None
    names = ["read", "decode", "augment", "normalize", "torch"]
    for name in names:
        run = run_full if name == "torch" else run_stage(name)
        rate = time_epochs(run, 2)["images_per_s"]
        added = "" if prev is None else f"  +{1e3 / rate - 1e3 / prev:.2f} ms/image"
        echo(f"  {'+ ' if prev else ''}{name:<12}{rate:>10.0f}{added}")
        out[name] = rate
        prev = rate
    return out
