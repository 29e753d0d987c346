"""The heads every loss-based method trains: a backbone giving pooled features (the identity on
cached features) and one linear layer to the classes (Cole et al.'s model, METHODS.md §0.4); or,
end to end, a CAM head with BoostLU (Kim et al. 2023); a sweep's members' heads stacked as one
parameter (``StackedHeads``); a linear run's head behind the encoder that made its features
(``EncoderHead``: the whole network ``predict`` and ``export`` use)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def pretrained_cfg(self) -> dict:
        """The backbone's (timm's): the mean/std its inputs are normalised with."""
        return self.backbone.pretrained_cfg

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N, L) logits
        return self.head(self.backbone(x))


class EncoderHead(nn.Module):
    """A linear run's whole network: the cache's encoder, then the trained classifier."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module):
        super().__init__()
        self.encoder, self.classifier = encoder, classifier

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, L)
        return self.classifier(self.encoder(x))


class CamClassifier(nn.Module):
    """Kim et al. 2023 (BoostLU, METHODS.md §5): a 1x1 convolution (with bias) of the backbone's
    feature map gives a class activation map; its positive values are multiplied by ``alpha``
    (BoostLU; 1 is the plain CAM head) and the logits are its spatial mean, in training and in
    evaluation alike. With alpha 1 this equals the linear head on average-pooled features."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, alpha: float):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(feature_dim, num_classes, kernel_size=1)
        self.alpha = alpha

    @property
    def pretrained_cfg(self) -> dict:
        return self.backbone.pretrained_cfg

    def cam(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, L, h, w)
        return self.head(self.backbone.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, L) logits
        cam = self.cam(x)
        if self.alpha != 1.0:
            cam = torch.where(cam > 0, self.alpha * cam, cam)
        return cam.mean(dim=(2, 3))


def create_classifier(
    feature_dim: int,
    num_classes: int,
    seed: int,
    backbone: nn.Module | None = None,
    head: str = "linear",
    alpha: float = 1.0,
) -> Classifier | CamClassifier:
    """The head is initialised from ``seed`` (PyTorch's default init), the same on every rank;
    a backbone comes with its own weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head == "cam":
            return CamClassifier(backbone, feature_dim, num_classes, alpha)
        return Classifier(backbone or nn.Identity(), feature_dim, num_classes)


class StackedHeads(nn.Module):
    """M linear heads on the same features: ``weight`` (M, D, L) holds member i's head
    transposed, ``bias`` (M, 1, L). A batch of B feature rows gives (M B, L) logits,
    member-major: training with one batched matmul, evaluation with one matmul against the
    heads side by side (the layouts each is fastest in; every member's logits are its own
    head's)."""

    def __init__(self, heads: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([h.weight.detach().T for h in heads]).contiguous())
        self.bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]).unsqueeze(1))

    @property
    def members(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (M B, L)
        m, classes = self.members, self.weight.shape[2]
        if self.training:
            return torch.baddbmm(self.bias, x.expand(m, *x.shape), self.weight).view(-1, classes)
        weight = torch.cat([self.weight[i].T for i in range(m)])  # (M L, D)
        logits = torch.addmm(self.bias.reshape(-1), x, weight.T)  # (B, M L)
        return logits.view(len(x), m, classes).transpose(0, 1).reshape(-1, classes)
