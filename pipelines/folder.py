"""Loose image files (``cli.py predict IMAGE|FOLDER …``) as normalised batches, with a preset's
eval tensor operations (``pipelines/presets.py``) and the loaders' normalisation, so an image
gives the same input here as from a shard set read by the PyTorch loader."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.presets import Preset
from shards.errors import WsmlError

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
                raise WsmlError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)}, recursively)")
            found.extend(inside)
        elif p.is_file():
            found.append(p)
        else:
            raise WsmlError(f"{p} does not exist (expected an image file or a folder)")
    return found


class DecodedImages(torch.utils.data.Dataset):
    """Image ``i`` decoded and put through the preset's eval operations, in a worker:
    ``(i, uint8 (3, S, S) or None, why it failed)``."""

    def __init__(self, paths: list[Path], preset: Preset):
        self.paths, self.preset = paths, preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        from torchvision.io import ImageReadMode, decode_image

        try:
            data = torch.frombuffer(bytearray(self.paths[i].read_bytes()), dtype=torch.uint8)
            x = decode_image(data, mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as e:
            return i, None, " ".join(str(e).split())[:200]
        rng = np.random.default_rng(0)  # eval is deterministic; the ops take a generator
        x, _ = self.preset.tensor(x.unsqueeze(0), False, rng)
        return i, x[0], ""


@dataclass
class FolderBatches:
    """Batches ``{"image": (B, 3, S, S) float normalised, "path": [str]}`` of ``paths`` in
    order, decoded by ``workers`` processes (0: here); with ``on_bad="skip"`` an image that
    cannot be decoded is left out and listed in ``skipped``."""

    paths: list[Path]
    preset: Preset
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    on_bad: str = "fail"
    workers: int = 0
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad not in ON_BAD:
            raise WsmlError(f"on_bad must be one of {', '.join(ON_BAD)}, got {self.on_bad!r}")

    def _decoded(self) -> Iterator[tuple[int, torch.Tensor | None, str]]:
        data = DecodedImages(self.paths, self.preset)
        if not self.workers:
            return (data[i] for i in range(len(data)))
        return iter(
            torch.utils.data.DataLoader(
                data, batch_size=None, num_workers=min(self.workers, len(data)),
                prefetch_factor=4,
            )
        )  # fmt: skip

    def __iter__(self) -> Iterator[dict]:
        mean = torch.tensor(self.preset.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preset.std).view(1, 3, 1, 1)
        scale, shift = 1 / (255 * std), -mean / std  # the loaders' (x / 255 - mean) / std
        images: list[torch.Tensor] = []
        names: list[str] = []
        for i, x, why in self._decoded():
            if x is None:
                self._bad(self.paths[i], why)
                continue
            images.append(x)
            names.append(str(self.paths[i]))
            if len(images) == self.batch_size:
                yield self._batch(images, names, scale, shift)
                images, names = [], []
        if images:
            yield self._batch(images, names, scale, shift)

    def _batch(self, images, names, scale, shift) -> dict:
        x = torch.addcmul(shift, torch.stack(images), scale)
        return {"image": x.to(self.device), "path": names}

    def _bad(self, path: Path, why: str) -> None:
        if self.on_bad == "skip":
            self.skipped.append(str(path))
            return
        raise WsmlError(
            f"{path} cannot be decoded as an image ({why}); --on-bad skip goes on without it"
        )
