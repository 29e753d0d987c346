"""``cli.py bench train``: the trainer's figures, printed side by side in one run. Benchmarks,
not tests: they print numbers and assert nothing about them.

- **linear** (synthetic features at a real dataset's size, default COCO's 65,665 / 16,416 /
  40,137 x 2,048, 80 classes): one epoch of the hyper-parameter grid (Cole et al.: batch {8, 16}
  x lr {1e-2 .. 1e-5}), training and the epoch's val + test scoring, three ways: the
  configurations one after another in the papers' way (a per-sample ``Dataset`` + ``DataLoader``
  + ``nn.Linear`` + Adam with the method's loss, then val and test through the same loader),
  one after another through this trainer's own linear runs, and as one ``--sweep`` job. All
  three score with the same mAP code (``train.metrics``) and torch's default threads; the
  one-by-one ways train on one thread (the papers' loop is as fast with two on this 2-core
  machine, and a busy core stalls OpenMP), the sweep trains its groups side by side, one
  thread per core, as ``cli.py train --sweep`` does.
- **e2e** (images through ``create_loader``): a method's training steps on a generated shard
  set of photos: images/s, milliseconds per step, and the share of each step spent waiting for
  data. Every method, its own model included (HSPNet, PU-MLC, OASS), runs through the same
  ``training_step`` as ``cli.py train``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.harness import PeakRSS, format_ratio, summarize_rounds
from bench.papers import as_shard_labels, paper_epoch, synthetic_split
from bench.sparse import create_sparse_splits
from bench.train_profile import profile_methods, sweep_plan
from shards.base.errors import WsmlError
from train.build import build_run
from train.config import RunConfig
from train.context import Context
from train.data import FeatureData
from train.evaluate import evaluate_splits
from train.loop import train_epoch
from train.methods import dataset_family, get_method
from train.plan import RunPlan

COCO = {"train": 65_665, "val": 16_416, "test": 40_137}  # Cole's COCO splits (METHODS.md §0.3)
GRID_LRS = (1e-2, 1e-3, 1e-4, 1e-5)
GRID_BATCHES = (8, 16)
WAYS = ("papers", "runs", "sweep")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"


def _header(echo: Callable[[str], None]) -> None:
    from bench.harness import machine_info

    m = machine_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    echo(
        f"{m.get('cpu', '?')}, {m.get('nproc', '?')} cores (load {load:.1f}), {gpu}, "
        f"torch {torch.__version__}"
    )


# ---------------------------------------------------------------------------------- linear


def synthetic_plan(method: str, data: FeatureData, classes: int, **options: str) -> RunPlan:
    """The plan of a linear run on in-memory synthetic features (no shard set), COCO's
    protocol defaults for the method; ``options`` are method options."""
    from train.plan import RunPlan
    from train.settings import get_setting

    info = get_method(method)
    config = RunConfig(shards="", method=method, features="synthetic", method_options=options)
    return RunPlan(
        config=config,
        info=info,
        method=info.create_config(dataset_family("coco"), options),
        setting=get_setting("linear"),
        dataset="coco",
        classes=tuple(str(c) for c in range(classes)),
        view="single-positive",
        kind="single-positive",
        rows={s: data.num_rows(s) for s in ("train", "val", "test")},
        feature_dim=data.feature_dim,
    )


def own_epoch(
    method: str, data: FeatureData, classes: int, batch: int, lr: float
) -> tuple[float, float]:
    """Seconds of one epoch of this trainer's linear run (in-memory features, on the data's
    device) and of its scoring of val and test."""
    ctx = data.ctx
    options = {"batch_size": str(batch), "lr": repr(lr), "epochs": "1"}
    plan = synthetic_plan(method, data, classes, **options)
    run = build_run(plan, ctx, data=data.with_batch_size(batch))
    t = time.perf_counter()
    train_epoch(run, ctx, 1)
    _sync(ctx.device)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    evaluate_splits(run.eval_models(), run.data, ctx, ("val", "test"), 0.5)
    return seconds, time.perf_counter() - t


def sweep_epoch(method: str, data: FeatureData, classes: int, lrs, batches) -> tuple[float, float]:
    """Seconds of one epoch of every member of the ``--sweep`` grid, trained as one job, and of
    the scoring of every member on val and test (metrics lines written as a sweep does)."""
    from train.loop import select_epoch, train_runs
    from train.runfolder import RunFolder
    from train.sweep import create_groups

    ctx = data.ctx
    plan = sweep_plan(synthetic_plan(method, data, classes), lrs, batches)
    folder = RunFolder(tempfile.mkdtemp(prefix="wsml-bench-sweep-"))
    groups = create_groups(plan, data, folder, ctx)  # as --sweep builds them
    t = time.perf_counter()
    logged = train_runs(groups, ctx, 1)  # as a sweep trains: the groups side by side on a CPU
    _sync(ctx.device)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    for group, per_track in zip(groups, logged, strict=True):
        select_epoch(group, ctx, 1, per_track, (seconds, t))
    shutil.rmtree(folder.path, ignore_errors=True)
    return seconds, time.perf_counter() - t


@dataclasses.dataclass(frozen=True)
class LinearBenchOptions:
    """What ``bench train`` (linear) times: one epoch of the ``batches`` x ``lrs`` grid for each
    of ``methods``, the chosen ``ways``, on synthetic features of ``rows`` (train, val, test;
    COCO's by default) x ``dim`` over ``classes``; ``annotations`` K > 0: OpenImages-shaped
    ragged labels and memory-mapped features (``bench.sparse``); ``paper_steps`` > 0
    times that many steps of each papers'-way epoch and extrapolates; ``device`` auto: a GPU
    where there is one; ``repeats`` rounds of the ways, alternating; ``profile_steps`` > 0
    then profiles that many steps of each sweep group (``bench.train_profile``)."""

    methods: tuple[str, ...] = ("an",)
    rows: dict[str, int] | None = None
    dim: int = 2048
    classes: int = 80
    lrs: tuple[float, ...] = GRID_LRS
    batches: tuple[int, ...] = GRID_BATCHES
    paper_steps: int = 0
    device: str = "cpu"
    annotations: float = 0
    ways: tuple[str, ...] = WAYS
    repeats: int = 3
    profile_steps: int = 0


def run_linear_bench(opts: LinearBenchOptions, *, echo: Callable[[str], None] = print) -> dict:
    """Per method (``methods``): seconds per way (train, scoring; medians of the rounds), the
    ratios to the sweep and the peak RSS; with what was timed (rows, features, grid, device)."""
    dim, classes, annotations = opts.dim, opts.classes, opts.annotations
    batches, lrs, ways = opts.batches, opts.lrs, opts.ways
    if annotations and "papers" in ways:
        raise WsmlError("--annotations holds labels ragged; the papers' way needs dense (N, L) "
                        "labels: use --ways runs,sweep")  # fmt: skip
    _header(echo)
    rows = {**COCO, **(opts.rows or {})}
    folder = Path(tempfile.mkdtemp(prefix="wsml-bench-features-"))
    try:
        if annotations:
            splits = create_sparse_splits(rows, dim, classes, annotations, folder)
        else:
            g = torch.Generator().manual_seed(0)
            splits = {name: synthetic_split(n, dim, classes, g) for name, n in rows.items()}
        ctx = Context.create(opts.device)
        held = splits if annotations else {k: as_shard_labels(v) for k, v in splits.items()}
        data = FeatureData(held, ctx, seed=0, batch_size=batches[0])
        grid = (batches, lrs)
        echo(_title(rows, dim, classes, annotations, grid, ctx.device, data))
        labels = data.labels("train")
        setup = {
            "rows": rows, "dim": dim, "classes": classes, "device": str(ctx.device),
            "batches": batches, "lrs": lrs, "ways": ways, "repeats": opts.repeats,
            "annotations": len(labels.positives.values) + len(labels.negatives.values)
            if annotations else 0,
            "feature_mb": sum(rows.values()) * dim * 2 / 1e6,  # float16, every split once
            "gpu": gpu_name(ctx.device),
        }  # fmt: skip
        out = {**setup, "methods": _time_ways(opts.methods, splits, data, opts, echo)}
        if opts.profile_steps:
            plans = {m: synthetic_plan(m, data, classes) for m in opts.methods}
            profiles = profile_methods(plans, data, (lrs, batches), opts.profile_steps, echo)
            for method, groups in profiles.items():
                out["methods"][method]["profile"] = groups
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _title(rows, dim, classes, annotations, grid, device, data) -> str:
    batches, lrs = grid
    labels = data.labels("train")
    shape = (
        f"{len(labels.positives.values) + len(labels.negatives.values):,} annotations "
        f"(~{annotations:g} an image), features memory-mapped; "
        if annotations
        else ""
    )
    return (
        f"linear setting, one epoch of {rows['train']:,} x {dim} features ({classes} classes; "
        f"{shape}val {rows['val']:,}, test {rows['test']:,} scored after it); grid batch "
        f"{{{', '.join(map(str, batches))}}} x lr {{{', '.join(f'{x:g}' for x in lrs)}}} = "
        f"{len(batches) * len(lrs)} configurations on {device}; seconds for the whole grid, "
        "train + scoring"
    )


def _time_ways(methods, splits, data, opts: LinearBenchOptions, echo) -> dict:
    """Per method, ``opts.repeats`` rounds of every way, alternating (A B C A B C …, so a
    drift of a shared machine hits every way alike): median seconds, ratios per round."""
    names = {"papers": "papers, one by one", "runs": "wsml runs, one by one", "sweep": "--sweep"}
    echo(f"{'method':<8} " + " ".join(f"{names[w]:>22}" for w in opts.ways)
         + "  ratios: median of the rounds (range)  peak RSS")  # fmt: skip
    out, rss = {}, PeakRSS()
    for method in methods:
        rss.reset()  # the input's generation is not the run's memory
        rounds = [
            {way: _time_way(way, method, splits, data, opts) for way in opts.ways}
            for _ in range(opts.repeats)
        ]
        out[method] = r = summarize_rounds(rounds, "sweep") | {"peak_rss_gb": rss.gb()}
        cells = [f"{r[w + '_total']:7.1f} ({r[w + '_train']:.1f}+{r[w + '_eval']:.1f})"
                 for w in opts.ways]  # fmt: skip
        ratios = [f"{k} {format_ratio(v)}" for k, v in r.get("ratios", {}).items()]
        echo(f"{method:<8} " + " ".join(f"{c:>22}" for c in cells)
             + f"  {', '.join(ratios) or '-'}  {r['peak_rss_gb']:.2f} GB")  # fmt: skip
    return out


def _time_way(way, method, splits, data, opts: LinearBenchOptions) -> tuple[float, float]:
    """Seconds of one epoch of the whole grid one way: (training, scoring)."""
    classes, device = data.num_classes, str(data.ctx.device)
    grid = [(b, lr) for b in opts.batches for lr in opts.lrs]
    if way == "papers":
        each = [paper_epoch(method, splits, b, lr, opts.paper_steps, device) for b, lr in grid]
    elif way == "runs":
        each = [own_epoch(method, data, classes, b, lr) for b, lr in grid]
    else:
        each = [sweep_epoch(method, data, classes, opts.lrs, opts.batches)]
    return tuple(map(sum, zip(*each, strict=True)))


# ---------------------------------------------------------------------------------- e2e


@dataclasses.dataclass(frozen=True)
class E2EBenchOptions:
    """What ``bench train --setting e2e`` times: each of ``methods`` (random weights:
    throughput only) for ``steps`` steps after ``warmup``, on a shard set or on ``images``
    generated photos."""

    methods: tuple[str, ...] = ("an",)
    backbone: str | None = None
    preset: str | None = None
    image_size: int = 0
    batch_size: int = 32
    steps: int = 20
    warmup: int = 3
    images: int = 256
    loader: str = "auto"
    device: str = "auto"
    compile: bool = False
    regime: str | None = None
    method_options: dict[str, str] = dataclasses.field(default_factory=dict)
    classes: int = 80  # the generated photos' classes, with annotations > 0 (as --classes)
    annotations: float = 0  # > 0: generated Open Images-shaped labels (about this many an image)


def run_e2e_bench(
    shards: str | None,
    opts: E2EBenchOptions,
    *,
    workdir: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Training steps of each method on ``shards`` (or generated photos, in ``workdir`` or a
    folder of our own): per method (``methods``) images/s, ms per step, the data-wait share,
    and what the per-batch join of labels (ragged -> dense (B, L) on the device) and
    embeddings costs; with what was timed (images, classes, batch, steps, device)."""
    from bench.loader import create_bench_set
    from shards.shardset import open_shard_set
    from train.plan import plan_run

    _header(echo)
    own = workdir is None and shards is None  # generated photos in a folder of our own
    ctx = Context.create(opts.device)  # first: a bad device leaves no folder behind
    work = Path(workdir or tempfile.mkdtemp(prefix="wsml-bench-train-"))
    shape = dict(classes=opts.classes, annotations=opts.annotations)
    root = shards or str(create_bench_set(work, opts.images, val_frac=0.1, **shape))
    ss = open_shard_set(root)
    echo(f"end to end on {root} ({ss.split('train')['num_samples']} train images, "
         f"{len(ss.classes)} classes), batch {opts.batch_size}, {opts.steps} timed steps after "
         f"{opts.warmup}, device {ctx.device}{', compiled' if opts.compile else ''}")  # fmt: skip
    echo(f"{'method':<8} {'backbone':<18} {'preset':<10} {'images/s':>9} {'ms/step':>8} "
         f"{'data wait':>10} {'join ms':>8} {'join':>7}")  # fmt: skip
    out = {}
    try:
        for method in opts.methods:
            config = RunConfig(
                root, method, setting="e2e", backbone=opts.backbone, weights="none",
                preset=opts.preset, image_size=opts.image_size, loader=opts.loader,
                regime=opts.regime, compile=opts.compile,
                method_options={**opts.method_options, "batch_size": str(opts.batch_size)},
            )  # fmt: skip
            run = build_run(plan_run(config, ctx.world_size), ctx)  # as cli.py train builds it
            if run.data.steps_per_epoch < 1:
                raise WsmlError(
                    f"{root} has fewer training images than a batch of {opts.batch_size}"
                )
            run.net = ctx.wrap(run.model, compile=opts.compile)
            out[method] = r = time_steps(run, ctx, opts.steps, opts.warmup)
            config = run.plan.config
            shown = config.preset if not config.image_size else f"center{config.image_size}"
            r.update(backbone=config.backbone, input=shown)
            echo(
                f"{method:<8} {config.backbone:<18} {shown:<10} {r['images_per_s']:>9.1f} "
                f"{r['ms_per_step']:>8.1f} {100 * r['data_wait']:>9.1f}% {r['join_ms']:>8.2f} "
                f"{100 * r['join_ms'] / r['ms_per_step']:>6.2f}%{_build_note(r)}"
            )
        images = sum(int(ss.split(s)["num_samples"]) for s in ss.splits)
        setup = {"images": images, "classes": len(ss.classes), "device": str(ctx.device)}
        setup["gpu"] = gpu_name(ctx.device)
    finally:
        ctx.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    fields = ("batch_size", "steps", "warmup", "compile")
    return {**setup, **{k: getattr(opts, k) for k in fields}, "methods": out}


def _build_note(r: dict) -> str:
    """How often the DALI training graph was built in the epochs the steps began (once: in the
    warm-up), and the seconds of builds inside the timed steps (in the data wait)."""
    builds, epochs = r["dali_builds"]
    if not epochs:
        return ""
    timed = f"; {r['build_s']:.2f} s of the data wait" if r["build_s"] else ""
    return f" (DALI graph built {builds}x in {epochs} epochs{timed})"


def time_steps(run, ctx: Context, steps: int, warmup: int) -> dict[str, float]:
    """``steps`` training steps of ``run`` after ``warmup``, through the loop's ``train_step``:
    images/s, ms per step and the share of each step spent waiting for the next batch."""
    from train.loop import train_step

    run.net.train()
    run.method.train()
    wait = busy = 0.0
    done, epoch, totals, timed_rows = 0, 0, {}, []
    while done < warmup + steps:
        epoch += 1
        run.method.start_epoch(epoch)
        batches = iter(run.data.train_batches(epoch))
        while done < warmup + steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            _sync(ctx.device)
            t1 = time.perf_counter()
            train_step(run, ctx, batch, epoch, totals)
            _sync(ctx.device)
            if done >= warmup:
                wait += t1 - t0
                busy += time.perf_counter() - t1
                timed_rows.append(batch["row"])
            done += 1
    total = wait + busy
    batch_size = run.plan.method.batch_size
    loader = getattr(run.data, "loaders", {}).get("train")
    builds = (
        getattr(loader, "build_seconds", []) if getattr(loader, "backend", "") == "dali" else []
    )
    return {
        "images_per_s": steps * batch_size / total,
        "ms_per_step": 1e3 * total / steps,
        "data_wait": wait / total,
        # DALI builds a training graph once, in the warm-up; a later build would be timed
        "build_s": sum(builds[1:]),
        "dali_builds": [sum(b > 0 for b in builds), len(builds)],  # builds, epochs begun
        "join_ms": time_joins(loader, timed_rows, ctx.device) if loader is not None else 0.0,
    }


def time_joins(loader, rows: list, device: torch.device, repeats: int = 5) -> float:
    """Milliseconds per batch of the loader's row join (part of the data wait above): the
    ragged observed and clean labels made dense (B, L) on the device and the batch's
    embeddings read, for the timed batches' rows, best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for r in rows:
            loader.table.join(r)
        _sync(device)
        best = min(best, (time.perf_counter() - t) / max(1, len(rows)))
    return 1e3 * best
