"""GR-Loss: Chen et al., IJCAI 2024, "Boosting Single Positive Multi-label Classification with
Generalized Robust Loss" (official code yan4xi1/GRLoss, a fork of Cole et al.'s; METHODS.md §16).

With p = sigmoid(z) and two weights of the detached predictions, K(p) = sigmoid(w p + b) and
V(p) = exp(-(p - mu)^2 / (2 sigma^2)): observed positives -log(p + 1e-7); every unknown entry
V (K (1 - p^q2) / q2 + (1 - K) (1 - (1 - p)^q3) / q3), a mix of two generalized cross-entropies
(K says how positive the entry looks, V damps the confident ends); the mean over N x L entries.
Observed negatives (partial regime) get -log(1 - p + 1e-7), a certain negative, as in the
other Cole-lineage losses here (the release gives them zero loss; its datasets have none).

Schedules over the run's T epochs, epochs from 1, ``linear_init`` n: w and b move linearly from
their start to their end value with max(e - n - 1, 0) / (T - n), mu and sigma with
max(e - n, 0) / (T - n). The one-epoch offset between the pairs is the release's (the paper is
silent): w and b are still at their start in epoch n + 1, and never reach their end value.

Not reproduced: the release's optional learnable label estimator (``is_train``, off by default)
and its backbone freeze during the ``linear_init`` epochs (wsml's loop has no mid-run freeze;
the linear setting is the frozen-feature case): here ``linear_init`` only shifts the schedules.
The release's ``--beta``/``--alpha``/``--q2q3`` are ``type=list`` and can only be changed in
code; here they are ``-o beta=w0,wT,b0,bT``, ``-o alpha=mu0,sigma0,muT,sigmaT``, ``-o q=q2,q3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from shards.base.errors import WsmlError
from shards.base.options import EPOCHS, FINITE, POSITIVE, Range
from train.methods import Method, MethodConfig, MethodInfo, observed_masks, register_method

GR_LOSS = (
    "Chen et al., IJCAI 2024, Boosting Single Positive Multi-label Classification with "
    "Generalized Robust Loss"
)
SOURCE = (
    "GRLoss config.py, train.py (METHODS.md §16): 8 epochs, Adam lr 1e-5, head lr x10 "
    "(lr_mult), batch 8, stop when val mAP falls more than 2 below the best; beta 0,2,-2,-2, "
    "alpha 0.5,2,0.8,0.5, q2q3 0.01,1, linear_init 0 (one setting for every dataset)"
)
GR_EPSILON = 1e-7  # the release's LOG_EPSILON (Cole's is 1e-5)


def gr_neg_log(x: Tensor) -> Tensor:
    return -torch.log(x + GR_EPSILON)


@dataclass(frozen=True)
class GrConfig(MethodConfig):
    """beta = (w0, wT, b0, bT) of K, alpha = (mu0, sigma0, muT, sigmaT) of V, q = (q2, q3) of
    the two generalized cross-entropies; ``linear_init`` epochs before the schedules start."""

    epochs: int = 8
    head_lr_mult: float = 10.0
    stop_drop: float = 2.0
    beta: tuple[float, ...] = (0.0, 2.0, -2.0, -2.0)
    alpha: tuple[float, ...] = (0.5, 2.0, 0.8, 0.5)
    q: tuple[float, ...] = (0.01, 1.0)
    linear_init: int = 0

    RANGES: ClassVar = {
        "beta": FINITE,
        "alpha": FINITE,  # the sigmas are checked positive below
        "q": POSITIVE,
        "linear_init": Range(0, EPOCHS.hi),
    }

    def check(self) -> None:
        super().check()
        if len(self.beta) != 4 or len(self.alpha) != 4 or len(self.q) != 2:
            raise WsmlError(
                "beta takes w0,wT,b0,bT, alpha mu0,sigma0,muT,sigmaT and q q2,q3; got "
                f"beta={self.beta}, alpha={self.alpha}, q={self.q}"
            )
        if not all(v > 0 for v in (*self.q, self.alpha[1], self.alpha[3])):
            raise WsmlError(f"q2, q3 and both sigmas must be positive, got {self}")
        if not 0 <= self.linear_init < self.epochs:
            raise WsmlError(
                f"linear_init must be in [0, epochs), got {self.linear_init} of {self.epochs}"
            )


@dataclass(frozen=True)
class Weights:
    """K's (w, b) and V's (mu, sigma) for one epoch."""

    w: float
    b: float
    mu: float
    sigma: float


def epoch_weights(cfg: GrConfig, epoch: int) -> Weights:
    """The schedules at ``epoch`` (from 1) of a run of ``cfg.epochs``: K's pair lags V's by one
    epoch, as in the release."""
    n, span = cfg.linear_init, cfg.epochs - cfg.linear_init
    w0, wt, b0, bt = cfg.beta
    mu0, s0, mut, st = cfg.alpha
    late, early = max(epoch - n - 1, 0) / span, max(epoch - n, 0) / span
    return Weights(
        w0 + (wt - w0) * late,
        b0 + (bt - b0) * late,
        mu0 + (mut - mu0) * early,
        s0 + (st - s0) * early,
    )


def k_and_v(p: Tensor, weights: Weights) -> tuple[Tensor, Tensor]:
    """K(p) = sigmoid(w p + b) and V(p) = exp(-((p - mu) / sigma)^2 / 2) of the detached
    predictions (both carry no gradient)."""
    d = p.detach()
    k = torch.sigmoid(weights.w * d + weights.b)
    v = torch.exp(-0.5 * ((d - weights.mu) / weights.sigma) ** 2)
    return k, v


def robust_terms(p: Tensor, k: Tensor, v: Tensor, q: tuple[float, ...]) -> Tensor:
    """V (K (1 - p^q2) / q2 + (1 - K) (1 - (1 - p)^q3) / q3) per entry."""
    q2, q3 = q
    return v * (k * (1 - p.pow(q2)) / q2 + (1 - k) * (1 - (1 - p).pow(q3)) / q3)


class GeneralizedRobust(Method):
    def compute(self, logits, batch, *, epoch, step):
        cfg = self.config
        p = torch.sigmoid(logits)
        pos, unk, neg = (m.float() for m in observed_masks(batch, p))
        k, v = k_and_v(p, epoch_weights(cfg, epoch))
        terms = pos * gr_neg_log(p) + neg * gr_neg_log(1 - p) + unk * robust_terms(p, k, v, cfg.q)
        return {"loss": self.reduce(terms)}


register_method(
    MethodInfo(
        name="gr-loss",
        paper=GR_LOSS,
        summary="generalized robust loss: scheduled K/V weights mix two GCE losses on unknowns",
        regimes=("single-positive", "partial"),
        config=GrConfig,
        method_class=GeneralizedRobust,
        defaults_source=SOURCE,
        release_notes="not reproduced: the learnable label estimator (is_train, off by "
        "default) and the backbone freeze of the linear_init epochs (here: schedules only)",
    )
)
