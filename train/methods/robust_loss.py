"""Zhang et al., arXiv 2112.07368, "Simple and Robust Loss Design for Multi-Label Learning with
Missing Labels" (METHODS.md §10): Hill and SPLC. Both are sums over the batch, unknowns count as
negatives until corrected.

Hill: positives -(1 - sigmoid(z - m))^gamma log sigmoid(z - m); all other entries
(lambda - p) p^2 with p = sigmoid(z) (lambda 1.5, m 1, gamma 2).
Hill's ``-o reduction=mean`` averages over the batch's N x L entries instead (the reference
value some papers report; the release sums).
SPLC: z' = z - m on observed positives, z elsewhere; once ``change_epoch`` epochs have passed
(the release counts epochs from 0 and corrects when epoch >= change_epoch, i.e. from the second
epoch with change_epoch 1), an unknown entry with sigmoid(z') > tau counts as positive for that
batch (no margin on it; not stored); then a focal loss with gamma 2 whose weights keep their
gradient: -sum pt^gamma [y' log sigmoid(z') + (1 - y') log sigmoid(-z')],
pt = (1 - p) y' + p (1 - y'). Observed negatives (partial regime) are never corrected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from shards.base.errors import WsmlError
from shards.base.options import NON_NEGATIVE, UNIT_OPEN
from train.methods import Method, MethodInfo, observed_masks, register_method
from train.methods.asl import AslProtocol

ZHANG = (
    "Zhang et al., arXiv 2112.07368, Simple and Robust Loss Design for Multi-Label Learning "
    "with Missing Labels"
)
SOURCE = (
    "robust-loss-mlml train.py (METHODS.md §10): Adam lr 1e-4, true weight decay 1e-4, batch "
    "128, OneCycle over 80 epochs (pct_start 0.2) stopped after 30, EMA 0.9997; Hill lambda 1.5, "
    "margin 1, gamma 2; SPLC tau 0.6 (0.65 for COCO with 75% labels left), change_epoch 1 "
    "(HSPNet's SPLC: COCO 1, VOC 2, NUS 3, CUB 1)"
)


@dataclass(frozen=True)
class AslSkeletonConfig(AslProtocol):
    epochs: int = 30
    margin: float = 1.0
    gamma: float = 2.0

    RANGES: ClassVar = {"margin": NON_NEGATIVE, "gamma": NON_NEGATIVE}


@dataclass(frozen=True)
class HillConfig(AslSkeletonConfig):
    lamb: float = 1.5
    reduction: str = "sum"  # or mean: over the batch's N x L entries

    def check(self) -> None:
        super().check()
        if self.reduction not in ("sum", "mean"):
            raise WsmlError(f"reduction must be sum or mean, got {self.reduction!r}")

    RANGES: ClassVar = {"lamb": NON_NEGATIVE}


@dataclass(frozen=True)
class SplcConfig(AslSkeletonConfig):
    tau: float = 0.6
    change_epoch: int = 1  # corrections start after this many epochs

    RANGES: ClassVar = {"tau": UNIT_OPEN, "change_epoch": NON_NEGATIVE}


class Hill(Method):
    def compute(self, logits, batch, *, epoch, step):
        cfg = self.config
        pos = observed_masks(batch, logits)[0].float()
        shifted = logits - cfg.margin
        positive = -((1 - torch.sigmoid(shifted)) ** cfg.gamma) * F.logsigmoid(shifted)
        p = torch.sigmoid(logits)
        negative = (cfg.lamb - p) * p**2
        return {"loss": self.reduce(pos * positive + (1 - pos) * negative, cfg.reduction)}


class Splc(Method):
    label_changes = {"corrected": 1}

    def compute(self, logits, batch, *, epoch, step):
        cfg = self.config
        pos, unk, _ = observed_masks(batch, logits)
        z = torch.where(pos, logits - cfg.margin, logits)
        p = torch.sigmoid(z)
        target = pos
        if epoch > cfg.change_epoch:
            target = pos | (unk & (p.detach() > cfg.tau))
            self.note_labels("corrected", target & ~pos)
        y = target.float()
        pt = (1 - p) * y + p * (1 - y)
        terms = y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)
        loss = -self.reduce(pt**cfg.gamma * terms, "sum")
        return {"loss": loss, "corrected": self.reduce((target & ~pos).float(), "sum")}


for _entry in (
    MethodInfo(
        name="hill",
        paper=ZHANG,
        summary="Hill loss: focal-margin positives, hill-shaped weight on negatives",
        regimes=("single-positive", "partial"),
        config=HillConfig,
        method_class=Hill,
        defaults_source=SOURCE,
    ),
    MethodInfo(
        name="splc",
        paper=ZHANG,
        summary="self-paced loss correction: confident unknowns become positives per batch",
        regimes=("single-positive", "partial"),
        config=SplcConfig,
        method_class=Splc,
        defaults_source=SOURCE,
    ),
):
    register_method(_entry)
