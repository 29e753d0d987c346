"""The heads every loss-based method trains: a backbone giving pooled features (the identity on
cached features) and one linear layer to the classes (Cole et al.'s model, METHODS.md §0.4); or,
end to end, a CAM head with BoostLU (Kim et al. 2023)."""

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
