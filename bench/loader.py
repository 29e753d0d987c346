"""``cli.py bench loader``: DALI, the PyTorch fallback and the papers' reference loader (a folder
of JPEGs, one PIL file at a time, torchvision transforms, DataLoader workers) on the same images,
batch size and CPU threads, plus where DALI's graph spends its time."""

from __future__ import annotations

import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.harness import format_ratio, summarize_ratios, time_epochs
from bench.markdown import Table
from pipelines.distributed import resolve_device
from pipelines.loader import LoaderOptions, create_loader, default_threads
from pipelines.presets import Preset, get_preset
from pipelines.torch_loader import start_workers
from shards.base.errors import WsmlError
from shards.convert.plan import KEY
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


def create_bench_set(
    work: Path, images: int, val_frac: float = 0.0, *, classes: int = 0, annotations: float = 0
) -> Path:
    """A COCO-layout folder of ``images`` photos, sharded with ``val_frac`` of them in val (0:
    all in train; the trainer needs a val split); with ``annotations`` K > 0, an Open Images
    V3 one instead (about K human labels an image over ``classes``, ragged, with unknowns)."""
    from shards.convert.convert import convert
    from shards.synth.photos import write_coco_dataset, write_openimages_dataset

    tag = "" if not val_frac else f"-val{val_frac:g}"
    tag += f"-oi{classes}x{annotations:g}" if annotations else ""
    raw, out = work / f"loader-raw{tag}", work / f"loader-shards{tag}"
    if (out / "manifest.json").is_file():
        return out
    shutil.rmtree(raw, ignore_errors=True)
    photos = bench_photos(min(images, 256))
    if annotations:
        write_openimages_dataset(raw, images, photos, classes, annotations)
        convert("openimages-v3", raw, out, {}, {}, workers=default_threads(1))
    else:
        write_coco_dataset(raw, images + 1, photos)
        convert("coco", raw, out, {}, {"val_frac": val_frac}, workers=default_threads(1))
    return out


def extract_folder(ss, split: str, folder: Path) -> list[Path]:
    """The split's images as a folder of JPEG files named by row (``000000042.jpg``: the
    reference loader's input). The tars are checked against the manifest first, and no name
    read from a tar becomes a path: a changed or hostile shard set writes nothing, anywhere."""
    import tarfile

    from pipelines.loader import check_files

    check_files(ss, split, verify=True)
    rows = ss.split(split)["num_samples"]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for tar in ss.shard_paths(split):
        with tarfile.open(tar) as tf:
            for key, jpg, row in _samples(tar, tf):
                if not 0 <= row < rows:
                    raise WsmlError(f"{tar}: sample {key} has row {row}, outside 0..{rows - 1}")
                path = folder / f"{row:09d}.jpg"
                if not path.is_file():
                    path.write_bytes(jpg)
                files.append(path)
    return sorted(files)


def _samples(tar: Path, tf) -> Iterator[tuple[str, bytes, int]]:
    """(key, JPEG bytes, row) of each sample of a shard set's tar, whose members are
    ``<key>.jpg`` then ``<key>.row`` (keys of ``[A-Za-z0-9_-]``)."""
    pending: dict[str, bytes] = {}
    for m in tf:
        key, _, ext = m.name.partition(".")
        if not m.isfile() or not KEY.fullmatch(key) or ext not in ("jpg", "row"):
            raise WsmlError(f"{tar}: member {m.name!r} is not a shard set's <key>.jpg or .row")
        data = tf.extractfile(m).read()
        if ext == "jpg":
            pending[key] = data
        elif key in pending and len(data) == 8:
            yield key, pending.pop(key), int.from_bytes(data, "little", signed=True)
        else:
            raise WsmlError(f"{tar}: sample {key} has no .jpg before its .row, or a bad .row")


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
    rng = np.random.default_rng(0)  # the preset's own tensor operations: the same work

    def apply(img):
        x = T.functional.pil_to_tensor(img).unsqueeze(0)
        x = x.contiguous(memory_format=torch.channels_last)  # as wsml's loaders resize
        x, mirror = preset.tensor(x, True, rng)
        x = x[0].flip(-1) if mirror else x[0]
        return T.functional.normalize(x.float() / 255, preset.mean, preset.std)

    return apply


@dataclass(frozen=True)
class LoaderBenchOptions:
    """What ``bench loader`` compares: ``repeats`` alternating epochs of each loader over the
    training split (``images`` generated photos without a shard set) through ``preset`` in
    batches of ``batch_size``, ``threads`` CPU threads each (None: the default), on ``device``
    (None: a GPU where there is one), DALI at each of ``hw_loads``; ``profile`` adds DALI's
    per-stage times on a CPU."""

    preset: str = "cole448"
    batch_size: int = 32
    threads: int | None = None
    images: int = 2000
    repeats: int = 3
    profile: bool = True
    device: str | None = None
    hw_loads: tuple[float, ...] = (0.65,)


