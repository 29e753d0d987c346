"""``cli.py bench openimages-labels``: Open Images-format annotations for 1M images (about 8 human
labels each over 5,000 classes; ``--version 6``: the V6 files) -> label tables; time and peak RSS
at two sizes, on one core."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.harness import machine_info, peak_rss
from bench.markdown import Table

HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
CHILD = (
    "import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
    "import pyarrow as pa; pa.set_cpu_count(1); pa.set_io_thread_count(1)\n"
    "from bench.openimages import build_label_tables\n"
    "build_label_tables(sys.argv[1], sys.argv[2], sys.argv[3])\n"
)


def _hex(ids: np.ndarray) -> np.ndarray:
    """uint64 (N,) -> ASCII (N, 16) zero-padded lower-case hex, as Open Images writes ids."""
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    return HEX[((ids[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]


def _rows(*columns: np.ndarray) -> bytes:
    """Fixed-width ASCII columns (N, w_i) -> CSV bytes, each row ending in a newline."""
    return np.concatenate(
        [*columns, np.full((len(columns[0]), 1), ord("\n"), np.uint8)], 1
    ).tobytes()


def _const(text: str, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode(), np.uint8), (n, len(text)))


def write_metadata(
    root: Path, images: int, labels: int, classes: int, seed: int = 0, version: int = 3
) -> dict:
    """Open Images metadata: a train split of ``images`` images with ``labels`` human labels
    each (60% positive), and small validation/test splits; V3 (root/2017_11/, with image lists)
    or V6 (the oidv6-* files in root/)."""
    rng = np.random.default_rng(seed)
    meta = root / "2017_11" if version == 3 else root
    meta.mkdir(parents=True)
    mids = [f"/m/0{k:06d}" for k in range(classes)]
    files = _file_names(version)
    (meta / files["trainable"]).write_text("".join(m + "\n" for m in mids))
    (meta / files["descriptions"]).write_text(
        ("" if version == 3 else "LabelName,DisplayName\n")
        + "".join(f"{m},class {k}\n" for k, m in enumerate(mids))
    )
    mid_ascii = np.frombuffer("".join(mids).encode(), np.uint8).reshape(classes, 10)
    sizes = {"train": images, "validation": 1000, "test": 1000}
    for split, n in sizes.items():
        ids = np.unique(rng.integers(0, 2**63, size=n, dtype=np.uint64))
        if version == 3:
            _write_image_list(meta / split, split, ids)
        with open(meta / files[split], "wb") as f:
            f.write(b"ImageID,Source,LabelName,Confidence\n")
            for start in range(0, len(ids), 100_000):  # bounded memory while writing
                chunk = np.repeat(ids[start : start + 100_000], labels)
                cls = rng.integers(0, classes, size=len(chunk))
                conf = np.where(rng.random(len(chunk)) < 0.6, ord("1"), ord("0")).astype(np.uint8)
                f.write(
                    _rows(
                        _hex(chunk),
                        _const(",verification,", len(chunk)),
                        mid_ascii[cls],
                        _const(",", len(chunk)),
                        conf[:, None],
                    )
                )
    (root / "images").mkdir()
    return {
        "images": images,
        "rows": images * labels,
        "classes": classes,
        "csv_mb": (meta / files["train"]).stat().st_size / 1e6,
    }


def _file_names(version: int) -> dict[str, str]:
    if version == 3:
        return {
            "trainable": "classes-trainable.txt",
            "descriptions": "class-descriptions.csv",
            **{s: f"{s}/annotations-human.csv" for s in ("train", "validation", "test")},
        }
    from shards.converters.openimages_v6 import FILES

    return FILES[str(version)]


def _write_image_list(folder: Path, split: str, ids: np.ndarray) -> None:
    folder.mkdir()
    head = b"ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,"
    head += b"Title,OriginalSize,OriginalMD5,Thumbnail300KURL\n"
    (folder / "images.csv").write_bytes(
        head + _rows(_hex(ids), _const(f",{split[:5]:5},,,,,,,,,", len(ids)))
    )


def build_label_tables(root: str, out: str, version: str = "3") -> None:
    """What the benchmark times: read the metadata (streamed CSVs) and write every label table."""
    from shards.convert.plan import assign_rows
    from shards.convert.scan import ScanResult
    from shards.converters.openimages import OpenImagesOptions, open_openimages
    from shards.converters.openimages_v6 import OpenImagesV6Options, open_openimages_v6
    from shards.views import write_official_and_label_tables

    if version == "3":
        source = open_openimages(Path(root), OpenImagesOptions(images="images"))
    else:
        source = open_openimages_v6(Path(root), OpenImagesV6Options(version, images="images"))
    scans = []
    for split in source.splits:  # the images themselves are not part of this benchmark
        n = len(split.records)
        zeros = np.zeros(n, np.int32)
        scans.append(
            ScanResult(
                np.zeros(n, np.int8), zeros, zeros, np.zeros(n, np.int64), np.ones(n, bool), {}
            )
        )
    splits = assign_rows(source.splits, scans, 0.2, 1200)
    write_official_and_label_tables(Path(out), source, scans, splits, durable=False)


def run_openimages_bench(
    sizes: tuple[int, ...],
    labels: int,
    classes: int,
    workdir: str | None,
    echo: Callable[[str], None] = print,
    version: int = 3,
) -> dict:
    work = Path(workdir or tempfile.mkdtemp(prefix="wsml-oi-bench-"))
    m = machine_info()
    echo(f"machine: {m['cpu']}, {m['ram_gb']:.1f} GB RAM, Python {m['python']}; one core")
    echo(f"Open Images V{version} format, {labels} human labels an image, {classes:,} classes")
    runs = []
    try:
        for n in sizes:
            root, out = work / f"oi-{n}", work / f"oi-{n}-tables"
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            facts = write_metadata(root, n, labels, classes, version=version)
            made = time.perf_counter() - t0
            cmd = [sys.executable, "-c", CHILD, str(root), str(out), str(version)]
            r = peak_rss(cmd)
            runs.append({**facts, "seconds": r["seconds"], "peak_rss_mb": r["process_mb"]})
            echo(
                f"  {n:>9,} images, {facts['rows']:>10,} label rows ({facts['csv_mb']:.0f} MB CSV, "
                f"made in {made:.0f}s): {r['seconds']:6.1f} s, peak RSS {r['process_mb']:7.1f} MB"
            )
            if not workdir:
                shutil.rmtree(root)
                shutil.rmtree(out)
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)
    if len(runs) == 2:
        a, b = runs
        scale = b["images"] / a["images"]
        echo(
            f"  x{scale:.0f} images: time x{b['seconds'] / a['seconds']:.1f}, "
            f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.1f}"
        )
    big = runs[-1]
    echo(
        f"  goals at {big['images']:,} images: < 60 s ({'met' if big['seconds'] < 60 else 'NOT met'}), "
        f"< 2 GB ({'met' if big['peak_rss_mb'] < 2000 else 'NOT met'})"
    )
    return {"machine": m, "runs": runs, "version": version, "labels": labels, "classes": classes}


def openimages_tables(r: dict) -> list[Table]:
    """The runs as the docs' table: one row per train-split size."""
    rows = tuple(
        (f"{x['images']:,}", f"{x['rows']:,}", f"{x['csv_mb']:.0f} MB", f"{x['seconds']:.1f} s",
         f"{x['peak_rss_mb']:.0f} MB")
        for x in r["runs"]
    )  # fmt: skip
    caption = (
        f"Open Images V{r['version']} files, {r['classes']:,} classes, {r['labels']} human "
        "labels an image; one core."
    )
    return [Table(("train images", "label rows", "CSV", "time", "peak RSS"), rows, caption)]
