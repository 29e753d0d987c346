"""A method made in one call, as the tests make them: resolved, its regime checked, created."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from train.methods import Method, get_method


def create_method(
    name: str,
    *,
    num_rows: int,
    num_classes: int,
    dataset: str | None = None,
    regime: str | None = None,
    overrides: Mapping[str, str] | None = None,
    observed: Tensor | None = None,
    text_embeddings: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Method:
    """Resolve, check the regime and create in one call (what a run does before any work)."""
    info = get_method(name)
    config = info.create_config(dataset, overrides)
    if regime is not None:
        info.check_regime(regime)
    return info.create(
        num_rows,
        num_classes,
        config,
        observed=observed,
        text_embeddings=text_embeddings,
        generator=generator,
    )
