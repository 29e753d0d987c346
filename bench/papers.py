"""The papers' way of the linear benchmark (``cli.py bench train``): Cole et al.'s per-sample
``Dataset`` + ``DataLoader`` + ``nn.Linear`` + Adam, and the COCO-sized synthetic split it and
the other ways train on. A benchmark's parts, not a test fixture."""

from __future__ import annotations

import time
from typing import Any

import torch

from shards.lists import LabelLists, Lists, from_dense
from train import metrics
from train.context import cpu_threads
from train.methods import dataset_family, get_method


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def as_shard_labels(split: dict) -> dict:
    """The split with its clean labels as a COCO shard set holds them (what ``FeatureData``
    reads in a real run): positives listed, every other class negative (a null negatives row),
    not 77 negatives listed a row, which would make each batch's clean labels dearer to
    densify than in a real run."""
    full = split["full"].numpy()
    clean = LabelLists(from_dense(full, 1), Lists.nulls(len(full)), full.shape[1])
    return {**split, "full": clean}


class PaperDataset(torch.utils.data.Dataset):
    """Cole et al.'s feature dataset: one sample's features and labels per ``__getitem__``."""

    def __init__(self, split: dict[str, torch.Tensor]):
        self.x = split["input"].float().numpy()
        self.obs = split["observed"].numpy()
        self.full = split["full"].numpy()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input": torch.from_numpy(self.x[i]),
            "observed": torch.from_numpy(self.obs[i]),
            "full": torch.from_numpy(self.full[i]),
            "row": i,
        }


def paper_epoch(
    method: str, splits: dict, batch: int, lr: float, max_steps: int = 0, device: str = "cpu"
) -> tuple[float, float]:
    """Seconds of one epoch the papers' way (shuffled per-sample DataLoader, drop_last, each
    batch moved to ``device``) and of its scoring (val and test through the same kind of
    loader, then mAP and the F1s)."""
    dev = torch.device(device)
    split = splits["train"]
    info = get_method(method)
    cfg = info.create_config(dataset_family("coco"), {"batch_size": str(batch), "lr": repr(lr)})
    n, classes = len(split["full"]), split["full"].shape[1]
    obs = LabelLists.from_dense(split["observed"].numpy()) if info.needs_observed else None
    loss_fn = info.create(n, classes, cfg, observed=obs, generator=torch.Generator().manual_seed(0))
    loss_fn = loss_fn.to(dev)
    model = torch.nn.Linear(split["input"].shape[1], classes).to(dev)
    groups = [{"params": list(model.parameters())}, *loss_fn.extra_parameters()]
    opt = torch.optim.Adam(groups, lr=lr)
    loader = torch.utils.data.DataLoader(
        PaperDataset(split), batch_size=batch, shuffle=True, drop_last=True
    )
    steps = len(loader) if not max_steps else min(max_steps, len(loader))
    t = time.perf_counter()
    with cpu_threads(1):  # as fast as torch's default here, and immune to a busy core
        for s, b in enumerate(loader):
            if s == steps:
                break
            b = {k: v.to(dev, non_blocking=True) for k, v in b.items()}
            out = loss_fn(model(b["input"]), b, epoch=1, step=s)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        _sync(dev)
    seconds = (time.perf_counter() - t) * len(loader) / steps
    t = time.perf_counter()
    with torch.no_grad():
        for name in ("val", "test"):
            ordered = torch.utils.data.DataLoader(PaperDataset(splits[name]), batch_size=batch)
            probs = torch.cat([torch.sigmoid(model(b["input"].to(dev))) for b in ordered])
            metrics.evaluate(probs.cpu().numpy(), splits[name]["full"].numpy())
    return seconds, time.perf_counter() - t
