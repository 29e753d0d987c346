"""Processes and devices in one place: the device a process uses, torchrun's process group (join,
barrier, close, rank-0 work and failures shared by every rank, the DDP wrapper), autocast and
seeding. ``models/`` and ``train/`` both build on it; without a process group every collective
is a no-op and everything runs as one process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pipelines import stand_in
from shards.base.errors import WsmlError

DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(
    device: str | torch.device = "auto", local_rank: int = 0, cuda_count: int | None = None
) -> torch.device:
    """The one device a process uses: ``auto`` is its GPU if the machine has one, else the CPU;
    a bare ``cuda`` means ``cuda:LOCAL_RANK``. ``cuda_count`` (default: the GPUs torch sees) is
    checked, so a bad ordinal fails here with the fix rather than deep inside CUDA."""
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    name = str(device)
    if name == "auto":
        name = "cuda" if count else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise WsmlError(f"--device {device}: expected {DEVICES}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "meta" and stand_in.active():  # tests: the CPU's stand-in for a GPU
        return dev
    if dev.type != "cuda":
        raise WsmlError(f"--device {device}: expected {DEVICES}")
    if count == 0:
        raise WsmlError(f"--device {device}: this machine has no CUDA GPU; use --device cpu")
    index = local_rank if dev.index is None else dev.index
    if index >= count:
        raise WsmlError(
            f"--device {device}: this process (LOCAL_RANK {local_rank}) would use cuda:{index}, "
            f"but {count} GPU(s) are visible; start at most {count} processes per machine"
        )
    return torch.device("cuda", index)


def host_to_device(t: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor on ``device`` without making the host wait: on a GPU through a pinned copy of
    torch's own (its host allocator keeps that copy alive until the transfer is done; a buffer
    another library owns, such as DALI's outputs handed over by dlpack, may be reused sooner)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
    return t.to(device, non_blocking=True)


def is_main_process() -> bool:
    """Rank 0 by torchrun's environment (true without torchrun); needs no process group."""
    return int(os.environ.get("RANK", "0")) == 0


def get_world_size() -> int:
    """Processes in the group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@dataclass
class DistContext:
    """This process among torchrun's (or alone): rank, world size, its device, and the autocast
    dtype of model forwards that may run in lower precision (None: full precision)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False  # this process started the process group, and ends it
    mixed: torch.dtype | None = None

    @classmethod
    def create(cls, device: str | torch.device = "auto", **extra: Any) -> DistContext:
        """Joins the process group torchrun's environment describes (gloo on the CPU, NCCL on
        GPUs), starting it if nobody has. bf16 autocast on GPUs, none on the CPU."""
        dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owned = False
        wanted = int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()
        if wanted and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
            owned = True
        mixed = torch.bfloat16 if dev.type == "cuda" else None
        return cls(get_rank(), get_world_size(), dev, owned, mixed, **extra)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``mixed`` on this device; full precision when ``mixed`` is None."""
        return autocast(self.device, self.mixed)

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """DDP across ranks (gradients averaged; the model itself on one process), compiled
        around the DDP wrapper when asked, as torch.compile's DDP support expects."""
        net = model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(net) if compile else net

    def on_zero(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 and hand its result, or its failure, to every rank."""
        box: list = [None, None]
        err = None
        if self.rank == 0:
            try:
                box[0] = fn()
            except Exception as e:  # every rank must learn of it, or the others wait forever
                err, box[1] = e, _describe(e)
        if self.world_size > 1:
            dist.broadcast_object_list(box, src=0)
        if err is not None:
            raise err
        if box[1] is not None:
            raise WsmlError(f"rank 0 failed: {box[1]}")
        return box[0]

    def on_all(self, fn: Callable[[], Any]) -> list:
        """Run ``fn`` on every rank; every rank raises if one failed. Returns every result."""
        mine, err = None, None
        try:
            mine = fn()
        except Exception as e:
            err = e
        out = [(mine, None if err is None else _describe(err))]
        if self.world_size > 1:
            out = [None] * self.world_size
            dist.all_gather_object(out, (mine, None if err is None else _describe(err)))
        if err is not None:
            raise err
        for rank, (_, message) in enumerate(out):
            if message is not None:
                raise WsmlError(f"rank {rank} failed: {message}")
        return [r for r, _ in out]


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, WsmlError) else f"{type(e).__name__}: {e}"


def autocast(
    device: torch.device, dtype: torch.dtype | None = torch.bfloat16
) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (any device torch autocasts, the CPU included, so a
    CPU test can force it); ``None`` is full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation that is the same in every process (ranks, resumed runs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def gather_cat(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor along dim 0 over all ranks (first dims may differ between ranks,
    equal across the tensors of one call); returns the tensors unchanged without a process group."""
    world = get_world_size()
    if world == 1:
        return tensors
    # NCCL gathers CUDA tensors only; results go back to each tensor's own device.
    nccl = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if nccl else tensors[0].device
    n = torch.tensor([tensors[0].shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    biggest = max(counts)
    out = []
    for t in tensors:
        padded = torch.zeros((biggest, *t.shape[1:]), dtype=t.dtype, device=dev)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device))
    return tuple(out)


def sum_over_ranks(x: Tensor) -> Tensor:
    """``x`` summed over the ranks, on x's device (NCCL reduces CUDA tensors only)."""
    if get_world_size() == 1:
        return x
    nccl = dist.get_backend() == "nccl"
    y = x.to(torch.device("cuda", torch.cuda.current_device()) if nccl else x.device)
    dist.all_reduce(y)
    return y.to(x.device)


def all_reduce_mean(x: Tensor, device: torch.device) -> Tensor:
    """``x`` averaged over ranks (via ``device``, which the backend can reduce), on x's device."""
    if get_world_size() == 1:
        return x
    y = x.to(device)
    dist.all_reduce(y)
    return y.to(x.device) / get_world_size()


# ---- batch-wide terms under DDP: global values, each rank's own gradient ----


def training_world() -> int:
    """The ranks a training step's batch is spread over (1 outside DDP or without grad: an
    eval pass never runs a collective)."""
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_sum(x: Tensor) -> Tensor:
    """``x`` summed over the ranks; the other ranks' parts are constants, so the gradient
    reaches this rank's ``x`` alone (each rank backpropagates its own part)."""
    if training_world() == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return x + (total - x.detach())


def ddp_scaled(x: Tensor) -> Tensor:
    """``x`` with its gradient times the world size: DDP averages the ranks' gradients, and a
    batch-wide term's gradient reaches the model through each rank's own part only."""
    world = training_world()
    return x if world == 1 else x + (world - 1) * (x - x.detach())


def global_sum(x: Tensor) -> Tensor:
    """A sum over this rank's share of the batch made the global batch's (value and gradient
    as one process would have them)."""
    return ddp_scaled(all_sum(x))


def gather_batch(x: Tensor, members: int = 1) -> tuple[Tensor, slice]:
    """Every rank's ``x`` (M x b, ...) of one training step, as constants: (M x W x b, ...)
    member-major, ranks in order, and where this rank's rows lie within each member."""
    world = training_world()
    b = x.shape[0] // members
    if world == 1:
        return x.detach(), slice(0, b)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    shape = x.shape[1:]
    joined = torch.cat([p.view(members, b, *shape) for p in parts], dim=1)
    rank = dist.get_rank()
    return joined.view(-1, *shape), slice(rank * b, (rank + 1) * b)
