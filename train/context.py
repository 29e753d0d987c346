"""The small context object around the training loop: process group and device, autocast,
the DDP wrapper, rank-0 writing and the progress bar. The loop itself only
calls these; nothing here knows about methods."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from shards.errors import WsmlError
from train.integrity import end_with_launcher


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    progress: bool = False

    @classmethod
    def create(cls, device: str = "auto", progress: bool = False) -> Context:
        """Join the torchrun process group when there is one (gloo on CPU, NCCL on GPUs)."""
        end_with_launcher()  # no orphaned rank writes on after torchrun's agent died
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise WsmlError(f"device {device} asked for, but this machine has no CUDA GPU")
            torch.cuda.set_device(dev)
        owns = False
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
            owns = True
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        show = progress and rank == 0 and sys.stderr.isatty()
        return cls(rank, world, dev, owns, show)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on GPUs; full precision on the CPU (exact, reproducible runs)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP across ranks (gradients averaged); the model itself on one process."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def local_batch(self, batch_size: int) -> int:
        """Each rank's share of the global batch."""
        if batch_size % self.world_size:
            raise WsmlError(
                f"batch_size {batch_size} is the global batch and must divide evenly over "
                f"{self.world_size} ranks"
            )
        return batch_size // self.world_size

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="step", disable=not self.progress, leave=False)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads (0: unchanged). The linear setting's steps are a few
    small ops, where OpenMP's synchronisation costs more than it gains: one thread was 1.4 ms
    a step on a busy 2-core machine, two threads 67 ms."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no grad, restoring each module's mode afterwards."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
