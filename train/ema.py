"""An exponential moving average of a model's weights, stepped after every optimiser step."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class Ema:
    """Model EMA (timm's ModelEmaV2, as in the ASL skeleton): after each optimiser step every
    floating-point entry of the state moves to the model's by ``1 - decay``; others are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = list(
            zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        )

    @torch.no_grad()
    def update(self) -> None:
        floats = [(e, m) for e, m in self._pairs if e.is_floating_point()]
        if floats:
            ema, model = zip(*floats, strict=True)
            torch._foreach_lerp_(list(ema), list(model), 1.0 - self.decay)
        for e, m in self._pairs:
            if not e.is_floating_point():
                e.copy_(m)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)
