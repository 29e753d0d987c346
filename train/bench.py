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

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from shards.errors import WsmlError
from shards.lists import LabelLists
from train.bench_papers import paper_epoch, synthetic_split
from train.bench_sparse import create_sparse_splits, peak_rss_gb
from train.build import assemble
from train.config import RunConfig
from train.context import Context
from train.data import FeatureData
from train.evaluate import evaluate_splits
from train.loop import train_epoch
from train.methods import dataset_family, get_method

COCO = {"train": 65_665, "val": 16_416, "test": 40_137}  # Cole's COCO splits (METHODS.md §0.3)
GRID_LRS = (1e-2, 1e-3, 1e-4, 1e-5)
GRID_BATCHES = (8, 16)
WAYS = ("papers", "runs", "sweep")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _header(echo: Callable[[str], None]) -> None:
    from shards.bench import machine_info

    m = machine_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    echo(
        f"{m.get('cpu', '?')}, {m.get('nproc', '?')} cores (load {load:.1f}), {gpu}, "
        f"torch {torch.__version__}"
    )


# ---------------------------------------------------------------------------------- linear


def own_epoch(
    method: str, data: FeatureData, classes: int, batch: int, lr: float
) -> tuple[float, float]:
    """Seconds of one epoch of this trainer's linear run (in-memory features, on the data's
    device) and of its scoring of val and test."""
    ctx = data.ctx
    info = get_method(method)
    options = {"batch_size": str(batch), "lr": repr(lr), "epochs": "1"}
    mcfg = info.resolve(dataset_family("coco"), options)
    data.batch_size, data.local = batch, batch
    config = RunConfig(shards="", method=method, features="synthetic")
    resolved = {"classes": [str(c) for c in range(classes)], "feature_dim": data.feature_dim}
    run = assemble(config, resolved, None, data, info, mcfg, ctx)
    t = time.perf_counter()
    train_epoch(run, ctx, 1)
    _sync(ctx.device)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    evaluate_splits(run.eval_models(), data, ctx, ("val", "test"), 0.5)
    return seconds, time.perf_counter() - t


def sweep_epoch(method: str, data: FeatureData, classes: int, lrs, batches) -> tuple[float, float]:
    """Seconds of one epoch of every member of the ``--sweep`` grid, trained as one job, and of
    the scoring of every member on val and test (metrics lines written as a sweep does)."""
    from train.runfolder import RunFolder
    from train.sweep import create_groups, evaluate_members, train_groups

    ctx = data.ctx
    config = RunConfig(
        shards="", method=method, features="synthetic", method_options={},
        sweep_lrs=tuple(lrs), sweep_batches=tuple(batches),
    )  # fmt: skip
    resolved = {
        "classes": [str(c) for c in range(classes)],
        "feature_dim": data.feature_dim,
        "dataset": "coco",
    }
    folder = RunFolder(tempfile.mkdtemp(prefix="wsml-bench-sweep-"))
    groups = create_groups(config, resolved, data, folder, None, ctx)  # as --sweep builds them
    t = time.perf_counter()
    train_groups(groups, data, 1, ctx)  # as a sweep trains: the groups side by side on a CPU
    _sync(ctx.device)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    active = [(g, i) for g in groups for i in range(g.size)]
    evaluate_members(active, data, 1, config, resolved["classes"], seconds)
    shutil.rmtree(folder.path, ignore_errors=True)
    return seconds, time.perf_counter() - t


