"""Ridnik, Ben-Baruch et al., ICCV 2021, "Asymmetric Loss for Multi-Label Classification"
(METHODS.md §9), applied to single-positive or partial labels with unknowns as negatives (as in
Zhou et al.'s SPML comparison).

p = sigmoid(z), p_m = min(1 - p + clip, 1) (probability shifting for negatives);
loss = -sum over the batch of [y log max(p, eps) (1 - p)^gamma_pos
                              + (1 - y) log max(p_m, eps) (1 - p_m)^gamma_neg]
(a sum, not a mean); the focusing weights carry no gradient, as with the release's
``disable_torch_grad_focal_loss=True`` (``focal_grad=True`` keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from shards.base.options import BELOW_ONE, NON_NEGATIVE, UNIT_OPEN
from train.methods import Method, MethodConfig, MethodInfo, observed_masks, register_method

ASL = "Ridnik, Ben-Baruch et al., ICCV 2021, Asymmetric Loss for Multi-Label Classification"
SOURCE = (
    "ASL train.py (METHODS.md §9): Adam lr 1e-4, true weight decay 1e-4, batch 128, OneCycle "
    "over 80 epochs (pct_start 0.2) stopped after 40, EMA 0.9997; gamma_neg 4, gamma_pos 0, "
    "clip 0.05. Zhou's SPML re-implementation's settings are not published"
)


@dataclass(frozen=True)
class AslProtocol(MethodConfig):
    """The training protocol of ASL's code base, which Zhang et al.'s Hill/SPLC code keeps."""

    lr: float = 1e-4
    batch_size: int = 128
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    schedule_epochs: int = 80
    ema: float = 0.9997


@dataclass(frozen=True)
class AslConfig(AslProtocol):
    epochs: int = 40
    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    eps: float = 1e-8
    focal_grad: bool = False

    RANGES: ClassVar = {
        "gamma_neg": NON_NEGATIVE,
        "gamma_pos": NON_NEGATIVE,
        "clip": BELOW_ONE,
        "eps": UNIT_OPEN,
    }


class AsymmetricLoss(Method):
    def compute(self, logits, batch, *, epoch, step):
        cfg = self.config
        y = observed_masks(batch, logits)[0].float()
        p = torch.sigmoid(logits)
        p_m = (1 - p + cfg.clip).clamp(max=1) if cfg.clip > 0 else 1 - p
        terms = y * torch.log(p.clamp(min=cfg.eps)) + (1 - y) * torch.log(p_m.clamp(min=cfg.eps))
        if cfg.gamma_neg > 0 or cfg.gamma_pos > 0:
            with torch.set_grad_enabled(cfg.focal_grad and torch.is_grad_enabled()):
                pt = p * y + p_m * (1 - y)
                weight = (1 - pt) ** (cfg.gamma_pos * y + cfg.gamma_neg * (1 - y))
            terms = terms * weight
        return {"loss": -self.reduce(terms, "sum")}


register_method(
    MethodInfo(
        name="asl",
        paper=ASL,
        summary="asymmetric focusing and probability shifting; unknowns as negatives",
        regimes=("single-positive", "partial"),
        config=AslConfig,
        method_class=AsymmetricLoss,
        defaults_source=SOURCE,
    )
)
