"""One call builds a loader over a shard set: ``create_loader(shards, split, regime=..., ...)``.

It yields batch dicts: ``image`` (normalised float NCHW), ``row``, ``observed`` (int8 1/0/-1 of
the regime's view), ``full`` (clean labels), ``valid`` (False on eval padding) and ``embedding``
when a cache is named. ``set_epoch`` picks the epoch, as with PyTorch's DistributedSampler. The
fallback builds each epoch from (seed, epoch, rank); DALI reads one graph epoch after epoch, so
``state_dict``/``load_state_dict`` carry its state (DALI's checkpoint) to a resumed run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines import dali_loader as dl
from pipelines import sharding
from pipelines.distributed import host_to_device
from pipelines.labels import RowTable, read_row_table
from pipelines.presets import Preset, get_preset
from shards.base.errors import WsmlError
from shards.base.fileio import sha256_file
from shards.base.registry import Registry
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
    graph: dl.DaliGraph | None = field(default=None, repr=False, compare=False)  # DALI's, kept
    build_seconds: list[float] = field(default_factory=list, repr=False, compare=False)
    walk: bool = False  # eval: reads shard after shard (set_rank), one DALI graph for them all
    resume: dict | None = field(default=None, repr=False, compare=False)  # load_state_dict's

    @property
    def num_samples(self) -> int:
        """Rows of the split (all ranks together)."""
        return sum(self.counts)

    def __len__(self) -> int:
        return sharding.num_batches(self.num_samples, self.batch_size, self.world_size, self.train)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_rank(self, rank: int) -> None:
        """Read shard ``rank`` next (a walking eval loader: the cache writer's chunks)."""
        if not 0 <= rank < self.world_size:
            raise WsmlError(f"rank {rank} is not in a world of size {self.world_size}")
        self.rank = rank

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
            batch["valid"] = host_to_device(valid, self.device)
            yield batch
            done += 1
        # a short eval share (the fallback stops when its samples do) still yields len(self)
        # batches, all padding, so no rank waits in a collective on one that ran out
        while seen and done < len(self):
            none = torch.zeros(1, dtype=torch.bool)
            pad_images, pad_rows, valid = _pad(images[-1:], rows[-1:], none, self.batch_size)
            batch = self.table.join(pad_rows)
            batch["image"] = pad_images
            batch["valid"] = host_to_device(valid, self.device)
            yield batch
            done += 1

    def _raw(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = len(self)
        if self.backend == "dali":
            yield from self._dali(steps)
            return
        from pipelines.torch_loader import ShareReader, iterate_torch

        start, end = self.share()
        reader = ShareReader(
            self.shard_set.shard_paths(self.split),
            self.counts,
            start,
            end,
            preset=self.preset,
            train=self.train,
            batch_size=self.batch_size,
            seed=sharding.epoch_seed(self.seed, self.epoch, self.rank),
            shuffle_buffer=min(self.shuffle_buffer, max(1, end - start)),
        )
        pinned = self.device.type == "cuda"
        yield from iterate_torch(
            reader, num_workers=self.num_threads, steps=steps, pin_memory=pinned
        )

    def _dali(self, steps: int):
        """DALI's batches from one graph read epoch after epoch (training's and a walking reader
        move on to the next shard, ``sharding.shard_of``; eval's sticks). ``steps`` batches of
        the reader's epoch; the rest (training's dropped batch) is dropped before the next. A
        graph is built afresh for another epoch than its next, or after an unfinished one."""
        where = self._where()
        reads = ("epoch", self.epoch) if self.train else ("shard", self.rank)
        graph = self.graph
        if graph is None or graph.reads != reads or not graph.settle(where):
            graph = self.graph = self._dali_graph()
        graph.reads = ("epoch", self.epoch + 1) if self.train else ("shard", self._next_shard())
        graph.left, graph.pending = graph.epoch_batches, steps
        if graph.norm is not None:  # the split CPU graph: its geometry's draws per epoch
            rng = np.random.default_rng(sharding.epoch_seed(self.seed, self.epoch, self.rank))
            batches = dl.iterate_dali_split(graph, self.preset, self.train, rng, steps, where)
        else:
            batches = dl.iterate_dali(graph, steps, where)
        for i, batch in enumerate(batches):
            if i == 0:  # built (or not: 0 s) by now
                self.build_seconds.append(graph.build_s)
                graph.build_s = 0.0
            graph.left, graph.pending = graph.left - 1, graph.pending - 1
            yield batch

    def _next_shard(self) -> int:
        return (self.rank + 1) % self.world_size if self.walk else self.rank

    def _identity(self) -> dict:
        """What a DALI checkpoint fits: the loader and the graph's kind (operators, arguments)."""
        return dict(backend=self.backend, rank=self.rank, world_size=self.world_size,
                    seed=self.seed, batch=self.batch_size, preset=self.preset.name,
                    graph=dl.graph_kind(self.device, self.cpu_resize))  # fmt: skip

    def _where(self) -> str:
        return f"split {self.split} of {self.shard_set.root}"

    def _dali_graph(self) -> dl.DaliGraph:
        """A new graph (built when first read): training's from (seed, epoch, rank), or, where
        ``load_state_dict`` saved one for this epoch, from the epoch it was first built for and
        DALI's checkpoint; eval's on the rank's shard."""
        resume, self.resume = self.resume, None
        start, saved = self.epoch, None
        if self.train and resume is not None and resume["epoch"] == self.epoch:
            start, saved = resume["start"], resume["dali"]
        ss, kind = self.shard_set, dl.graph_kind(self.device, self.cpu_resize)
        gpu, split_graph = kind == "gpu", kind == "cpu-split"
        shard = sharding.shard_of(self.rank, self.world_size, start, self.train)
        lo, hi = sharding.shard_range(self.num_samples, shard, self.world_size)
        pipe = dl.create_dali_pipeline(
            ss.shard_paths(self.split),
            ss.index_paths(self.split),
            preset=None if split_graph else self.preset,
            train=self.train,
            batch_size=self.batch_size,
            shard_id=shard,
            num_shards=self.world_size,
            seed=sharding.epoch_seed(self.seed, start, self.rank),
            num_threads=self.num_threads,
            device_id=dl.cuda_index(self.device) if gpu else None,
            shuffle_buffer=min(self.shuffle_buffer, max(1, hi - lo)) if self.train else 1,
            hw_decoder_load=self.hw_decoder_load,
            stick_to_shard=not self.train and not self.walk,
            checkpointing=self.train,
            checkpoint=saved,
        )
        norm = None
        if split_graph:
            norm = dl.create_normalize_pipeline(self.preset, self.batch_size, self.num_threads)
        # every shard's reader epoch: the longest shard's batches (the eval epoch's length)
        batches = sharding.num_batches(self.num_samples, self.batch_size, self.world_size, False)
        return dl.DaliGraph(pipe, norm, batches, start=start)

    def state_dict(self) -> dict:
        """A training loader's state for a run's checkpoint: ``epoch`` its DALI graph reads
        next, ``start`` the epoch it was built for, ``dali`` DALI's checkpoint (reader position
        and shuffle, random operators); None where there is nothing to go on from (fallback,
        eval, no finished epoch): that loader builds from (seed, epoch, rank)."""
        state = {**self._identity(), "epoch": None, "start": None, "dali": None}
        graph = self.graph
        if self.train and graph is not None and graph.settle(self._where()):
            state.update(epoch=graph.reads[1], start=graph.start, dali=dl.checkpoint_dali(graph))
        return state

    def load_state_dict(self, state: dict | None) -> str | None:
        """Go on from ``state_dict()``'s state: the epoch it names is read from DALI's
        checkpoint, exactly as the loader that saved it would have. Returns why a DALI training
        loader cannot (no state, or another loader's), None otherwise; without the state it
        builds from (seed, epoch, rank)."""
        self.graph, self.resume = None, None
        if self.backend != "dali" or not self.train:
            return None  # the fallback and eval need nothing: (seed, epoch, rank) decide
        if state is None:
            return "it holds no loader state (saved before loaders kept theirs)"
        differ = [f"{k} {state.get(k)} (here {v})" for k, v in self._identity().items()
                  if state.get(k) != v]  # fmt: skip
        if differ:  # DALI restores only the very graph it saved
            return f"its loader state is another loader's: {', '.join(differ)}"
        if state.get("dali") is not None:
            self.resume = state
        return None


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
    walk_shards: bool = False  # eval: the loader then reads shards rank, rank + 1, … (set_rank)

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
        walk=options.walk_shards,
    )


def choose_backend(name: str) -> str:
    if name == "auto":
        if dl.dali_available():
            return "dali"
        print("notice: NVIDIA DALI is not installed; using the PyTorch loader", file=sys.stderr)
        return "torch"
    backend = BACKENDS.get(name).name
    if backend == "dali" and not dl.dali_available():
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
