"""A grid of tiles of every image as one preset (``cache-clip --crops gridG``: AEVLP's crops).

Tile (r, c) of an H x W image, row-major, is pixels [r th, (r + 1) th) x [c tw, (c + 1) tw) with
th = H // G and tw = W // G (AEVLP's ``datasets.py``: the remainder on the bottom and right is
in no tile; the release draws a 0-20 % overlap and then sets it to 0, so tiles do not overlap).
Each tile goes through a base preset's eval geometry (a CLIP model's resize of the shorter side
and centre crop), and the G x G results sit side by side in one size x (G^2 size) image, so the
loaders read, decode and normalise every image once for all its tiles; ``split_tiles`` cuts a
batch of them back into (N G^2, 3, size, size).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipelines.presets import Preset
from shards.base.errors import WsmlError


def tile_boxes(height: int, width: int, grid: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of each tile, row-major."""
    th, tw = height // grid, width // grid
    return [(r * th, c * tw, (r + 1) * th, (c + 1) * tw) for r in range(grid) for c in range(grid)]


def tiles_preset(base: Preset, grid: int) -> Preset:
    """``grid`` x ``grid`` tiles of each image through ``base``'s eval geometry, side by side
    (eval only: nothing random)."""
    if grid < 1 or base.views != 1:
        raise WsmlError(f"tiles take a grid >= 1 of a one-view preset, got {grid} of {base.name}")
    return dataclasses.replace(
        base,
        name=f"{base.name}-grid{grid}",
        summary=f"{grid}x{grid} tiles (H // {grid} x W // {grid}, row-major), each: {base.summary}",
        dali=_tiles_dali(base, grid),
        tensor=_tiles_tensor(base, grid),
        views=grid * grid,
    )


def _tiles_dali(base: Preset, grid: int):
    def ops(images, train: bool, device: str):
        from nvidia.dali import fn

        shape = images.shape(device="cpu")
        th, tw = shape[0] // grid, shape[1] // grid
        tiles = []
        for r in range(grid):
            for c in range(grid):
                tile = images[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
                tile, norm = base.dali(tile, False, device)
                if "crop" in norm:  # what the base leaves to the normalisation, done per tile
                    tile = fn.crop(tile, device=device, crop=norm["crop"])
                tiles.append(tile)
        return fn.cat(*tiles, axis=1), {}

    return ops


def _tiles_tensor(base: Preset, grid: int):
    def ops(x, train: bool, rng: np.random.Generator):
        h, w = x.shape[-2:]
        if h < grid or w < grid:
            raise WsmlError(f"an image of {w}x{h} pixels has no {grid}x{grid} tiles of a pixel")
        tiles = [base.tensor(x[..., t:b, lf:rt], False, rng)[0] for t, lf, b, rt in
                 tile_boxes(h, w, grid)]  # fmt: skip
        return torch.cat(tiles, dim=-1), False

    return ops


def split_tiles(images: torch.Tensor, views: int) -> torch.Tensor:
    """(N, 3, S, views x S) side-by-side tiles -> (N x views, 3, S, S), image-major."""
    n, c, s, w = images.shape
    if w != views * s:
        raise WsmlError(f"a batch of {tuple(images.shape)} does not hold {views} square tiles")
    return images.view(n, c, s, views, s).permute(0, 3, 1, 2, 4).reshape(n * views, c, s, s)