def run_loader_bench(
    shards: str | None,
    opts: LoaderBenchOptions = LoaderBenchOptions(),
    *,
    workdir: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Time the loaders on the same images (alternating epochs); print images/s and ratios."""
    from bench.harness import machine_info, warm_page_cache

    preset, batch_size, images, repeats = opts.preset, opts.batch_size, opts.images, opts.repeats
    p = get_preset(preset)
    threads = opts.threads or default_threads(1)
    dev = resolve_device(opts.device or "auto")  # a bad device fails before any work
    own = workdir is None  # a folder of our own, removed at the end: nothing left in the cwd
    work = Path(tempfile.mkdtemp(prefix="wsml-bench-loader-")) if own else Path(workdir)
    torch.set_num_threads(threads)
    try:
        ss = open_shard_set(shards or create_bench_set(work, images))
        files = extract_folder(ss, "train", work / "loader-folder-train")
        if len(files) < batch_size:
            raise WsmlError(f"split train has {len(files)} images, fewer than a batch")
        warm_page_cache(ss.root)
        warm_page_cache(files[0].parent)
        m = machine_info()
        gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU"
        echo(
            f"{m.get('cpu', '?')} ({gpu}); {threads} CPU threads per loader, batch {batch_size}, "
            f"{len(files)} images; preset {preset}: {p.summary}"
        )
        import torchvision.io  # noqa: F401  imports every loader pays once, not in a timed epoch
        import torchvision.transforms.v2.functional  # noqa: F401

        loaders = _contenders(ss, p, files, batch_size, threads, dev, opts.hw_loads)
        result = {"machine": m, "gpu": gpu, "preset": preset, "batch_size": batch_size}
        result.update(threads=threads, images=len(files), loaders={})
        for _ in range(repeats):  # alternate, so drifts of a shared machine hit all alike
            for label, run in loaders.items():
                r = without_build(run, time_epochs(run, 1)["runs"][0])
                result["loaders"].setdefault(label, {"runs": []})["runs"].append(r)
        ref = result["loaders"][REFERENCE]["runs"]
        echo(f"{'loader':<50}{'images/s':>10}  {'vs reference':<22}runs")
        for label, r in result["loaders"].items():
            r["images_per_s"] = statistics.median(r["runs"])
            # each round's ratio (the round ran every loader once): median and range
            r["ratio"] = summarize_ratios([a / b for a, b in zip(r["runs"], ref, strict=True)])
            shown = format_ratio(r["ratio"])
            echo(f"{label:<50}{r['images_per_s']:>10.0f}  {shown:<22}{r['runs']}")
        result["dali_builds"] = report_builds(loaders, ss, p, batch_size, threads, dev, echo)
        if opts.profile and dev.type == "cpu":
            result["dali_stages"] = profile_dali(ss, "train", p, batch_size, threads, echo)
        result["repeats"] = repeats
        return result
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


REFERENCE = "3. reference (folder + PIL + torchvision)"


def without_build(run, images_per_s: float) -> float:
    """An epoch's images/s without the DALI graph build it began with (reported apart)."""
    loader = getattr(run, "loader", None)
    if loader is None or not loader.build_seconds or not images_per_s:
        return images_per_s
    seconds = run.images / images_per_s - loader.build_seconds[-1]
    return round(run.images / seconds, 1)


def _contenders(ss, p: Preset, files, batch_size: int, threads: int, dev, hw_loads):
    """label -> a function that runs one epoch and returns the images that reached ``dev``."""

    def ours(backend: str, **kw) -> Callable[[], int]:
        opts = LoaderOptions(device=dev, backend=backend, num_threads=threads, **kw)
        loader = create_loader(
            ss, "train", regime="full", batch_size=batch_size, preset=p, train=True, options=opts
        )

        def run() -> int:
            loader.set_epoch(run.epoch)  # epoch after epoch, as a training loop reads them
            run.epoch += 1
            n = sum(int(b["image"].shape[0]) for b in loader)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            run.images = n
            return n

        run.loader = loader  # its DALI build times (build_seconds), reported apart
        run.epoch = 0
        return run

    def reference() -> int:
        dl = torch.utils.data.DataLoader(
            FolderDataset(files, reference_transform(p)),
            batch_size=batch_size,
            shuffle=True,
            num_workers=threads,
            drop_last=True,
            pin_memory=dev.type == "cuda",
        )
        n = sum(int(x.to(dev, non_blocking=True).shape[0]) for x, _ in start_workers(dl))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return n

    out = {}
    if dev.type == "cuda":
        for load in hw_loads:
            out[f"1. DALI mixed decode, hw_decoder_load={load}"] = ours(
                "dali", hw_decoder_load=load
            )
    else:
        out["1. DALI (decode+normalise in DALI, tv resize)"] = ours("dali")
        out["1b. DALI, whole graph in DALI operators"] = ours("dali", cpu_resize="dali")
    out["2. torch fallback (webdataset + torchvision)"] = ours("torch")
    out[REFERENCE] = reference
    return out


def report_builds(loaders, ss, p: Preset, batch_size: int, threads: int, dev, echo) -> dict:
    """DALI's graph build (with its first prefetched batches) apart from the epochs: a training
    loader builds once and reads its graph epoch after epoch (the build is left out of its
    first epoch's images/s above: its seconds are here, with the builds counted); an eval
    loader too (its first epoch against the next ones)."""
    out = {}
    for label, run in loaders.items():
        builds = getattr(run, "loader", None) and run.loader.build_seconds
        if builds and run.loader.backend == "dali":
            out[label] = {"build_s": builds, "builds": sum(s > 0 for s in builds)}
            echo(
                f"  {label}: DALI graph built {out[label]['builds']}x in {len(builds)} training "
                f"epochs, {sum(builds):.2f} s (apart)"
            )
    if not out:
        return out
    opts = LoaderOptions(device=dev, backend="dali", num_threads=threads)
    ldr = create_loader(
        ss, "train", regime="full", batch_size=batch_size, preset=p, train=False, options=opts
    )
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        n = sum(int(b["valid"].sum()) for b in ldr)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t0))
    out["eval"] = {"build_s": ldr.build_seconds, "images_per_s": [round(r, 1) for r in rates]}
    echo(
        f"  DALI eval loader: epoch 1 (builds, {ldr.build_seconds[0]:.2f} s) {rates[0]:.0f} "
        f"images/s; epochs 2-3 (graph reused) {rates[1]:.0f}, {rates[2]:.0f} images/s"
    )
    return out