def run_linear_bench(
    methods: tuple[str, ...] = ("an",),
    *,
    rows: dict[str, int] | None = None,
    dim: int = 2048,
    classes: int = 80,
    lrs: tuple[float, ...] = GRID_LRS,
    batches: tuple[int, ...] = GRID_BATCHES,
    paper_steps: int = 0,
    device: str = "cpu",
    echo: Callable[[str], None] = print,
    annotations: float = 0,
    ways: tuple[str, ...] = WAYS,
) -> dict[str, dict[str, float]]:
    """One epoch of the grid per method, the chosen ways, on ``device`` (``auto``: a GPU where
    there is one); returns seconds per way and method. ``annotations`` K > 0: OpenImages-shaped
    ragged labels and memory-mapped features (``train.bench_sparse``), with peak RSS."""
    if annotations and "papers" in ways:
        raise WsmlError("--annotations holds labels ragged; the papers' way needs dense (N, L) "
                        "labels: use --ways runs,sweep")  # fmt: skip
    _header(echo)
    rows = {**COCO, **(rows or {})}
    folder = Path(tempfile.mkdtemp(prefix="wsml-bench-features-"))
    try:
        if annotations:
            splits = create_sparse_splits(rows, dim, classes, annotations, folder)
        else:
            g = torch.Generator().manual_seed(0)
            splits = {name: synthetic_split(n, dim, classes, g) for name, n in rows.items()}
        ctx = Context.create(device)
        data = FeatureData(splits, ctx, seed=0, batch_size=batches[0])
        grid = (batches, lrs)
        echo(_title(rows, dim, classes, annotations, grid, ctx.device, data))
        return _time_ways(methods, splits, data, ways, grid, paper_steps, echo)
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


def _time_ways(methods, splits, data, ways, grid, paper_steps, echo) -> dict:
    batches, lrs = grid
    classes, device = data.num_classes, str(data.ctx.device)
    names = {"papers": "papers, one by one", "runs": "wsml runs, one by one", "sweep": "--sweep"}
    echo(f"{'method':<8} " + " ".join(f"{names[w]:>22}" for w in ways)
         + "  ratios  peak RSS")  # fmt: skip
    out = {}
    for method in methods:
        timed = {}
        for way in ways:
            if way == "papers":
                each = [paper_epoch(method, splits, b, lr, paper_steps, device)
                        for b in batches for lr in lrs]  # fmt: skip
            elif way == "runs":
                each = [own_epoch(method, data, classes, b, lr) for b in batches for lr in lrs]
            else:
                each = [sweep_epoch(method, data, classes, lrs, batches)]
            timed[way] = tuple(map(sum, zip(*each, strict=True)))
        out[method] = {
            f"{way}_{part}": v
            for way, t in timed.items()
            for part, v in zip(("train", "eval"), t, strict=True)
        }
        total = {way: sum(t) for way, t in timed.items()}
        cells = [f"{total[w]:7.1f} ({t[0]:.1f}+{t[1]:.1f})" for w, t in timed.items()]
        ratios = [f"{w}/sweep {total[w] / total['sweep']:.2f}x" for w in timed if w != "sweep"]
        echo(f"{method:<8} " + " ".join(f"{c:>22}" for c in cells)
             + f"  {', '.join(ratios) if 'sweep' in timed else '-'}  {peak_rss_gb():.2f} GB")  # fmt: skip
    return out


# ---------------------------------------------------------------------------------- e2e


class TrainSplit:
    """The training split of a shard set through ``create_loader`` (what ``ImageData`` gives the
    loop for training, without the evaluation loaders)."""

    def __init__(self, ss, view, ctx, *, preset, batch_size, backend, seed=0):
        from pipelines.loader import create_loader

        self.ss, self.view, self.batch_size = ss, view, batch_size
        self.local = ctx.local_batch(batch_size)
        self.loader = create_loader(
            ss, "train", regime=view, batch_size=self.local, preset=preset, rank=ctx.rank,
            world_size=ctx.world_size, device=ctx.device, seed=seed, backend=backend, train=True,
        )  # fmt: skip
        self.channels_last = ctx.device.type == "cuda"

    def num_rows(self, split: str) -> int:
        return int(self.ss.split(split)["num_samples"])

    def observed(self, split: str) -> LabelLists:
        return self.ss.observed_lists(self.view, split)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def train_batches(self, epoch: int):
        self.loader.set_epoch(epoch)
        for batch in self.loader:
            x = batch.pop("image")
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch["input"] = x
            yield batch


