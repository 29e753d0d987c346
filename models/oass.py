"""The OASS classifier (Xu et al., ICIP 2022, "Object-Aware Self-Supervised Multi-Label Learning",
METHODS.md §8), built on Puzzle-CAM's: a ResNet at output stride 16, a class activation map (CAM)
from a 1x1 convolution without bias, and logits from class-specific instance features.

For every class v the feature map f (C channels) is masked by v's normalised CAM
m_v = relu(cam_v - 1e-5) / (max relu(cam_v) + 1e-5), batch-normalised by its own BN_v and reduced
to one channel by a 1x1 convolution w_v (no bias); the logit is the spatial mean:

    z_v = mean_p sum_c w_vc [gamma_vc (f_c m_v - mu_vc) / sqrt(var_vc + eps) + beta_vc]

BN is linear in its input, so with a_vc = w_vc gamma_vc / sqrt(var_vc + eps) and
E_vc = mean_p f_c m_v this is z_v = sum_c a_vc (E_vc - mu_vc) + sum_c w_vc beta_vc, and BN_v's batch
statistics are mu_vc = mean_n E_vc, var_vc = mean_{n,p} (f_c m_v)^2 - mu_vc^2. Two batched matmuls
compute it without the (N, L*C, h, w) tensor of masked features (5 GB for VOC at 512 px, batch 32),
exactly as the per-class loop of the release does, running statistics included (test_oass.py checks
it against torch's BatchNorm2d on that tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CAM_EPSILON = 1e-5  # Puzzle-CAM's make_cam
OUTPUT_STRIDE = 16
LR_MULTS = {  # Puzzle-CAM's four groups: (new layer, weight) -> lr multiple
    (False, True): 1.0,
    (False, False): 2.0,
    (True, True): 10.0,
    (True, False): 20.0,
}


def normalise_cam(cam: Tensor, eps: float = CAM_EPSILON) -> Tensor:
    """Puzzle-CAM's make_cam: relu(cam - eps) / (spatial max of relu(cam) + eps), per map."""
    cam = F.relu(cam)
    peak = cam.flatten(-2).amax(-1)[..., None, None]
    return F.relu(cam - eps) / (peak + eps)


class OassNet(nn.Module):
    """``forward(x)`` -> (N, L) logits (what evaluation calls). ``forward(x, with_cam=True)`` ->
    ``{"logits", "cam"}`` with the raw (N, L, h, w) CAM; ``crops`` adds ``"crop_cam"``, the CAM of a
    second batch of images in the same call (one DDP forward per step): a tensor, or a function of
    this call's (detached) CAM that makes them, or returns None for none."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        weights_info: dict[str, Any] | None = None,
    ):
        super().__init__()
        c, n = feature_dim, num_classes
        self.backbone = backbone
        self.num_classes = num_classes
        self.cam_head = nn.Conv2d(c, n, 1, bias=False)
        self.instance_bn = nn.BatchNorm2d(n * c)  # BN_v of class v: channels v*C .. (v+1)*C - 1
        self.instance_head = nn.Conv2d(n * c, n, 1, groups=n, bias=False)
        for conv in (self.cam_head, self.instance_head):
            nn.init.kaiming_normal_(conv.weight)
        self.weights_info = weights_info or {}

    @property
    def pretrained_cfg(self) -> dict:
        return self.backbone.pretrained_cfg

    def cam(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, L, H/16, W/16)
        return self.cam_head(self.backbone.forward_features(x))

    def forward(
        self,
        x: Tensor,
        crops: Tensor | Callable[[Tensor], Tensor | None] | None = None,
        with_cam: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        f = self.backbone.forward_features(x)
        cam = self.cam_head(f)
        logits = self.instance_logits(f, normalise_cam(cam))
        if crops is None and not with_cam:
            return logits
        out = {"logits": logits, "cam": cam}
        if callable(crops):
            crops = crops(cam.detach())
        if crops is not None:
            out["crop_cam"] = self.cam(crops)
        return out

    def instance_logits(self, f: Tensor, mask: Tensor) -> Tensor:
        """(N, C, h, w) features, (N, L, h, w) masks -> (N, L) logits (module docstring)."""
        bn = self.instance_bn
        n, c = f.shape[:2]
        big_l = mask.shape[1]
        with torch.autocast(f.device.type, enabled=False):  # E[x^2] - E[x]^2 wants float32
            f32 = f.float().flatten(2)  # (N, C, P)
            m32 = mask.float().flatten(2)  # (N, L, P)
            pixels = f32.shape[2]
            e = torch.bmm(m32, f32.transpose(1, 2)) / pixels  # (N, L, C)
            if bn.training:
                mu = e.mean(0)
                q = torch.bmm(m32.square(), f32.square().transpose(1, 2)) / pixels
                var = (q.mean(0) - mu.square()).clamp_min(0.0)
                self._update_running_stats(mu, var, n * pixels)
            else:
                mu = bn.running_mean.view(big_l, c)
                var = bn.running_var.view(big_l, c)
            w = self.instance_head.weight.float().view(big_l, c)
            a = w * bn.weight.float().view(big_l, c) * torch.rsqrt(var + bn.eps)
            bias = (w * bn.bias.float().view(big_l, c)).sum(1)
            return ((e - mu) * a).sum(2) + bias

    @torch.no_grad()
    def _update_running_stats(self, mu: Tensor, var: Tensor, count: int) -> None:
        """As BatchNorm2d in training: momentum average, unbiased variance."""
        bn = self.instance_bn
        if not bn.track_running_stats:
            return
        bn.num_batches_tracked += 1
        unbiased = var * count / max(1, count - 1)
        bn.running_mean.lerp_(mu.flatten().to(bn.running_mean.dtype), bn.momentum)
        bn.running_var.lerp_(unbiased.flatten().to(bn.running_var.dtype), bn.momentum)

    def param_groups(self, config) -> list[dict]:
        """Puzzle-CAM's PolyOptimizer groups: pretrained (backbone) weights at lr, their biases
        at 2 lr, new weights at 10 lr, new biases at 20 lr; weight decay on weights only. As in
        the release, a "weight" is any parameter named so (BN scales included)."""
        groups: dict[tuple[bool, bool], list[Tensor]] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = (not name.startswith("backbone."), name.endswith("weight"))
                groups.setdefault(key, []).append(p)
        out = []
        for (new, weight), params in sorted(groups.items()):
            out.append(
                {
                    "params": params,
                    "lr": config.lr * LR_MULTS[(new, weight)],
                    "weight_decay": config.weight_decay if weight else 0.0,
                    "name": ("new" if new else "pretrained")
                    + ("-weights" if weight else "-biases"),
                }
            )
        return out


def create_oass_model(spec) -> OassNet:
    """``MethodInfo.create_model``: the spec's backbone at output stride 16 with the OASS heads:
    32 x 32 CAMs at 512 px, as Puzzle-CAM's ResNet with strides 2, 2, 2, 1. timm reaches the
    stride by dilating the last stage (dilation 2); Puzzle-CAM's last stage has stride 1 and no
    dilation (same weights, a larger receptive field here)."""
    from models.backbones import create_backbone

    backbone, info = create_backbone(
        spec.backbone, weights=spec.weights, output_stride=OUTPUT_STRIDE
    )
    provenance = {"weights": info.weights, "sha256": info.weights_sha256}
    return OassNet(backbone, info.feature_dim, len(spec.classes), provenance)
