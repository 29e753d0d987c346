"""Benchmark of the linear setting at a real dataset's size on synthetic features: one training
epoch, the evaluation of val and test, and (for methods with one) the epoch pass. A benchmark,
not a test: it prints figures."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from train.config import RunConfig
from train.context import Context
from train.data import FeatureData
from train.evaluate import evaluate_splits
from train.loop import end_epoch, train_epoch
from train.methods import dataset_family, get_method
from train.setup import assemble

COCO = {"train": 65_665, "val": 16_416, "test": 40_137}  # Cole's COCO splits (METHODS.md §0.3)


def synthetic_split(rows: int, dim: int, classes: int, g: torch.Generator) -> dict:
    """Features that carry the labels (so the scores mean something), ~2.9 positives an image,
    and one observed positive per image."""
    full = torch.rand(rows, classes, generator=g) < 2.9 / classes
    full[torch.arange(rows), torch.randint(0, classes, (rows,), generator=g)] = True
    proj = torch.randn(classes, dim, generator=g)
    x = full.float() @ proj + 3 * torch.randn(rows, dim, generator=g)
    pick = torch.multinomial(full.float(), 1, generator=g).squeeze(1)
    observed = torch.zeros(rows, classes, dtype=torch.int8)
    observed[torch.arange(rows), pick] = 1
    return {
        "input": (x / x.norm(dim=1, keepdim=True)).half(),
        "observed": observed,
        "full": torch.where(full, 1, -1).to(torch.int8),
    }


def run_linear_bench(
    method: str = "an",
    *,
    rows: dict[str, int] | None = None,
    dim: int = 2048,
    classes: int = 80,
    batch_size: int = 16,
    threads: int = 0,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Seconds for one epoch of ``method`` at ``rows`` (default: COCO) x ``dim`` features."""
    if threads:
        torch.set_num_threads(threads)
    rows = rows or COCO
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    splits = {s: synthetic_split(n, dim, classes, g) for s, n in rows.items()}
    echo(f"synthetic features {rows} x {dim}, {classes} classes: {time.perf_counter() - t:.1f}s")
    ctx = Context()
    info = get_method(method)
    mcfg = info.resolve(dataset_family("coco"), {"batch_size": str(batch_size), "epochs": "1"})
    data = FeatureData(splits, ctx, seed=0, batch_size=batch_size)
    config = RunConfig(shards="", method=method, features="synthetic")
    resolved = {"classes": [str(c) for c in range(classes)], "feature_dim": dim}
    run = assemble(config, resolved, None, data, info, mcfg, ctx)
    out = {}
    t = time.perf_counter()
    losses = train_epoch(run, ctx, 1)
    out["train"] = time.perf_counter() - t
    t = time.perf_counter()
    end_epoch(run, ctx, 1)
    out["epoch_pass"] = time.perf_counter() - t
    t = time.perf_counter()
    results = evaluate_splits(run.eval_models(), data, ctx, ("val", "test"), 0.5)
    out["eval"] = time.perf_counter() - t
    steps = data.steps_per_epoch
    echo(
        f"{method}: {steps} steps of batch {batch_size} in {out['train']:.2f}s "
        f"({1e3 * out['train'] / steps:.2f} ms/step), "
        f"loss {losses['loss']:.4f}; end of epoch {out['epoch_pass']:.2f}s; "
        f"val+test scoring {out['eval']:.2f}s (val mAP {results['model']['val']['mAP']:.2f})"
    )
    return out
