"""The benchmarks' small public harness, shared by every ``cli.py bench`` command: generated
photos and a COCO-layout dataset of them, a warm page cache, timing, a command's peak memory and
the machine's description."""

from __future__ import annotations

import io
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shards.base.errors import WsmlError
from shards.coco_layout import write_coco_split

CLASSES = ("person", "dog", "cat", "car", "bicycle", "bird", "boat", "bottle", "chair", "sofa")
VAL_FRACTION = 0.2
SAMPLE_S = 0.02  # /proc sampling period of the process-tree RSS


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


def warm_page_cache(root: Path) -> None:
    """Read every file once so both contenders read from the page cache."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 20):
                    pass


LAUNCHER = (
    "import os, sys; pid = os.fork()\n"
    "if pid == 0: os.execv(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "sys.stderr.write('\\nWSML_MAXRSS %d\\n' % usage.ru_maxrss)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def peak_rss(cmd: list[str]) -> dict:
    """Run ``cmd``; return its peak memory in MB: ``process`` (ru_maxrss: the largest single
    process among it and the descendants it waited for) and ``tree`` (the summed PSS of the
    live process tree, sampled from /proc; None without /proc)."""
    launcher = [sys.executable, "-S", "-c", LAUNCHER, *cmd]
    proc = subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stop, tree = threading.Event(), [None]
    sampler = threading.Thread(target=_sample_tree, args=(proc.pid, stop, tree), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    output = proc.stdout.read()
    proc.wait()
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    proc.stdout.close()
    if proc.returncode:
        tail = output.decode(errors="replace").strip()[-2000:]
        raise WsmlError(f"{cmd[0]} failed (exit {proc.returncode}): {tail}")
    maxrss = int(output.rsplit(b"WSML_MAXRSS ", 1)[1].split()[0])
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    mb = lambda b: None if b is None else b / 1e6  # noqa: E731
    return {"process_mb": mb(maxrss * scale), "tree_mb": mb(tree[0]), "seconds": elapsed}


class PeakRSS:
    """This process's peak resident set from a point on: ``reset()`` starts the count (Linux's
    ``/proc/self/clear_refs``; elsewhere the peak stays the process's whole-life one) and
    ``gb()`` reads it, so a benchmark's own input generation is not counted in what it times."""

    def __init__(self) -> None:
        self.resettable = False

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def gb(self) -> float:
        if self.resettable:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 2**20  # KiB
        import resource

        scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes / KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _sample_tree(pid: int, stop: threading.Event, peak: list) -> None:
    """Peak of the process tree's summed PSS (proportional set size: pages shared by forked
    workers count once in total, where summed RSS would count them in every process)."""
    if not os.path.isdir("/proc"):
        return
    while not stop.wait(SAMPLE_S):
        total = 0
        for p in _descendants(pid):
            total += _pss(p)
        peak[0] = max(peak[0] or 0, total)


def _pss(pid: int) -> int:
    """Bytes of a process's PSS (its RSS where smaps_rollup is unavailable); 0 once it exited."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def machine_info() -> dict:
    """CPU model, cores (total and usable), RAM, Python and tar versions."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tar = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    return {
        "cpu": model or platform.machine(),
        "cpu_count": os.cpu_count(),
        "nproc": usable,
        "ram_gb": ram / 1e9,
        "python": platform.python_version(),
        "tar": tar.splitlines()[0] if tar else "?",
        "platform": platform.platform(),
    }


def time_epochs(run: Callable[[], int], repeats: int) -> dict:
    """The median images/s of ``repeats`` calls of ``run`` (each returns its image count)."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - t))
    return {"images_per_s": statistics.median(rates), "runs": [round(r, 1) for r in rates]}


def summarize_ratios(ratios: Sequence[float]) -> dict:
    """The median of per-round ratios (each taken within one round of alternating runs, so a
    drift of a shared machine cancels out) and their range."""
    return {
        "median": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "runs": [round(r, 3) for r in ratios],
    }


def format_ratio(r: dict, unit: str = "×") -> str:
    """``3.47× (3.20–3.69)``: the median and the range of the rounds (one round: the ratio)."""
    if len(r["runs"]) == 1:
        return f"{r['median']:.2f}{unit}"
    return f"{r['median']:.2f}{unit} ({r['low']:.2f}–{r['high']:.2f})"


def summarize_rounds(rounds: Sequence[dict[str, Sequence[float]]], base: str) -> dict:
    """Rounds of alternating ways, each round ``{way: (train s, scoring s)}``: each way's
    median over the rounds (``WAY_train``, ``WAY_eval``, ``WAY_total``, each its own median)
    and, where ``base`` ran, each other way's total over ``base``'s in the same round: the
    median and range of those ratios (``ratios["papers/sweep"]``)."""
    ways = list(rounds[0])
    out: dict = {"rounds": [{w: list(t) for w, t in r.items()} for r in rounds]}
    for w in ways:
        out[f"{w}_train"] = statistics.median(r[w][0] for r in rounds)
        out[f"{w}_eval"] = statistics.median(r[w][1] for r in rounds)
        out[f"{w}_total"] = statistics.median(sum(r[w]) for r in rounds)
    if base in ways:
        out["ratios"] = {
            f"{w}/{base}": summarize_ratios([sum(r[w]) / sum(r[base]) for r in rounds])
            for w in ways
            if w != base
        }
    return out
