"""``cache-clip --crops gridG``: beside a CLIP cache's embedding of every whole image, one
embedding per tile of a G x G grid of every training image (AEVLP's DAMP pseudo-labels score
each tile against the class texts; its release runs CLIP on them at every step, here they are
embedded once). The tiles and their geometry are ``pipelines/tiles.py``; each tile is embedded
exactly as a whole image is (the model's own preprocessing), G^2 tiles of an image in one
row of G^2 x D (``shards.caches.read_crops`` gives (N, G^2, D)). The chunked, resumable
writing is the global embeddings' own (``models.cache_run``), with ``--batch-size`` and
``--chunk-size`` counted in tiles, so a forward and a chunk hold about as many images as without
crops."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

from models.cache_run import CacheOptions, Encoder, create_cache_plan
from pipelines.tiles import split_tiles, tiles_preset
from shards.base.errors import WsmlError
from shards.shardset import ShardSet

GRID_RE = re.compile(r"^grid([1-9][0-9]?)$")
OVERLAP = 0.0  # the release draws a 0-20 % overlap per tile and then sets it to 0


@dataclass(frozen=True)
class Crops:
    """The training split's tiles: their encoder (side-by-side tiles in, one row of views x D
    out) and what ``meta.json`` records of them (``grid``, ``views``, the geometry)."""

    encoder: Encoder
    record: dict
    split: str = "train"

    def settings(self, ss: ShardSet, opts: CacheOptions, plan: dict) -> dict:
        """The cache settings' ``crops``: the record and the tiles' arrays, chunks of about
        ``chunk_size`` tiles."""
        if self.split not in plan:
            raise WsmlError(
                f"--crops embeds the tiles of split {self.split}: include it in --splits"
            )
        views = int(self.record["views"])
        tiles = create_cache_plan(ss, [self.split], max(1, opts.chunk_size // views))
        return {
            **self.record,
            "splits": {s: {**p, "dim": self.encoder.dim} for s, p in tiles.items()},
        }

    def options(self, opts: CacheOptions) -> CacheOptions:
        """About ``batch_size`` tiles per forward."""
        views = int(self.record["views"])
        return dataclasses.replace(opts, batch_size=max(1, opts.batch_size // views))


def parse_crops(text: str) -> int:
    """``gridG`` -> G (1..99)."""
    m = GRID_RE.match(text or "")
    if not m:
        raise WsmlError(f"--crops takes gridG, a grid of G x G tiles (AEVLP: grid4), got {text!r}")
    return int(m.group(1))


def create_crops(encoder: Encoder, grid: int) -> Crops:
    """The training split's G x G tiles through ``encoder`` as the cache writer's second pass."""
    if encoder.kind != "clip":
        raise WsmlError("--crops embeds tiles with a CLIP model (cache-clip)")
    views, dim, encode = grid * grid, encoder.dim, encoder.encode
    preset = tiles_preset(encoder.preset, grid)

    def encode_tiles(images: torch.Tensor) -> torch.Tensor:  # (N, 3, S, G^2 S) -> (N, G^2 D)
        return encode(split_tiles(images, views)).reshape(len(images), views * dim)

    tiles = dataclasses.replace(
        encoder, tag=f"{encoder.tag} crops", preset=preset, dim=views * dim,
        encode=encode_tiles, text=None,
    )  # fmt: skip
    record = {
        "grid": grid,
        "views": views,
        "overlap": OVERLAP,
        "geometry": (
            f"tile (r, c), row-major, of an H x W image: rows [r (H // {grid}), (r + 1) "
            f"(H // {grid})), columns [c (W // {grid}), (c + 1) (W // {grid})) (AEVLP "
            "datasets.py); each then preprocessed as the whole image"
        ),
        "preprocess": preset.summary,
        "layout": f"row n = the {views} tiles' embeddings of image n, tile-major ({views} x dim)",
    }
    return Crops(tiles, record)
