"""Yuan, Zhang, Huang, ICME 2024, "Positive Label Is All You Need for Multi-Label
Classification" (PU-MLC, METHODS.md §7): positive-unlabeled learning per class, with every
negative label ignored, and a mixup regulariser; its own network (models/lgc.py).

Variational PU loss on logits z (N, L), positives P_c = {n : t_nc = 1}, the whole batch as the
unlabeled set (``vpu_loss``):

    tau_c = min(alpha * std_n(z_nc), 1)        population std over the batch, no gradient
    s_nc = sigmoid(z_nc / tau_c)
    w_c = (mean_n s_nc)^gamma                  no gradient
    loss = sum_c w_c log(mean_n s_nc + 1e-10) - sum_c 1/|P_c| sum_{n in P_c} log(s_nc + 2e-10)

A class without positives in the batch has no positive term. Mixup regulariser
(``mixup_regularizer``), with h = floor(N/2): soft targets q = 1 on positives, sigmoid(z) (not
detached) elsewhere; x1, q1 = the first h samples permuted together, x2, q2 = the last h;
lambda ~ Beta(mix_alpha, mix_alpha); z_mix = f(lambda x1 + (1 - lambda) x2);

    reg = 1/h sum_{n,c} (log(lambda q1 + (1 - lambda) q2 + 1e-10) - log(sigmoid(z_mix) + 1e-10))^2

and the training loss is vpu + reg. ``forward`` is the vpu loss alone; ``training_step`` runs
the model once on [x, x_mix] (one DDP call; BatchNorm is frozen, so the concatenation changes
nothing) and adds reg.

Choices and deviations from the release (TAKELAMAG/PU-MLC, ``vpu_loss.py``):
- its positive term also adds log(1 + 1e-10)/|P_c| for every non-positive entry of a class with
  positives, its unlabeled term reads log(mean_n (s_nc + 1e-10) + 1e-10) and its soft mixup
  targets sigmoid(z) + 1e-10: terms of order 1e-10, left out here (the formulas above);
- tau_c is floored at 1e-6 (a batch whose logits of a class are all equal, or N = 1, would
  divide by zero in the release); with N = 1 there is no mixup (the release fails there);
- lambda and the permutation come from a generator seeded by (the run's seed, global step), the
  same on every rank: resume stays exact and a DDP step is the mean of per-rank steps with one
  draw. Under DDP each rank computes the loss over its own samples, as the release does (35 per
  GPU), so its batch statistics (tau, w) are per rank;
- the release trains epochs 0..Stop_epoch (Stop_epoch + 1 epochs); ``epochs`` here is Stop_epoch;
- weight decay (L2, 1e-4) applies to weights only; the release decays every trainable
  parameter (biases and BatchNorm affine parameters too). The epoch is selected on validation,
  the release's on test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from shards.base.options import NON_NEGATIVE, POSITIVE
from train.methods import Method, MethodInfo, ModelSpec, register_method
from train.methods.asl import AslProtocol

PUMLC = (
    "Yuan, Zhang, Huang, ICME 2024, Positive Label Is All You Need for Multi-Label Classification"
)
SOURCE = (
    "PU-MLC README and train.py (METHODS.md §7.3): Adam with L2 weight decay 1e-4, OneCycle "
    "over 80 epochs (pct_start 0.2); COCO lr 1e-4, batch 35 x 2 GPUs, EMA 0.9997, Stop_epoch "
    "40, alpha 1.0, gamma 0.55; VOC2007 lr 4e-5, batch 45 x 2, EMA 0.991, Stop_epoch 55, alpha "
    "2.0, gamma 0.85; mix_alpha 0.3. NUS-WIDE and CUB have no published settings: COCO's apply"
)
TAU_MIN = 1e-6  # floor of the adaptive temperature (a constant class would divide by zero)
LOG_EPS = 1e-10


@dataclass(frozen=True)
class PuMlcConfig(AslProtocol):
    lr: float = 1e-4
    batch_size: int = 70
    epochs: int = 40
    ema: float = 0.9997
    alpha: float = 1.0  # tau_c = min(alpha * std, 1)
    gamma: float = 0.55  # w_c = mean(s)^gamma
    mix_alpha: float = 0.3  # lambda ~ Beta(mix_alpha, mix_alpha); 0 turns the regulariser off

    RANGES: ClassVar = {"alpha": POSITIVE, "gamma": NON_NEGATIVE, "mix_alpha": NON_NEGATIVE}


def pu_weights(logits: Tensor, alpha: float, gamma: float) -> tuple[Tensor, Tensor]:
    """(tau, w), each (L,) and without gradient: the adaptive temperature
    min(alpha * std_n(z), 1) (population std, floored at TAU_MIN) and the re-balance factor
    (mean_n sigmoid(z / tau))^gamma."""
    with torch.no_grad():
        tau = (alpha * logits.std(0, correction=0)).clamp(min=TAU_MIN, max=1.0)
        return tau, torch.sigmoid(logits / tau).mean(0) ** gamma


def vpu_loss(logits: Tensor, observed: Tensor, alpha: float, gamma: float) -> Tensor:
    """The variational PU loss (module docstring) of logits (N, L) and observed labels (N, L)
    (1 positive; 0 and -1 alike unlabeled)."""
    tau, w = pu_weights(logits, alpha, gamma)
    s = torch.sigmoid(logits / tau)  # (N, L)
    unlabeled = (w * torch.log(s.mean(0) + LOG_EPS)).sum()
    pos = (observed == 1).to(s.dtype)
    positive = (pos * torch.log(s + 2 * LOG_EPS)).sum(0) / pos.sum(0).clamp(min=1)
    return unlabeled - positive.sum()


def mixup_regularizer(
    logits: Tensor, mixed: Tensor, observed: Tensor, lam: float, perm: Tensor
) -> Tensor:
    """reg of the module docstring: ``logits`` (N, L) of the batch, ``mixed`` (h, L) of
    lam * x[:h][perm] + (1 - lam) * x[N - h:], h = len(perm)."""
    h, n = len(perm), len(logits)
    soft = torch.where(observed == 1, 1.0, torch.sigmoid(logits))  # (N, L), keeps its gradient
    target = lam * soft[:h][perm] + (1 - lam) * soft[n - h :]
    diff = torch.log(target + LOG_EPS) - torch.log(torch.sigmoid(mixed) + LOG_EPS)
    return diff.pow(2).sum() / h


def mixup_inputs(x: Tensor, lam: float, perm: Tensor) -> Tensor:
    """lam * x[:h][perm] + (1 - lam) * x[N - h:] for h = len(perm)."""
    h = len(perm)
    return lam * x[:h][perm] + (1 - lam) * x[len(x) - h :]


class PuMlc(Method):
    stackable = False  # batch statistics over the whole batch; end to end only

    def __init__(self, info, config, num_rows, num_classes, *, generator=None, **kwargs):
        super().__init__(info, config, num_rows, num_classes, generator=generator, **kwargs)
        # the mixup draws of step s come from (mix_seed, s) alone; mix_seed from the run's seed
        given = generator is not None
        self.mix_seed = int(torch.randint(2**62, (1,), generator=generator)) if given else 0

    def compute(self, logits, batch, *, epoch, step):
        observed = batch["observed"].to(logits.device)
        return {"loss": vpu_loss(logits, observed, self.config.alpha, self.config.gamma)}

    def mixup_draw(self, step: int, half: int) -> tuple[float, Tensor]:
        """(lambda, permutation of ``half``) for global step ``step``, the same on every rank."""
        rng = np.random.default_rng([self.mix_seed, step])
        lam = float(rng.beta(self.config.mix_alpha, self.config.mix_alpha))
        return lam, torch.from_numpy(rng.permutation(half))

    def training_step(self, net, batch: Mapping[str, Tensor], *, epoch, step, autocast):
        x = batch["input"]
        half = len(x) // 2
        if half == 0 or self.config.mix_alpha == 0:
            out = super().training_step(net, batch, epoch=epoch, step=step, autocast=autocast)
            return {
                **out,
                "vpu": out["loss"].detach(),
                "mixup": torch.zeros_like(out["loss"]).detach(),
            }
        lam, perm = self.mixup_draw(step, half)
        perm = perm.to(x.device)
        with autocast():
            both = net(torch.cat([x, mixup_inputs(x, lam, perm)]))  # one (DDP) forward
        logits, mixed = both[: len(x)].float(), both[len(x) :].float()
        out = self(logits, batch, epoch=epoch, step=step)
        reg = mixup_regularizer(logits, mixed, batch["observed"].to(x.device), lam, perm)
        loss = out["loss"] + reg
        self.check_finite(loss, mixed, epoch=epoch, step=step)
        return {"loss": loss, "vpu": out["loss"].detach(), "mixup": reg.detach()}


def create_pumlc_model(spec: ModelSpec):
    from models.lgc import create_lgc_net

    return create_lgc_net(spec.backbone, len(spec.classes), spec.weights)


register_method(
    MethodInfo(
        name="pu-mlc",
        paper=PUMLC,
        summary="variational PU loss on positives only (negatives ignored) + mixup; LGC ResNet",
        regimes=("partial", "single-positive"),
        config=PuMlcConfig,
        method_class=PuMlc,
        defaults={
            "voc": {
                "lr": 4e-5,
                "batch_size": 90,
                "epochs": 55,
                "ema": 0.991,
                "alpha": 2.0,
                "gamma": 0.85,
            },
        },
        defaults_source=SOURCE,
        settings=("e2e",),
        create_model=create_pumlc_model,
        run_defaults={"backbone": "resnet101", "preset": "asl448"},
    )
)
