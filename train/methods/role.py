"""Cole et al., CVPR 2021, "Multi-Label Learning from Single Positive Labels" (METHODS.md §1):
EPR (observed positives plus the expected-positive regulariser) and ROLE (regularised online
label estimation: a trainable per-image label estimator). Losses as in
train/methods/assume_negative.py (Cole's conventions, §0.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from pipelines.distributed import get_world_size
from shards.base.errors import WsmlError
from shards.base.options import POSITIVE
from train.methods import Method, MethodConfig, expected_positive_reg, neg_log, register_method
from train.methods.assume_negative import (
    EXPECTED_POSITIVES,
    K_DEFAULTS,
    SP,
    ColeLoss,
    create_cole_info,
    observed_terms,
)


@dataclass(frozen=True)
class EprConfig(MethodConfig):
    expected_positives: float | None = None  # k; Cole's value for voc/coco/nus/cub

    RANGES: ClassVar = {"expected_positives": POSITIVE}


@dataclass(frozen=True)
class RoleConfig(EprConfig):
    estimator_lr_mult: float = 10.0  # Cole train.py: estimator lr = lr x lr_mult
    memory_budget_gb: float = 8.0  # the most the estimator may take (see Role.check_size)

    RANGES: ClassVar = {"estimator_lr_mult": POSITIVE, "memory_budget_gb": POSITIVE}


ESTIMATOR_BYTES = 16  # per entry: float32 logits, their gradient and Adam's two moments


def expected_positives(method: Method) -> float:
    k = method.config.expected_positives
    if k is None:
        raise WsmlError(
            f"method {method.name} needs the expected number of positives per image for this "
            f"dataset; pass -o expected_positives=K (Cole: {EXPECTED_POSITIVES})"
        )
    return float(k)


class ExpectedPositive(ColeLoss):
    """EPR: observed labels plus (mean_n sum_l p - k)^2 / L^2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.k = expected_positives(self)

    def entries(self, p, batch):
        return observed_terms(p, batch)

    def regulariser(self, p, batch):
        return expected_positive_reg(self.by_member(p), self.k)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class Role(ColeLoss):
    """ROLE: the classifier and a per-image label estimator q (trainable logits, one row per
    training image) teach each other; both are pulled to observed labels and to k positives."""

    uses_rows = True
    stackable = False  # a trainable estimator per member, with its own lr
    label_changes = {"estimated_positive": 1}  # unknown entries the estimator puts at >= 0.5

    def __init__(self, info, config, num_rows, num_classes, *, observed=None, generator=None, **kw):
        super().__init__(info, config, num_rows, num_classes)
        self.k = expected_positives(self)
        # Cole models.py: unknowns U(-logit 0.6, logit 0.6), positives logit(0.995), negatives
        # logit(0.005); a linear-init run loads the linear phase's estimator instead.
        a = logit(0.6)
        init = (torch.rand(num_rows, num_classes, generator=generator) * 2 - 1) * a
        obs = torch.from_numpy(observed.dense())  # dense by design: q is (rows, L) anyway
        init[obs == 1] = logit(0.995)
        init[obs == -1] = logit(0.005)
        self.estimator = nn.Parameter(init)  # (num_rows, L) logits

    @classmethod
    def check_size(cls, num_rows, num_classes, config) -> None:
        need = ESTIMATOR_BYTES * num_rows * num_classes / 1e9
        if need > config.memory_budget_gb:
            raise WsmlError(
                f"method role needs {need:.3g} GB for its label estimator: a trainable "
                f"{num_rows:,} x {num_classes:,} float32 matrix (one row per training image) with "
                f"its gradient and Adam moments, {ESTIMATOR_BYTES} bytes an entry; the budget is "
                f"{config.memory_budget_gb:g} GB (-o memory_budget_gb=GB to allow more, or a "
                "method that scales to large label spaces: see cli.py methods)"
            )

    def estimates(self, rows: Tensor) -> Tensor:
        return torch.sigmoid(self.estimator[rows.to(self.estimator.device)])

    def compute(self, logits, batch, *, epoch, step):
        # One gather of the estimator per step: each gather's backward fills a dense
        # (rows x L) gradient, ROLE's largest cost per step after Adam's dense update.
        batch = {**batch, "estimates": self.estimates(batch["row"])}
        unknown = batch["observed"].to(batch["estimates"].device) == 0
        self.note_labels("estimated_positive", unknown & (batch["estimates"].detach() >= 0.5))
        return super().compute(logits, batch, epoch=epoch, step=step)

    def entries(self, p, batch):
        q = batch["estimates"]
        pd, qd = p.detach(), q.detach()
        own = observed_terms(p, batch) + observed_terms(q, batch)
        cross = qd * neg_log(p) + (1 - qd) * neg_log(1 - p)
        cross = cross + pd * neg_log(q) + (1 - pd) * neg_log(1 - q)
        return 0.5 * own + 0.5 * cross

    def regulariser(self, p, batch):
        q = batch["estimates"]
        return 0.5 * (expected_positive_reg(p, self.k) + expected_positive_reg(q, self.k))

    def extra_parameters(self):
        mult = self.config.estimator_lr_mult
        return [
            {
                "params": [self.estimator],
                "lr_mult": mult,
                "lr": self.config.lr * mult,
                "weight_decay": 0.0,
                "name": "role-estimator",
            }
        ]

    def after_backward(self) -> None:
        # Each rank's gradient touches only its batch rows: gather those rows and average, as
        # DDP does for the model, so every rank's Adam sees the same estimator gradient.
        grad = self.estimator.grad
        world = get_world_size()
        if grad is None or world == 1:
            return
        rows = (grad != 0).any(1).nonzero().squeeze(1)
        all_rows, all_values = self.gather(rows, grad[rows])
        grad.zero_()
        grad.index_add_(0, all_rows, all_values)
        grad.div_(world)


for _entry in (
    create_cole_info(
        "epr",
        "observed positives + expected-positive regulariser",
        SP,
        EprConfig,
        ExpectedPositive,
        K_DEFAULTS,
    ),
    create_cole_info(
        "role",
        "regularised online label estimation (trainable per-image label estimator)",
        SP,
        RoleConfig,
        Role,
        K_DEFAULTS,
        needs_observed=True,
        per_sample_state=True,
        trainable_state=True,
        dense_state=True,
    ),
):
    register_method(_entry)
