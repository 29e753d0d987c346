"""HSPNet, Wang et al., ACM MM 2023, "Hierarchical Prompt Learning Using CLIP for Multi-label
Classification with Single Positive Labels" (METHODS.md §6): its own model (models/hspnet.py: a
CLIP whose class texts come from prompts conditioned on class-group prompts, refined by a GCN;
end to end only) trained with SPLC (Zhang et al., §10; train/methods/robust_loss.py), summed over batch
and classes: margin 1, gamma 2, tau 0.6.

``change_epoch`` counts as in the release, whose epochs start at 0 and which corrects from epoch
index ``change_epoch`` on: here (epochs from 1) corrections start in epoch change_epoch + 1 (VOC:
epoch 3). Protocol (§6.3): batch 128, Adam (coupled weight decay 1e-4 on weight matrices only),
OneCycle (pct_start 0.2) over 80 epochs stopped after 60, model EMA whose decay is the release's
0.82^(1/steps per epoch) with its hard-coded step counts, lr 1e-4 (CUB 1e-3), the GCN at
``gcn_lr``; CLIP RN50 ("openai" weights) at 224 px, resize + centre crop for train and eval alike
(preset clip224). The release selects the epoch (and regular or EMA weights) on the test set;
the loop selects on validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shards.base.options import POSITIVE, UNIT, Range
from train.methods import MethodInfo, ModelSpec, register_method
from train.methods.robust_loss import Splc, SplcConfig

HSPNET = (
    "Wang et al., ACM MM 2023, Hierarchical Prompt Learning Using CLIP for Multi-label "
    "Classification with Single Positive Labels"
)
SOURCE = (
    "HSPNet configs/*.yaml, train.py, utils.py (METHODS.md §6.3): batch 128, Adam, OneCycle over "
    "80 epochs stopped after 60, EMA 0.82^(1/steps) with the release's steps (COCO 641 -> "
    "0.999690, NUS 931 -> 0.999787, VOC 45 -> 0.995600, CUB 47 -> 0.995787), lr 1e-4 (CUB "
    "1e-3), gcn_lr COCO 5e-4, VOC 7e-4, NUS 5e-4, CUB 5e-3, change_epoch COCO 1, VOC 2, NUS 3, "
    "CUB 1, tau 0.6, n_ctx 4, reweight_p 0.2"
)


@dataclass(frozen=True)
class HspnetConfig(SplcConfig):
    """SPLC's fields plus the model's: the GCN's learning rate, context tokens per group prompt,
    the adjacency's neighbour weight, and the open_clip tag of the pretrained weights."""

    epochs: int = 60
    gcn_lr: float = 5e-4
    n_ctx: int = 4
    reweight_p: float = 0.2
    pretrained: str = "openai"

    # n_ctx: the prompt's context tokens and a class name fit CLIP's 77 tokens
    RANGES: ClassVar = {"gcn_lr": POSITIVE, "n_ctx": Range(1, 64), "reweight_p": UNIT}


def create_hspnet_model(spec: ModelSpec):
    from models.hspnet import create_hspnet

    cfg = spec.config
    return create_hspnet(
        spec.backbone,
        spec.classes,
        spec.shards.class_groups(),
        weights=spec.weights,
        pretrained=cfg.pretrained,
        n_ctx=cfg.n_ctx,
        reweight_p=cfg.reweight_p,
    )


register_method(
    MethodInfo(
        name="hspnet",
        paper=HSPNET,
        summary="CLIP with group-conditioned class prompts and a label-hierarchy GCN; SPLC loss",
        regimes=("single-positive", "partial"),
        config=HspnetConfig,
        method_class=Splc,
        defaults={
            "voc": {"gcn_lr": 7e-4, "change_epoch": 2, "ema": 0.9956},
            "coco": {"gcn_lr": 5e-4, "change_epoch": 1, "ema": 0.99969},
            "nus": {"gcn_lr": 5e-4, "change_epoch": 3, "ema": 0.999787},
            "cub": {"lr": 1e-3, "gcn_lr": 5e-3, "change_epoch": 1, "ema": 0.995787},
        },
        defaults_source=SOURCE,
        settings=("e2e",),
        create_model=create_hspnet_model,
        run_defaults={"backbone": "RN50", "preset": "clip224"},
    )
)
