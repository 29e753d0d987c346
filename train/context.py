"""What the training loop adds to the process context (``pipelines.distributed``): the progress
bar, each rank's share of the batch, intra-op threads and
eval mode. Nothing here knows about methods."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pipelines.distributed import DistContext
from train.integrity import check_global_batch, end_with_launcher


@dataclass
class Context(DistContext):
    """The process context (pipelines/distributed.py) plus the loop's progress bar."""

    progress: bool = False

    @classmethod
    def create(cls, device: str = "auto", progress: bool = False) -> Context:
        end_with_launcher()  # no orphaned rank writes on after torchrun's agent died
        ctx = super().create(device)
        ctx.progress = progress and ctx.is_main and sys.stderr.isatty()
        return ctx

    def local_batch(self, batch_size: int) -> int:
        """Each rank's share of the global batch."""
        check_global_batch(batch_size, self.world_size)
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
