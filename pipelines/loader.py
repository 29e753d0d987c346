"""One call builds a loader over a shard set: ``create_loader(shards, split, regime=..., ...)``.

It yields batch dicts: ``image`` (normalised float NCHW), ``row``, ``observed`` (int8 1/0/-1 of
the regime's view), ``full`` (clean labels), ``valid`` (False on eval padding) and ``embedding``
when a cache is named. ``set_epoch`` picks the epoch, as with PyTorch's DistributedSampler;
every epoch is rebuilt from (seed, epoch, rank), so a run resumed at an epoch sees the same data.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines import sharding
from pipelines.labels import RowTable, read_row_table
from pipelines.presets import Preset, get_preset
from shards.errors import WsmlError
from shards.fileio import sha256_file
from shards.registry import Registry
from shards.shardset import ShardSet, open_shard_set


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    gpu: bool  # decodes on the GPU when the device is one


BACKENDS: Registry[Backend] = Registry("loader backend")
BACKENDS.register(Backend("dali", "NVIDIA DALI (mixed GPU decode, or CPU operators)", gpu=True))
BACKENDS.register(Backend("torch", "webdataset + PIL in DataLoader workers", gpu=False))


@dataclass
class Loader:
    """One rank's batches of one split; ``len()`` is the epoch length from the manifest."""

    shard_set: ShardSet
    split: str
    regime: str
    preset: Preset
    batch_size: int
    rank: int
    world_size: int
    device: torch.device
    seed: int
    train: bool
    backend: str
    table: RowTable
    num_threads: int
    shuffle_buffer: int
    hw_decoder_load: float
    cpu_resize: str = "torch"
    epoch: int = 0
    counts: list[int] = field(default_factory=list)
    kept: dict = field(default_factory=dict, repr=False, compare=False)  # a reused DALI graph
    build_seconds: list[float] = field(default_factory=list, repr=False, compare=False)

    @property
    def num_samples(self) -> int:
        """Rows of the split (all ranks together)."""
        return sum(self.counts)

    def __len__(self) -> int:
        return sharding.num_batches(self.num_samples, self.batch_size, self.world_size, self.train)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def share(self) -> tuple[int, int]:
        """This rank's [start, end) in the split's concatenated samples for the current epoch."""
        shard = sharding.shard_of(self.rank, self.world_size, self.epoch, self.train)
        return sharding.shard_range(self.num_samples, shard, self.world_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        start, end = self.share()
        mean = torch.tensor(self.preset.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preset.std, device=self.device).view(1, 3, 1, 1)
        scale, shift = 1 / (255 * std), -mean / std  # (x / 255 - mean) / std in one pass
        seen = done = 0
        for images, rows in self._raw():
            images = images.to(self.device, non_blocking=True)
            if images.dtype == torch.uint8:  # the fallback normalises whole batches here
                images = torch.addcmul(shift, images, scale)
            n = len(rows)
            valid = torch.arange(seen, seen + n) < (end - start)
            seen += n
            if n < self.batch_size:  # only the fallback's last eval batch: pad like DALI does
                images, rows, valid = _pad(images, rows, valid, self.batch_size)
            batch = self.table.join(rows)
            batch["image"] = images
            batch["valid"] = valid.to(self.device)
            yield batch
            done += 1
        # a short eval share (the fallback stops when its samples do) still yields len(self)
        # batches, all padding, so no rank waits in a collective on one that ran out
        while seen and done < len(self):
            none = torch.zeros(1, dtype=torch.bool)
            pad_images, pad_rows, valid = _pad(images[-1:], rows[-1:], none, self.batch_size)
            batch = self.table.join(pad_rows)
            batch["image"] = pad_images
            batch["valid"] = valid.to(self.device)
            yield batch
            done += 1

    def _raw(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ss, steps = self.shard_set, len(self)
        tars = ss.shard_paths(self.split)
        shard = sharding.shard_of(self.rank, self.world_size, self.epoch, self.train)
        seed = sharding.epoch_seed(self.seed, self.epoch, self.rank)
        start, end = self.share()
        buffer = min(self.shuffle_buffer, max(1, end - start))
        if self.backend == "dali":
            yield from self._dali(shard, seed, buffer, steps)
            return
        from pipelines.torch_loader import ShareReader, iterate_torch

        reader = ShareReader(
            tars,
            self.counts,
            start,
            end,
            preset=self.preset,
            train=self.train,
            batch_size=self.batch_size,
            seed=seed,
            shuffle_buffer=buffer,
        )
        pinned = self.device.type == "cuda"
        yield from iterate_torch(
            reader, num_workers=self.num_threads, steps=steps, pin_memory=pinned
        )

    def _dali(self, shard: int, seed: int, buffer: int, steps: int):
        """DALI's batches. An eval loader whose epoch is exactly its reader's builds its graph
        once and reads it epoch after epoch (same shard, nothing random; the reader sticks to
        it); training rebuilds per epoch, from (seed, epoch, rank), so a resumed run sees the
        same data (DALI's reader cannot take a new seed or shard)."""
        from pipelines import dali_loader as dl

        ss = self.shard_set
        start, end = self.share()
        reuse = not self.train and steps == -(-(end - start) // self.batch_size)
        where = f"split {self.split} of {ss.root}"
        kept = self.kept if reuse and self.kept.get("shard") == shard else {}
        if not kept.get("clean"):  # none yet, or the last epoch was left unfinished
            kept = {"shard": shard, **self._dali_graph(shard, seed, buffer, reuse)}
        self.kept = kept if reuse else {}
        kept["clean"] = False
        if kept["norm"] is not None:
            rng = np.random.default_rng(seed)
            batches = dl.iterate_dali_split(
                kept["pipe"], kept["norm"], self.preset, self.train, rng, steps, where, kept
            )
        else:
            batches = dl.iterate_dali(kept["pipe"], steps, where, kept)
        for i, batch in enumerate(batches):
            if i == 0:  # built (or not: 0 s) by now
                self.build_seconds.append(kept.pop("build_s", 0.0))
            yield batch
        kept["clean"] = reuse

    def _dali_graph(self, shard: int, seed: int, buffer: int, stick: bool) -> dict:
        """DALI's pipeline (and, for the split CPU graph, its normalize pipeline), unbuilt."""
        from pipelines import dali_loader as dl

        ss = self.shard_set
        gpu = self.device.type == "cuda"
        split_graph = not gpu and self.cpu_resize == "torch"
        pipe = dl.create_dali_pipeline(
            ss.shard_paths(self.split),
            ss.index_paths(self.split),
            preset=None if split_graph else self.preset,
            train=self.train,
            batch_size=self.batch_size,
            shard_id=shard,
            num_shards=self.world_size,
            seed=seed,
            num_threads=self.num_threads,
            device_id=_cuda_index(self.device) if gpu else None,
            shuffle_buffer=buffer if self.train else 1,
            hw_decoder_load=self.hw_decoder_load,
            stick_to_shard=stick,
        )
        norm = None
        if split_graph:
            norm = dl.create_normalize_pipeline(self.preset, self.batch_size, self.num_threads)
        return {"pipe": pipe, "norm": norm}


def _cuda_index(device: torch.device) -> int:
    """``cuda`` without an index means the current device (torchrun sets it per rank)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def _pad(images, rows, valid, size: int):
    """Repeat the last sample up to ``size`` (all of it invalid), as DALI's pad_last_batch does."""
    k = size - len(rows)
    if len(rows) == 0:
        raise WsmlError("cannot pad an empty batch")
    return (
        torch.cat([images, images[-1:].expand(k, *images.shape[1:])]),
        torch.cat([rows, rows[-1:].expand(k)]),
        torch.cat([valid, torch.zeros(k, dtype=torch.bool)]),
    )


@dataclass(frozen=True)
class LoaderOptions:
    """Which share a loader reads and how, apart from what it reads (``create_loader``'s
    arguments): this process's ``rank`` of ``world_size``, its ``device``, the ``seed`` and first
    ``epoch`` of the shuffle, and the reading itself. ``backend`` is dali, torch or auto (DALI
    when it imports, else the fallback with a notice); ``num_threads`` None: a share of the
    cores per rank; on a CPU DALI's geometry runs in torchvision's kernels unless
    ``cpu_resize="dali"`` (see pipelines/dali_loader.py); ``verify_on_load`` checks every
    shard's sha256 against the manifest first."""

    rank: int = 0
    world_size: int = 1
    device: str | torch.device = "cpu"
    seed: int = 0
    epoch: int = 0
    backend: str = "auto"
    num_threads: int | None = None
    shuffle_buffer: int = 4096
    hw_decoder_load: float = 0.65
    cpu_resize: str = "torch"
    verify_on_load: bool = False

    def check(self) -> None:
        if self.cpu_resize not in ("torch", "dali"):
            raise WsmlError(f"cpu_resize must be torch or dali, got {self.cpu_resize!r}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise WsmlError(f"rank {self.rank} is not in a world of size {self.world_size}")


def create_loader(
    shards: str | Path | ShardSet,
    split: str,
    *,
    regime: str,
    batch_size: int,
    preset: str | Preset,
    train: bool | None = None,
    embeddings: str | None = None,
    labels: bool = True,
    crops: bool = False,
    options: LoaderOptions = LoaderOptions(),
) -> Loader:
    """A loader over ``split`` of a shard set: ``regime``'s observed labels, ``batch_size``
    images through ``preset``, for the rank, device and reading ``options`` name.

    ``train`` (default: split == "train") shuffles, augments and drops the last partial batch;
    otherwise every row is yielded once across ranks. ``embeddings`` (a cache's tag) adds each
    row's ``embedding`` (and with ``crops`` its tiles', ``crops``: ``cache-clip --crops``);
    ``labels=False`` leaves ``observed``/``full`` out (encoders caching images need none).
    """
    options.check()
    if batch_size < 1:
        raise WsmlError(f"batch size must be positive, got {batch_size}")
    ss = shards if isinstance(shards, ShardSet) else open_shard_set(shards)
    p = preset if isinstance(preset, Preset) else get_preset(preset)
    backend = choose_backend(options.backend)
    info = ss.split(split)
    counts = [int(s["num_samples"]) for s in info["shards"]]
    if options.world_size > sum(counts):
        raise WsmlError(
            f"split {split} of {ss.root} has {sum(counts)} samples, fewer than the "
            f"{options.world_size} ranks reading it"
        )
    check_files(ss, split, options.verify_on_load)
    dev = torch.device(options.device)
    table = read_row_table(ss, split, regime, dev, embeddings, labels=labels, crops=crops)
    if table.num_rows != sum(counts):
        raise WsmlError(
            f"{ss.root}: split {split} has {sum(counts)} samples in its shards but "
            f"{table.num_rows} label rows; run cli.py verify {ss.root}"
        )
    return Loader(
        ss,
        split,
        regime,
        p,
        batch_size,
        options.rank,
        options.world_size,
        dev,
        options.seed,
        split == "train" if train is None else train,
        backend,
        table,
        options.num_threads or default_threads(options.world_size),
        options.shuffle_buffer,
        options.hw_decoder_load,
        options.cpu_resize,
        options.epoch,
        counts,
    )


def choose_backend(name: str) -> str:
    from pipelines.dali_loader import dali_available

    if name == "auto":
        if dali_available():
            return "dali"
        print("notice: NVIDIA DALI is not installed; using the PyTorch loader", file=sys.stderr)
        return "torch"
    backend = BACKENDS.get(name).name
    if backend == "dali" and not dali_available():
        raise WsmlError(
            "the dali loader needs NVIDIA DALI (pip install nvidia-dali-cuda120, Linux x86_64 "
            "or aarch64); use --loader torch on this machine"
        )
    return backend


def default_threads(world_size: int) -> int:
    """The CPU threads (or workers) one rank gets: this machine's cores shared by local ranks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", min(world_size, cores or 1)))
    return max(1, (cores or 1) // max(1, local))


def check_files(ss: ShardSet, split: str, verify: bool) -> None:
    """Every tar and index of the split exists; with ``verify``, the tars match their sha256."""
    for entry in ss.split(split)["shards"]:
        for key in ("tar", "index"):
            path = ss.root / entry[key]
            if not path.is_file():
                raise WsmlError(
                    f"{path} is missing from the shard set (listed in its manifest); "
                    f"run cli.py verify {ss.root}"
                )
        tar = ss.root / entry["tar"]
        if "bytes" in entry and tar.stat().st_size != entry["bytes"]:  # truncated: no hashing
            raise WsmlError(
                f"{tar} has {tar.stat().st_size} bytes, its manifest entry says {entry['bytes']}: "
                f"the file is truncated or changed; run cli.py verify {ss.root}"
            )
        for key, digest in (("tar", "sha256"), ("index", "index_sha256")):
            path = ss.root / entry[key]
            if verify and sha256_file(path) != entry[digest]:
                raise WsmlError(
                    f"{path} does not match the sha256 in {ss.root / 'manifest.json'}: the file "
                    f"changed after conversion; convert again or run cli.py verify {ss.root}"
                )