def run_e2e_bench(
    shards: str | None,
    *,
    methods: tuple[str, ...] = ("an",),
    backbone: str | None = None,
    preset: str | None = None,
    image_size: int = 0,
    batch_size: int = 32,
    steps: int = 20,
    warmup: int = 3,
    images: int = 256,
    loader: str = "auto",
    device: str = "auto",
    compile: bool = False,
    regime: str | None = None,
    method_options: dict[str, str] | None = None,
    workdir: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Training steps of each method (random weights: throughput only) on ``shards`` or on
    ``images`` generated photos; per method images/s, ms per step and the data-wait share."""
    from pipelines.bench import make_bench_set
    from shards.shardset import open_shard_set
    from train.build import build_model
    from train.data import e2e_preset
    from train.loop import train_step
    from train.plan import resolve

    _header(echo)
    own = workdir is None and shards is None  # generated photos in a folder of our own
    work = Path(workdir or tempfile.mkdtemp(prefix="wsml-bench-train-"))
    root = shards or str(make_bench_set(work, images, val_frac=0.1))
    ctx = Context.create(device)
    echo(f"end to end on {root} ({open_shard_set(root).split('train')['num_samples']} train "
         f"images), batch {batch_size}, {steps} timed steps after {warmup}, device {ctx.device}"
         f"{', compiled' if compile else ''}")  # fmt: skip
    echo(f"{'method':<8} {'backbone':<18} {'preset':<10} {'images/s':>9} {'ms/step':>8} "
         f"{'data wait':>10}")  # fmt: skip
    out = {}
    cuda = ctx.device.type == "cuda"
    try:
        for method in methods:
            opts = {**(method_options or {}), "batch_size": str(batch_size)}
            config = RunConfig(
                root, method, setting="e2e", backbone=backbone, weights="none", preset=preset,
                image_size=image_size, loader=loader, regime=regime, method_options=opts,
                compile=compile,
            )  # fmt: skip
            config, resolved, ss = resolve(config, ctx)
            info = get_method(method)
            mcfg = info.resolve(resolved["dataset"], config.method_options)
            model, _ = build_model(config, resolved, ss, info, mcfg)
            cfg = model.pretrained_cfg
            p = e2e_preset(config.preset, config.image_size, cfg)
            data = TrainSplit(ss, config.regime, ctx, preset=p, batch_size=batch_size,
                              backend=config.loader)  # fmt: skip
            if data.steps_per_epoch < 1:
                raise WsmlError(f"{root} has fewer training images than a batch of {batch_size}")
            run = assemble(config, resolved, None, data, info, mcfg, ctx, model=model)
            run.net = ctx.wrap(torch.compile(run.model) if compile else run.model)
            run.model.train()
            run.method.train()
            wait = busy = 0.0
            done, epoch, totals = 0, 0, {}
            while done < warmup + steps:
                epoch += 1
                run.method.start_epoch(epoch)
                batches = iter(data.train_batches(epoch))
                while done < warmup + steps:
                    t0 = time.perf_counter()
                    batch = next(batches, None)
                    if batch is None:
                        break
                    if cuda:
                        torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    train_step(run, ctx, batch, epoch, totals)
                    if cuda:
                        torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    if done >= warmup:
                        wait += t1 - t0
                        busy += t2 - t1
                    done += 1
            total = wait + busy
            r = {
                "images_per_s": steps * batch_size / total,
                "ms_per_step": 1e3 * total / steps,
                "data_wait": wait / total,
            }
            out[method] = r
            echo(
                f"{method:<8} {config.backbone:<18} {(config.preset if not image_size else f'center{image_size}'):<10} "
                f"{r['images_per_s']:>9.1f} {r['ms_per_step']:>8.1f} {100 * r['data_wait']:>9.1f}%"
            )
    finally:
        ctx.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return out


def parse_rows(text: str) -> dict[str, int]:
    values = [int(x) for x in text.split(",")]
    return dict(zip(("train", "val", "test"), values, strict=False))
