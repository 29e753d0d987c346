"""Several seeds in one command (``train --seeds 0,1,2``): one run folder per seed, named
``<out>-s<seed>``, trained one after another. The report and the leaderboard group them."""

from __future__ import annotations

import dataclasses

from shards.errors import WsmlError
from shards.options import SEED
from train.config import RunConfig


def parse_seeds(text: str | None) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); distinct non-negative integers."""
    if text is None:
        return ()
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise WsmlError(
            f"--seeds takes comma-separated integers like 0,1,2, got {text!r}"
        ) from None
    if not seeds or any(s not in SEED for s in seeds) or len(set(seeds)) != len(seeds):
        raise WsmlError(f"--seeds takes distinct integers {SEED} like 0,1,2, got {text!r}")
    return seeds


def create_seed_configs(config: RunConfig, seeds: tuple[int, ...]) -> list[RunConfig]:
    """One config per seed, each with its own run folder ``<run_dir>-s<seed>``."""
    base = config.out or f"runs/{config.method}-{config.setting}"
    return [dataclasses.replace(config, seed=s, out=f"{base}-s{s}") for s in seeds]
