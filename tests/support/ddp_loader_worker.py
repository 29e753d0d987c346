"""Run by test_pipelines_ddp.py under ``torchrun --nproc_per_node=2`` (gloo on CPU): each rank
reads the tiny shard set with both backends in lockstep, as a DDP loop would, and rank 0 writes
what every rank saw to a JSON file.

usage: torchrun --standalone --nproc_per_node=2 tests/support/ddp_loader_worker.py SHARDS OUT.json
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from pipelines.loader import LoaderOptions, create_loader
from tests.support.pipelines_data import BACKENDS, REGIME, TAG, TINY_PRESET

SEED = 11
# name: (split, batch size, epochs in the order set_epoch is called; epoch 0 again = a resume)
CONFIGS = {"train": ("train", 4, [0, 1, 2, 0]), "eval": ("test", 3, [0, 1])}


def create_rank_loader(root, split: str, batch: int, rank: int, world: int, backend: str):
    """The loader a rank of the launch reads (the single-process test builds the same)."""
    opts = LoaderOptions(rank=rank, world_size=world, seed=SEED, backend=backend, num_threads=1)
    return create_loader(root, split, regime=REGIME, batch_size=batch, preset=TINY_PRESET,
                         embeddings=TAG, options=opts)  # fmt: skip


def read_epoch(loader, world: int) -> dict:
    """One epoch. Every step the ranks first tell each other whether they still have a batch:
    where DDP's gradient all-reduce would hang on a rank that ran out, this stops and says so."""
    rows, valid, uneven = [], [], False
    batches = iter(loader)
    while True:
        batch = next(batches, None)
        flags = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(flags, torch.tensor([batch is not None], dtype=torch.int64))
        have = [bool(f.item()) for f in flags]
        if not all(have):
            uneven = any(have)
            break
        rows.append(batch["row"].tolist())
        valid.append(batch["valid"].tolist())
    scored = torch.tensor([sum(map(sum, valid))])
    dist.all_reduce(scored)  # what an evaluator sums over ranks
    return {
        "len": len(loader),
        "rows": rows,
        "valid": valid,
        "uneven": uneven,
        "scored": int(scored),
    }


def main(root: str, out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {}
    for backend in BACKENDS:
        for name, (split, batch, epochs) in CONFIGS.items():
            loader = create_rank_loader(root, split, batch, rank, world, backend)
            for i, epoch in enumerate(epochs):
                loader.set_epoch(epoch)
                mine[f"{backend}/{name}/{i}"] = {"epoch": epoch, **read_epoch(loader, world)}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        runs = {key: [g[key] for g in gathered] for key in mine}
        Path(out).write_text(json.dumps({"world": world, "runs": runs}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
