"""Radford et al., ICML 2021 (arXiv 2103.00020), "Learning Transferable Visual Models From
Natural Language Supervision" (CLIP): zero-shot classification, the baseline every CLIP-based
method in the seeds (VLPL, HSPNet) is measured against.

Nothing is trained (``MethodInfo.trains`` False: the loop scores the run once, as epoch 0).
The run's linear head is set to ``logit_scale x`` the L2-normalised class-text embeddings of a
``cache-clip`` cache, with no bias, behind an L2 normalisation of the image embedding: logits
= 100 x cos(image, class text), CLIP's learned (and clamped) logit scale. The sigmoid of these
logits is what the metrics rank; mAP depends only on the ranking per class.

Beside the scores, the run reports the quality of VLPL's pseudo-labels on the training split
(``train/methods/vlpl.py``'s rule at its default threshold) against the clean labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shards.base.errors import WsmlError
from shards.base.options import POSITIVE, Range
from train.methods import Method, MethodConfig, MethodInfo, neg_log, observed_masks, register_method
from train.methods.vlpl import VlplConfig, pseudo_labels

CLIP = (
    "Radford et al., ICML 2021 (arXiv 2103.00020), Learning Transferable Visual Models From "
    "Natural Language Supervision"
)
LOGIT_SCALE = 100.0  # CLIP's logit scale: exp(learned temperature), clamped at 100


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    epochs: int = 0  # trains nothing
    logit_scale: float = LOGIT_SCALE

    RANGES: ClassVar = {"epochs": Range(0, 0), "logit_scale": POSITIVE}

    def check(self) -> None:
        if self.epochs != 0:
            raise WsmlError(f"clip-zeroshot trains nothing: epochs must be 0, got {self.epochs}")
        super().check()


class L2Normalize(nn.Module):
    """The image embedding's L2 normalisation (no parameters: checkpoints keep their keys)."""

    def forward(self, x: Tensor) -> Tensor:  # (N, D) -> (N, D)
        return F.normalize(x, dim=-1)


def zeroshot_weights(text: Tensor, scale: float) -> Tensor:
    """The head's weight: ``scale`` x the L2-normalised class-text embeddings (L, D)."""
    return scale * F.normalize(text.detach().float(), dim=1)


class ZeroShot(Method):
    """Sets the run's head to CLIP's zero-shot classifier. Its loss (never optimised, the run
    has no epochs) is assume-negative BCE on the observed labels, a defined value for tools
    that call every method."""

    stackable = False

    def __init__(self, info, config, num_rows, num_classes, *, text_embeddings=None, **kw):
        super().__init__(info, config, num_rows, num_classes)
        text = F.normalize(text_embeddings.detach().float(), dim=1)
        self.register_buffer("text", text, persistent=False)  # (L, D), an input, not state

    def bind_model(self, model: nn.Module) -> None:
        head = model.head
        if tuple(head.weight.shape) != tuple(self.text.shape):
            raise WsmlError(
                f"method {self.name}: the head is {tuple(head.weight.shape)}, the class-text "
                f"embeddings {tuple(self.text.shape)}: pass the CLIP cache as --features"
            )
        with torch.no_grad():
            head.weight.copy_(zeroshot_weights(self.text, self.config.logit_scale))
            head.bias.zero_()
        model.backbone = L2Normalize()

    def compute(self, logits, batch, *, epoch, step):
        p = torch.sigmoid(logits)
        pos, _, _ = (m.float() for m in observed_masks(batch, p))
        return {"loss": self.reduce(pos * neg_log(p) + (1 - pos) * neg_log(1 - p))}

    def untrained_report(self, data) -> dict[str, Any]:
        """VLPL's pseudo-positives on the training split against the clean labels."""
        return {"vlpl_pseudo_labels": pseudo_label_quality(data, self.text)}


def pseudo_label_quality(data, text: Tensor, cfg: VlplConfig | None = None) -> dict[str, Any]:
    """Precision and recall (x 100) of VLPL's pseudo-positives (softmax over classes of
    cos / T > threshold, its defaults) over every entry of the training split; the entries
    observed positive are counted too, as VLPL keeps them positive either way."""
    cfg = cfg or VlplConfig()
    arrays = data.embeddings if "train" in data.embeddings else data.features
    image, full = arrays["train"], data.label_lists["train"]["full"]
    hits = made = positives = 0
    for lo in range(0, len(image), 4096):  # a chunk of rows at a time: no (N, L) matrix
        rows = torch.arange(lo, min(len(image), lo + 4096))
        x = torch.from_numpy(np.asarray(image[lo : lo + 4096])).float()
        pl = pseudo_labels(x, text.to(x.device), cfg.temperature, cfg.threshold, 0.0)
        pred, true = pl == 1, (full.dense(rows.to(full.device)) == 1).to(pl.device)
        hits, made = hits + int((pred & true).sum()), made + int(pred.sum())
        positives += int(true.sum())
    return {
        "threshold": cfg.threshold,
        "temperature": cfg.temperature,
        "pseudo_positives": made,
        "clean_positives": positives,
        "precision": 100.0 * hits / made if made else 0.0,
        "recall": 100.0 * hits / positives if positives else 0.0,
    }


register_method(
    MethodInfo(
        name="clip-zeroshot",
        paper=CLIP,
        summary="zero-shot CLIP: 100 x cos(image, class text) from a cache-clip cache; trains "
        "nothing",
        regimes=("single-positive", "partial", "full"),
        config=ZeroShotConfig,
        method_class=ZeroShot,
        defaults_source="CLIP's logit scale 100 (Radford et al. 2021)",
        needs_clip=True,
        settings=("linear",),
        trains=False,
    )
)
