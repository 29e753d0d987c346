"""Cole et al., CVPR 2021, "Multi-Label Learning from Single Positive Labels" (METHODS.md §1):
BCE and BCE-LS on full labels, AN, AN-LS, WAN, and the IUN, IU and PR baselines (EPR and ROLE,
from the same paper, are in train/methods/role.py).

Every loss is Cole's: p = sigmoid(z), logs are -log(x + 1e-5), the entry matrix is averaged over
all N x L entries (zeros included) and the regulariser, if any, is added (§0.4). Observed
negatives (the partial regime; Cole's single positives have none) get -log(1 - p + eps), a
certain negative, in every loss that does not define them otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from shards.base.options import BELOW_ONE
from train.methods import (
    Method,
    MethodConfig,
    MethodInfo,
    neg_log,
    observed_masks,
    register_method,
)

COLE = "Cole et al., CVPR 2021, Multi-Label Learning from Single Positive Labels"
SOURCE = (
    "Cole train.py (METHODS.md §1.1, §1.3): end-to-end 10 epochs, Adam, constant lr; Cole chose "
    "(lr, batch) per run from {1e-2..1e-5} x {8, 16}, so lr 1e-5 / batch 8 is this library's "
    "pick; expected_num_pos k from train.py:L235-240; ls_coef 0.1; ROLE estimator lr x10"
)
EXPECTED_POSITIVES = {"voc": 1.5, "coco": 2.9, "nus": 1.9, "cub": 31.4}  # Cole train.py:L235-240
K_DEFAULTS = {fam: {"expected_positives": k} for fam, k in EXPECTED_POSITIVES.items()}
SP = ("single-positive", "partial")


@dataclass(frozen=True)
class ColeConfig(MethodConfig):
    pass


@dataclass(frozen=True)
class SmoothConfig(MethodConfig):
    ls_coef: float = 0.1  # label smoothing c

    RANGES: ClassVar = {"ls_coef": BELOW_ONE}


@dataclass(frozen=True)
class IunConfig(MethodConfig):
    released: bool = False  # True: Cole's release, which never adds the negative term


def smoothed(p: Tensor, target: Tensor, c: float) -> Tensor:
    """Label-smoothed BCE entries for a boolean target."""
    t = target.float()
    pos = (1 - c) * neg_log(p) + c * neg_log(1 - p)
    neg = (1 - c) * neg_log(1 - p) + c * neg_log(p)
    return t * pos + (1 - t) * neg


class ColeLoss(Method):
    """mean over entries of ``entries(...)`` plus ``regulariser(p)``."""

    def entries(self, p: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def regulariser(self, p: Tensor, batch: Mapping[str, Tensor]) -> Tensor | None:
        return None

    def compute(self, logits, batch, *, epoch, step):
        p = torch.sigmoid(logits)
        loss = self.reduce(self.entries(p, batch))
        reg = self.regulariser(p, batch)
        if reg is None:
            return {"loss": loss}
        return {"loss": loss + reg, "reg": reg}


def full_target(batch: Mapping[str, Tensor], like: Tensor) -> Tensor:
    return batch["full"].to(like.device) == 1


class Bce(ColeLoss):
    """Full-label BCE, the upper bound: trains on batch["full"]."""

    def entries(self, p, batch):
        t = full_target(batch, p).float()
        return t * neg_log(p) + (1 - t) * neg_log(1 - p)


class BceLs(ColeLoss):
    """Full-label BCE with label smoothing c."""

    def entries(self, p, batch):
        return smoothed(p, full_target(batch, p), self.config.ls_coef)


class AssumeNegative(ColeLoss):
    """AN: every entry not observed positive is a negative."""

    def entries(self, p, batch):
        pos = observed_masks(batch, p)[0].float()
        return pos * neg_log(p) + (1 - pos) * neg_log(1 - p)


class AssumeNegativeLs(ColeLoss):
    """AN-LS (LSAN): AN with label smoothing c on every entry."""

    def entries(self, p, batch):
        return smoothed(p, observed_masks(batch, p)[0], self.config.ls_coef)


class WeakAssumeNegative(ColeLoss):
    """WAN: assumed negatives weighted 1 / (L - 1)."""

    def entries(self, p, batch):
        pos, unk, neg = (m.float() for m in observed_masks(batch, p))
        weak = unk / (self.num_classes - 1)
        return pos * neg_log(p) + (weak + neg) * neg_log(1 - p)


def observed_terms(p: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """-log p on observed positives, -log(1 - p) on observed negatives, 0 on unknowns."""
    pos, _, neg = (m.float() for m in observed_masks(batch, p))
    return pos * neg_log(p) + neg * neg_log(1 - p)


class Iun(ColeLoss):
    """IUN: observed positives and every true negative (an oracle baseline that reads the full
    labels). The paper's loss; Cole's release compares the 0/1 true labels with -1 and so never
    adds a negative term (METHODS.md §12.1, fixed by Zhou); ``released=True`` reproduces that."""

    def entries(self, p, batch):
        pos = observed_masks(batch, p)[0].float()
        out = pos * neg_log(p)
        if self.config.released:
            return out
        negative = (~full_target(batch, p)).float() * (1 - pos)
        return out + negative * neg_log(1 - p)


class Iu(ColeLoss):
    """IU: observed positives and observed negatives only; unknowns are ignored."""

    def entries(self, p, batch):
        return observed_terms(p, batch)


class PairwiseRanking(ColeLoss):
    """PR: for each observed positive i of image n, sum over entries j not observed positive of
    max(0, 1 - p_ni + p_nj), stored at (n, i)."""

    def entries(self, p, batch):
        pos = observed_masks(batch, p)[0]
        n, i = pos.nonzero(as_tuple=True)
        others = (~pos[n]).float()  # (P, L)
        hinge = (1 - p[n, i].unsqueeze(1) + p[n]).clamp(min=0) * others
        return torch.zeros_like(p).index_put((n, i), hinge.sum(1))


def create_cole_info(
    name, summary, regimes, config, method_class, defaults=None, **flags
) -> MethodInfo:
    return MethodInfo(
        name=name,
        paper=COLE,
        summary=summary,
        regimes=regimes,
        config=config,
        method_class=method_class,
        defaults=defaults or {},
        defaults_source=SOURCE,
        **flags,
    )


for _entry in (
    create_cole_info(
        "bce",
        "BCE on the full clean labels (upper bound)",
        ("full",),
        ColeConfig,
        Bce,
        needs_full=True,
        instead="On a view's observed labels, iu (BCE on the observed entries) and an (unknown "
        "entries as negatives) train BCE; where no entry is unknown (a noisy view) both are BCE",
    ),
    create_cole_info(
        "bce-ls",
        "BCE with label smoothing on full labels",
        ("full",),
        SmoothConfig,
        BceLs,
        needs_full=True,
        instead="On a view's observed labels, an-ls trains BCE with label smoothing (unknown "
        "entries as negatives); where no entry is unknown (a noisy view) it is bce-ls",
    ),
    create_cole_info(
        "an", "assume negative: unknowns are negatives", SP, ColeConfig, AssumeNegative
    ),
    create_cole_info(
        "an-ls", "assume negative + label smoothing", SP, SmoothConfig, AssumeNegativeLs
    ),
    create_cole_info(
        "wan", "weak assume negative: 1/(L-1) weight", SP, ColeConfig, WeakAssumeNegative
    ),
    create_cole_info(
        "iun",
        "observed positives + all true negatives (oracle)",
        SP,
        IunConfig,
        Iun,
        needs_full=True,
    ),
    create_cole_info("iu", "observed positives and negatives only", ("partial",), ColeConfig, Iu),
    create_cole_info("pr", "pairwise ranking hinge", SP, ColeConfig, PairwiseRanking),
):
    register_method(_entry)
