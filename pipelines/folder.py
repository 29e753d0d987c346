"""Loose image files (``cli.py predict IMAGE|FOLDER …``) as normalised batches: read by the one
image reader (``shards.convert.images.read_rgb``: the pixels a shard of the image holds), put through a
preset's eval tensor operations (``pipelines/presets.py``) and the loaders' normalisation, so an
image gives the same input here as from a shard set read by the PyTorch loader. Worker
processes read whole batches; any failure of one image is that image's alone."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.presets import Preset
from pipelines.torch_loader import start_workers
from shards.base.errors import WsmlError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ON_BAD = ("fail", "skip")


def list_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files given, and those under folders given (recursively, sorted): JPEG and PNG."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not inside:
                raise WsmlError(
                    f"{shown_name(p)} holds no images ({', '.join(IMAGE_SUFFIXES)}, recursively)"
                )
            found.extend(inside)
        elif p.is_file():
            found.append(p)
        else:
            raise WsmlError(f"{shown_name(p)} does not exist (expected an image file or a folder)")
    return found


def shown_name(path: str | os.PathLike) -> str:
    """A path as text that can always be printed and written (UTF-8): bytes of a name that are
    not UTF-8 (a latin-1 file name) as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_image(path: Path, preset: Preset) -> torch.Tensor:
    """One file through the reader and the preset's eval operations: uint8 (3, S, S). Raises
    the reason it cannot (BadImage, OSError, or what the operations raise)."""
    from shards.convert.images import read_rgb

    # (1, 3, H, W) over the HWC pixels is channels-last: the layout torch's uint8 resize is
    # ~20x faster in (same pixels as the default layout); no copy into (3, H, W) planes
    pixels = torch.from_numpy(read_rgb(path.read_bytes())).permute(2, 0, 1)
    rng = np.random.default_rng(0)  # eval is deterministic; the ops take a generator
    x, _ = preset.tensor(pixels.unsqueeze(0), False, rng)
    return x[0]


class ImageChunks(torch.utils.data.Dataset):
    """Chunk ``j``: images ``[j b, (j + 1) b)`` read in one worker, as ``(first index, uint8
    (k, 3, S, S) of those that could be read, {index: why} of those that could not)``."""

    def __init__(self, paths: list[Path], preset: Preset, batch_size: int):
        self.paths, self.preset, self.batch_size = paths, preset, batch_size

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor, dict[int, str]]:
        start = j * self.batch_size
        size = self.preset.size
        images = torch.empty((self.batch_size, 3, size, size), dtype=torch.uint8)
        bad: dict[int, str] = {}
        k = 0
        for i in range(start, min(start + self.batch_size, len(self.paths))):
            try:
                images[k] = read_image(self.paths[i], self.preset)
            except Exception as e:  # noqa: BLE001  every failure of one image is its own
                bad[i] = _reason(e)
                continue
            k += 1
        return start, images[:k], bad


def _reason(e: Exception) -> str:
    from shards.convert.images import BadImage

    if isinstance(e, OSError):
        return f"cannot read file: {e.strerror or e}"
    text = " ".join(str(e).split())[:200]
    return text if isinstance(e, BadImage) else f"{type(e).__name__}: {text}"


@dataclass
class FolderBatches:
    """Batches ``{"image": (B, 3, S, S) float normalised, "path": [Path]}`` of ``paths`` in
    order, read by ``workers`` processes (0: here), a batch per worker task; with
    ``on_bad="skip"`` an image that cannot be read is left out and listed in ``skipped``
    (path, why), else the first one raises a WsmlError naming it."""

    paths: list[Path]
    preset: Preset
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    on_bad: str = "fail"
    workers: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad not in ON_BAD:
            raise WsmlError(f"on_bad must be one of {', '.join(ON_BAD)}, got {self.on_bad!r}")

    def _chunks(self) -> Iterator[tuple[int, torch.Tensor, dict[int, str]]]:
        data = ImageChunks(self.paths, self.preset, self.batch_size)
        workers = min(self.workers, len(data) - 1)  # one chunk: a worker only adds its start
        if workers <= 0:
            return (data[j] for j in range(len(data)))
        loader = torch.utils.data.DataLoader(
            data, batch_size=None, num_workers=workers, prefetch_factor=2
        )
        return start_workers(loader)

    def __iter__(self) -> Iterator[dict]:
        mean = torch.tensor(self.preset.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preset.std).view(1, 3, 1, 1)
        scale, shift = 1 / (255 * std), -mean / std  # the loaders' (x / 255 - mean) / std
        for start, images, bad in self._chunks():
            for i in sorted(bad):
                self._bad(self.paths[i], bad[i])
            if not len(images):
                continue
            end = start + len(images) + len(bad)
            names = [self.paths[i] for i in range(start, end) if i not in bad]
            x = torch.addcmul(shift, images.to(memory_format=torch.channels_last).float(), scale)
            yield {"image": x.to(self.device), "path": names}

    def _bad(self, path: Path, why: str) -> None:
        if self.on_bad == "skip":
            self.skipped.append((path, why))
            return
        raise WsmlError(
            f"{shown_name(path)} cannot be read as an image ({why}); --on-bad skip goes on "
            "without it"
        )
