"""PU-MLC's network (Yuan, Zhang, Huang, ICME 2024, "Positive Label Is All You Need for
Multi-Label Classification", METHODS.md §7.2): a timm ResNet whose 3x3 convolutions become
local-global convolutions, conv(x) + G(x), with a linear classifier on the pooled features. The
paper's backbone is a ResNet; the same wrapping applies to timm's EfficientNet family (its
stages are ``blocks``; the last one, with ``conv_head``, is what trains), which is how the demo
runs PU-MLC on the offline ImageNet weights of EfficientNet-Lite0.

G (the global branch), for an input x (N, C, H, W), r = 4 and h = 8 heads:

    u = ReLU(W_r x)                                   (N, C/r, H, W)   1x1 reduction
    c = [u, mean_HW(u) broadcast]                     (N, 2C/r, H, W)
    a = softmax_HW(W_a c)                             (N, h, H, W)     aggregation weights
    b = sigmoid(W_b c)                                (N, h, H, W)     broadcast gates
    v = W_v x, split into h heads of C/h channels     (N, h, C/h, H, W)
    g_k = sum_HW a_k v_k                              (N, h, C/h)      one vector per head
    y = x + b_k g_k (head k's channels, every place)  (N, C, H, W)
    G(x) = BN(W_p y), W_p 1x1 with the conv's stride  (N, C_out, H', W')

BN's weight starts N(0, 1e-4) and its bias 0, so G(x) ~ 0 and the wrapped network starts as
the pretrained one. Trainable: every G parameter, the backbone's last stage (layer4) and the
classifier; everything else frozen, and every BatchNorm (G's included) stays in eval mode in
training too (the release's ``fix_bn``), so batch statistics never enter and never change.

Deviations from the release (TAKELAMAG/PU-MLC): its head is SSGRL (semantic decoupling with
300-d word vectors, a gated GNN over label co-occurrence, element-wise classifiers); word vectors
cannot be had offline, so a linear layer on the globally average-pooled features replaces it.
The release wraps every 3x3 conv of the backbone; ResNet-101's stem is a 7x7 conv, so that is
every 3x3 conv of layer1..layer4, which is what is wrapped here (a deep-stem variant keeps its
stem plain: its first conv has 3 input channels, which 8 heads cannot split).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shards.base.errors import WsmlError

STAGES = ("layer1", "layer2", "layer3", "layer4")  # a timm ResNet's; layer4 trains
BN_INIT_STD = 1e-4


class GlobalBranch(nn.Module):
    """G of a local-global convolution (module docstring): a multi-head global context vector,
    aggregated with spatial softmax weights and broadcast back with sigmoid gates."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | tuple[int, int] = 1,
        num_heads: int = 8,
        reduction: int = 4,
    ):
        super().__init__()
        if in_channels % num_heads or in_channels < reduction:
            raise WsmlError(
                f"a global branch on {in_channels} channels needs them divisible by "
                f"{num_heads} heads and at least {reduction} (the reduction)"
            )
        mid = in_channels // reduction
        self.num_heads = num_heads
        self.reduce = nn.Conv2d(in_channels, mid, 1)
        self.aggregate = nn.Conv2d(2 * mid, num_heads, 1)
        self.broadcast = nn.Conv2d(2 * mid, num_heads, 1)
        self.value = nn.Conv2d(in_channels, in_channels, 1)
        self.proj = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        self.norm = nn.BatchNorm2d(out_channels)
        nn.init.normal_(self.norm.weight, 0.0, BN_INIT_STD)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C_out, H', W')
        n, c, h, w = x.shape
        u = F.relu(self.reduce(x))
        context = torch.cat([u, u.mean((2, 3), keepdim=True).expand_as(u)], 1)
        attn = self.aggregate(context).flatten(2).softmax(-1)  # (N, heads, HW)
        gate = torch.sigmoid(self.broadcast(context)).flatten(2)  # (N, heads, HW)
        v = self.value(x).reshape(n, self.num_heads, c // self.num_heads, h * w)
        g = torch.einsum("nkcp,nkp->nkc", v, attn)  # (N, heads, C/heads)
        y = x + torch.einsum("nkc,nkp->nkcp", g, gate).reshape(n, c, h, w)
        return self.norm(self.proj(y))


class LocalGlobalConv(nn.Module):
    """conv(x) + G(x): the original (pretrained) convolution plus a global branch."""

    def __init__(self, conv: nn.Conv2d, num_heads: int = 8, reduction: int = 4):
        super().__init__()
        self.conv = conv
        self.global_branch = GlobalBranch(
            conv.in_channels, conv.out_channels, conv.stride, num_heads, reduction
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.global_branch(x)


def wrap_3x3_convs(module: nn.Module, prefix: str = "", **kwargs) -> list[str]:
    """Replace every 3x3 ``nn.Conv2d`` inside ``module`` by a :class:`LocalGlobalConv` (in
    place); returns the replaced convolutions' names."""
    wrapped = []
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if isinstance(child, nn.Conv2d) and tuple(child.kernel_size) == (3, 3):
            setattr(module, name, LocalGlobalConv(child, **kwargs))
            wrapped.append(path)
        else:
            wrapped += wrap_3x3_convs(child, f"{path}.", **kwargs)
    return wrapped


def backbone_stages(backbone: nn.Module) -> tuple[list[str], list[str]]:
    """(the stages whose 3x3 convolutions are wrapped, name prefixes of the parameters that
    train besides the global branches: the last stage) of a timm ResNet or EfficientNet."""
    if all(hasattr(backbone, s) for s in STAGES):
        return list(STAGES), [f"{STAGES[-1]}."]
    if isinstance(getattr(backbone, "blocks", None), nn.Sequential) and hasattr(
        backbone, "conv_head"
    ):
        stages = [f"blocks.{i}" for i in range(len(backbone.blocks))]
        return stages, [f"{stages[-1]}.", "conv_head.", "bn2."]
    raise WsmlError(
        f"local-global convolutions need a timm ResNet (stages {', '.join(STAGES)}) or "
        f"EfficientNet (blocks + conv_head); this backbone ({type(backbone).__name__}) is neither"
    )


class LgcNet(nn.Module):
    """A timm ResNet or EfficientNet (pooled features) with local-global convolutions in its
    stages and a linear classifier: images (N, 3, H, W) -> logits (N, L)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        weights_info: dict[str, Any] | None = None,
    ):
        super().__init__()
        stages, trained = backbone_stages(backbone)
        self.backbone = backbone
        self.wrapped = [
            name
            for stage in stages
            for name in wrap_3x3_convs(backbone.get_submodule(stage), f"backbone.{stage}.")
        ]
        self.head = nn.Linear(feature_dim, num_classes)
        self.weights_info = dict(weights_info or {})
        for name, p in backbone.named_parameters():
            p.requires_grad = "global_branch." in name or name.startswith(tuple(trained))
        self.train()

    @property
    def pretrained_cfg(self) -> dict:
        """The backbone's (timm's): the mean/std its inputs are normalised with."""
        return self.backbone.pretrained_cfg

    def train(self, mode: bool = True) -> LgcNet:
        """Train mode everywhere except BatchNorm, which always uses its running statistics."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, L) logits
        return self.head(self.backbone(x))


def create_lgc_net(name: str, num_classes: int, weights: str | os.PathLike | None = None) -> LgcNet:
    """PU-MLC's network on the timm ResNet (or EfficientNet) ``name`` with ``weights`` (None: pretrained from the
    hub cache, ``"none"``: random, or a local file), wrapped after its weights are loaded."""
    from models.backbones import create_backbone

    backbone, info = create_backbone(name, weights=weights)
    provenance = {"backbone": name, "weights": info.weights, "sha256": info.weights_sha256}
    return LgcNet(backbone, info.feature_dim, num_classes, provenance)
