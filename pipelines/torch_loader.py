"""The PyTorch fallback for machines without DALI: webdataset reads the tars that hold the
rank's share, DataLoader workers decode with torchvision.io and apply the preset's tensor
operations to uint8 images, and the main process normalises whole batches (on the GPU if any). Each worker reads one contiguous piece of the share and yields whole
batches, so the order is fixed by the seed and the number of workers."""

from __future__ import annotations

import gc
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from pipelines.presets import Preset
from pipelines.sharding import split_range, tars_covering
from shards.base.errors import WsmlError


class ShareReader(torch.utils.data.IterableDataset):
    """Samples [start, end) of a split (concatenated tars) as uint8 NCHW batches plus rows."""

    def __init__(
        self,
        tars: list[Path],
        counts: list[int],
        start: int,
        end: int,
        *,
        preset: Preset,
        train: bool,
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
    ):
        self.tars, self.counts = [str(p) for p in tars], counts
        self.start, self.end = start, end
        self.preset, self.train = preset, train
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        lo, hi = split_range(self.start, self.end, workers, worker)
        rng = np.random.default_rng([self.seed, worker])
        samples = self._samples(lo, hi)
        if self.train:  # webdataset's buffer shuffle, seeded by the rank's epoch and worker
            buffer = max(1, self.shuffle_buffer // workers)
            shuffle = wds.filters.shuffle(buffer, initial=buffer, seed=int(rng.integers(2**31)))
            samples = shuffle(samples)
        try:
            yield from self._batches(samples, rng)
        except WsmlError as e:  # raised again in the main process, as the user's error
            yield _Failure(str(e))

    def _samples(self, lo: int, hi: int) -> Iterator[tuple[str, str, bytes, int]]:
        for tar_i, skip, take in tars_covering(self.counts, lo, hi):
            url = self.tars[tar_i]
            ds = wds.WebDataset(
                url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
            )
            n = 0
            for i, sample in _read_tar(url, ds):
                if i < skip:
                    continue
                if n == take:
                    break
                key = sample["__key__"]
                if "jpg" not in sample or "row" not in sample:
                    missing = "jpg" if "jpg" not in sample else "row"
                    raise WsmlError(f"{url}: sample {key} has no .{missing} member")
                yield url, key, sample["jpg"], int.from_bytes(sample["row"], "little", signed=True)
                n += 1
            if n != take:
                raise WsmlError(f"{url} holds fewer samples than its manifest entry says")

    def _batches(self, samples, rng: np.random.Generator):
        size, b = self.preset.size, self.batch_size
        images = torch.empty((b, 3, size, size * self.preset.views), dtype=torch.uint8)
        rows = torch.empty(b, dtype=torch.int64)
        n = 0
        for url, key, data, row in samples:
            images[n] = self._decode(url, key, data, rng)
            rows[n] = row
            n += 1
            if n == b:
                yield images.clone(), rows.clone()
                n = 0
        if n:
            yield images[:n].clone(), rows[:n].clone()

    def _decode(self, url: str, key: str, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            x = decode_jpeg(  # turned by its EXIF orientation, as DALI's decoder does
                torch.frombuffer(bytearray(data), dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                apply_exif_orientation=True,
            )
        except RuntimeError as e:
            raise WsmlError(f"{url}: the image of sample {key} cannot be decoded ({e})") from e
        # channels-last: torch's uint8 resize is ~20x faster there, to the same pixels
        x = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
        x, mirror = self.preset.tensor(x, self.train, rng)
        return x[0].flip(-1) if mirror else x[0]


class _Failure(str):
    """An expected error inside a DataLoader worker, carried to the main process."""


def _read_tar(url: str, ds) -> Iterator[tuple[int, dict]]:
    """(i, sample) of a tar, where a damaged tar (truncated, not a tar) is one error naming it
    rather than webdataset's traceback."""
    samples = iter(ds)
    i = 0
    while True:
        try:
            sample = next(samples)
        except StopIteration:
            return
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise WsmlError(
                f"{url} cannot be read past sample {i} ({type(e).__name__}: {e}): the tar is "
                "truncated or damaged; run cli.py verify on the shard set"
            ) from None
        yield i, sample
        i += 1


def start_workers(loader: torch.utils.data.DataLoader) -> Iterator:
    """The loader's iterator, its workers forked with this process's heap frozen, so that no
    worker ever collects an object of ours. A DALI pipeline left as garbage here (an earlier
    run's, a test's) would otherwise be collected in a worker, whose ``__del__`` then waits
    forever for threads a fork does not copy. Freezing costs nothing (a full collection
    first would cost ~0.15 s an epoch); ``shard``'s pool forks the same way. Every DataLoader
    starts through it (this loader, the folder reader, the benches' reference loader); one
    without workers forks nothing and starts as it is."""
    if not loader.num_workers:
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


def iterate_torch(
    reader: ShareReader, *, num_workers: int, steps: int, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of (uint8 NCHW images, rows): the workers' whole batches in turn, their
    last partial batches merged; the last batch may be short (eval pads it). ``pin_memory``
    (for a GPU) lets the copy to the device overlap the next batch."""
    if steps == 0:
        return
    import torchvision.io  # noqa: F401  imported once here, not in every fresh worker
    import torchvision.transforms.v2.functional  # noqa: F401

    loader = torch.utils.data.DataLoader(
        reader,
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
        pin_memory=pin_memory,
    )
    b, done = reader.batch_size, 0
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for item in start_workers(loader):
        if isinstance(item, _Failure):
            raise WsmlError(str(item))
        images, rows = item
        if len(rows) == b:
            yield images, rows
            done += 1
        else:
            pending.append((images, rows))
            if sum(len(r) for _, r in pending) >= b:
                images, rows = (torch.cat(t) for t in zip(*pending, strict=True))
                yield images[:b], rows[:b]
                done += 1
                pending = [(images[b:], rows[b:])]
        if done == steps:
            return
    if pending and sum(len(r) for _, r in pending):
        yield tuple(torch.cat(t) for t in zip(*pending, strict=True))