def _cut_graph(tars, idx, preset: Preset, batch: tuple[int, int, int], upto: str):
    """A training graph of DALI operators on the CPU that ends after stage ``upto``; ``batch``
    is (batch size, threads, shuffle buffer)."""
    from nvidia.dali import fn, pipeline_def, types

    batch_size, threads, fill = batch

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, seed=1)
    def graph():
        jpegs, rows = fn.readers.webdataset(
            paths=[str(t) for t in tars], index_paths=[str(i) for i in idx],
            ext=["jpg", "row"], dtypes=[types.UINT8, types.INT64], random_shuffle=True,
            initial_fill=fill, name="reader",
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


def profile_dali(ss, split: str, preset: Preset, batch_size: int, threads: int, echo) -> dict:
    """DALI's graph cut after each stage (read, decode, resize, normalise, copy to torch)."""
    from pipelines.dali_loader import DaliGraph, create_dali_pipeline, iterate_dali

    n = sum(int(s["num_samples"]) for s in ss.split(split)["shards"])
    steps = n // batch_size
    tars, idx = ss.shard_paths(split), ss.index_paths(split)

    def run_stage(upto: str) -> Callable[[], int]:
        def run() -> int:
            pipe = _cut_graph(tars, idx, preset, (batch_size, threads, min(4096, n)), upto)
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
        return sum(len(r) for _, r in iterate_dali(DaliGraph(pipe), steps, "bench"))

    out = {}
    echo(
        "DALI, whole graph in DALI operators, cut after each stage (images/s; wall time a stage adds per image):"
    )
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


def loader_tables(r: dict) -> list[Table]:
    """The docs' tables: images/s against the papers' loader (median of alternating rounds,
    each round's ratio: median and range), DALI's builds, DALI's per-stage profile."""
    caption = (
        f"`{r['preset']}`, {r['images']:,} images, batch {r['batch_size']}, {r['threads']} CPU "
        f"threads per loader, {r['gpu']}; median of {r['repeats']} alternating rounds."
    )
    rows = tuple((label, f"{x['images_per_s']:,.0f}", format_ratio(x["ratio"]))
                 for label, x in r["loaders"].items())  # fmt: skip
    tables = [Table(("loader", "images/s", "vs reference"), rows, caption)]
    builds = dict(r.get("dali_builds") or {})
    ev = builds.pop("eval", None)
    if ev:
        rows = [(f"{label}: training, {len(b['build_s'])} epochs", f"{b['builds']}x, "
                 f"{sum(b['build_s']):.2f} s") for label, b in builds.items()]  # fmt: skip
        rates = ev["images_per_s"]
        rows.append(("DALI eval loader: epoch 1 (builds) / epochs 2, 3 (graph reused)",
                     f"{ev['build_s'][0]:.2f} s",
                     f"{rates[0]:,.0f} / {rates[1]:,.0f}, {rates[2]:,.0f}"))  # fmt: skip
        rows = [row + ("",) * (3 - len(row)) for row in rows]
        tables.append(Table(("DALI graph", "build", "eval images/s"), tuple(rows)))
    stages = r.get("dali_stages")
    if stages:
        rows, prev = [], None
        for name, rate in stages.items():
            added = "—" if prev is None else f"{1e3 / rate - 1e3 / prev:.2f} ms"
            rows.append((("+ " if prev else "") + name, f"{rate:,.0f}", added))
            prev = rate
        head = ("DALI graph cut after each stage", "images/s after it", "adds per image")
        tables.append(Table(head, tuple(rows)))
    return tables
