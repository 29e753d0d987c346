"""Xing et al., CVPR 2024 LIMIT workshop (arXiv 2310.15985), "Vision-Language Pseudo-Labels for
Single-Positive Multi-Label Learning" (VLPL; loss EM-PL; METHODS.md §3).

Pseudo-labels come from cached CLIP embeddings, recomputed every batch (no state):
s = softmax over classes of cos(image, class text) / T (T = 0.01); an unknown entry is a pseudo-
positive when s > 0.3. Optionally the ``int(negative_fraction * L)`` classes with the smallest s
are pseudo-negatives (VLPL's ``--partial``, default 0).

Loss after ``warmup_epoch`` epochs (VLPL: 0, i.e. from the first epoch), averaged over N x L:
observed positive -log(p + eps); pseudo-positive beta_pos * [0.9(-log p) + 0.1(-log(1 - p))];
other unknowns -alpha * H(p) (Zhou's EM term); pseudo-negative beta_neg * [0.1(-log p) +
0.9(-log(1 - p))]. The release gives pseudo-negatives zero loss (its negative branch is commented
out): that is ``beta_neg = 0``, the default. During warm-up the loss is EM. Observed negatives
(partial regime) get -log(1 - p + eps); the release would give them zero loss.

``-o loss=em_pl_asl``: the release's EM_PL_ASL variant (not its default), ASL-style focusing
with weights that keep their gradient, no alpha and no beta: observed and pseudo-positives
(1 - p)^gamma_pos (-log p); other unknowns -(1 - p)^gamma_unknown H(p); pseudo-negatives
p^gamma_neg (-log(1 - p)) (gamma_pos 2, gamma_neg 4, gamma_unknown 4, main_clip.py); warm-up is
EM as above.

The release feeds CLIP the ImageNet-normalised 448 px training tensor resized to 336 px (§12.8);
here the embeddings are whatever the cache holds (CLIP's own preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from shards.base.errors import WsmlError
from shards.base.options import NON_NEGATIVE, POSITIVE, UNIT
from train.methods import (
    Method,
    MethodConfig,
    MethodInfo,
    neg_log,
    observed_masks,
    register_method,
)
from train.methods.entropy_max import entropy

VLPL = (
    "Xing et al., CVPR 2024 LIMIT workshop (arXiv 2310.15985), Vision-Language Pseudo-Labels "
    "for Single-Positive Multi-Label Learning"
)
SOURCE = (
    "VLPL main_clip.py:L299-392 (METHODS.md §3.3): batch 8, lr 1e-5 (CUB 1e-4), alpha per "
    "dataset, beta_pos 0.7, warm-up 0, T 0.01, threshold 0.3, partial 0; 10 epochs, no early "
    "stop; EM_PL_ASL's positive 2, negative 4, unknown 4"
)
LOSSES = ("em_pl", "em_pl_asl")
DEFAULTS = {
    "voc": {"lr": 1e-5, "alpha": 0.2},
    "coco": {"lr": 1e-5, "alpha": 0.1},
    "nus": {"lr": 1e-5, "alpha": 0.1},
    "cub": {"lr": 1e-4, "alpha": 0.01},
}


@dataclass(frozen=True)
class VlplConfig(MethodConfig):
    alpha: float = 0.1  # EM weight on unknowns without a pseudo-label
    beta_pos: float = 0.7
    temperature: float = 0.01
    threshold: float = 0.3
    negative_fraction: float = 0.0  # share of classes (lowest s) made pseudo-negatives
    beta_neg: float = 0.0  # 0: the release's zero loss on pseudo-negatives
    warmup_epoch: int = 0  # pseudo-labels are used when epoch > warmup_epoch
    loss: str = "em_pl"  # or em_pl_asl: the release's ASL-focused variant
    gamma_pos: float = 2.0  # em_pl_asl's focusing exponents
    gamma_neg: float = 4.0
    gamma_unknown: float = 4.0

    RANGES: ClassVar = {
        "alpha": NON_NEGATIVE,
        "beta_pos": NON_NEGATIVE,
        "temperature": POSITIVE,
        "threshold": UNIT,
        "negative_fraction": UNIT,
        "beta_neg": NON_NEGATIVE,
        "warmup_epoch": NON_NEGATIVE,
        "gamma_pos": NON_NEGATIVE,
        "gamma_neg": NON_NEGATIVE,
        "gamma_unknown": NON_NEGATIVE,
    }

    def check(self) -> None:
        super().check()
        if self.loss not in LOSSES:
            raise WsmlError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")


def pseudo_labels(
    image: Tensor, text: Tensor, temperature: float, threshold: float, negative_fraction: float
) -> Tensor:
    """int8 (N, L): 1 pseudo-positive, -1 pseudo-negative, 0 none, from image (N, D) and class
    text (L, D) embeddings."""
    sim = F.normalize(image.float(), dim=1) @ F.normalize(text.float(), dim=1).T
    s = torch.softmax(sim / temperature, dim=1)
    out = (s > threshold).to(torch.int8)
    m = int(negative_fraction * text.shape[0])
    if m:
        lowest = s.topk(m, dim=1, largest=False).indices
        neg = torch.zeros_like(out, dtype=torch.bool).scatter_(1, lowest, True) & (out == 0)
        out[neg] = -1
    return out


class EmPseudoLabel(Method):
    label_changes = {"pseudo_positive": 1, "pseudo_negative": -1}

    def __init__(self, info, config, num_rows, num_classes, *, text_embeddings=None, **kw):
        super().__init__(info, config, num_rows, num_classes)
        text = F.normalize(text_embeddings.detach().float(), dim=1)
        self.register_buffer("text", text, persistent=False)  # (L, D), an input, not state

    def compute(self, logits, batch, *, epoch, step):
        cfg = self.config
        p = torch.sigmoid(logits)
        pos, unk, neg = (m.float() for m in observed_masks(batch, p))
        known = pos * neg_log(p) + neg * neg_log(1 - p)
        em = -cfg.alpha * entropy(p)
        if epoch <= cfg.warmup_epoch:
            return {"loss": self.reduce(known + unk * em)}
        if "embedding" not in batch:
            raise WsmlError(f"method {self.name}: batches need the CLIP image 'embedding'")
        pl = pseudo_labels(
            batch["embedding"].to(p.device),
            self.text,
            cfg.temperature,
            cfg.threshold,
            cfg.negative_fraction,
        )
        ppos, pneg = unk * (pl == 1).float(), unk * (pl == -1).float()
        self.note_labels("pseudo_positive", ppos > 0)
        self.note_labels("pseudo_negative", pneg > 0)
        rest = unk - ppos - pneg
        if cfg.loss == "em_pl_asl":
            known, em, pseudo_pos, pseudo_neg = asl_terms(p, pos, neg, cfg)
        else:
            pseudo_pos = cfg.beta_pos * (0.9 * neg_log(p) + 0.1 * neg_log(1 - p))
            pseudo_neg = cfg.beta_neg * (0.1 * neg_log(p) + 0.9 * neg_log(1 - p))
        loss = self.reduce(known + rest * em + ppos * pseudo_pos + pneg * pseudo_neg)
        return {"loss": loss, "pseudo_positives": self.reduce(ppos.sum(1))}


def asl_terms(p: Tensor, pos: Tensor, neg: Tensor, cfg: VlplConfig):
    """EM_PL_ASL's (observed, unknown, pseudo-positive, pseudo-negative) entries; its focusing
    weights keep their gradient, as the release computes them from the predictions."""
    focus = (1 - p) ** cfg.gamma_pos * neg_log(p)
    known = pos * focus + neg * neg_log(1 - p)
    em = -((1 - p) ** cfg.gamma_unknown) * entropy(p)
    return known, em, focus, p**cfg.gamma_neg * neg_log(1 - p)


register_method(
    MethodInfo(
        name="vlpl",
        paper=VLPL,
        summary="EM + CLIP pseudo-positives (EM-PL) from cached image and class-text embeddings",
        regimes=("single-positive", "partial"),
        config=VlplConfig,
        method_class=EmPseudoLabel,
        defaults=DEFAULTS,
        defaults_source=SOURCE,
        needs_clip=True,
    )
)
