"""The encoder that made an embedding cache, rebuilt from the cache's ``meta.json`` as a module
(normalised NCHW float batch -> (N, D)) with its preprocessing, so a head trained on cached
features applies to raw images (``cli.py predict``, ``cli.py export``).

It computes as the cache did (:class:`CachePrecision`): under the autocast dtype its
``precision`` records (a GPU-made cache: bfloat16 features, float16 CLIP), and its outputs are
rounded to the stored dtype (float16), so the head sees what it was trained on. A CPU-made
cache is then reproduced to float32 rounding; a GPU-made one on another device differs by the
kernels' accumulation order alone (docs/training.md). An export traces in float32 with the
rounding (an exported graph carries no autocast)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.weights import NO_WEIGHTS, WeightsUnavailableError
from pipelines.distributed import seeded
from pipelines.presets import PRESETS, Preset, center_crop_preset, get_preset
from shards.base.errors import WsmlError

INIT_SEED = 0  # models.cache.INIT_SEED: random weights ("none") are seeded the same way
WEIGHTS_HINT = "pass the weights file the cache was made with: --weights PATH"


@dataclasses.dataclass(frozen=True)
class CachePrecision:
    """How a cache's encoder computed (``compute``: its autocast dtype, None for float32) and
    stored (``stored``: the dtype of its arrays), read from its ``meta.json``."""

    compute: torch.dtype | None = None
    stored: torch.dtype | None = None

    @classmethod
    def read(cls, meta: dict[str, Any]) -> CachePrecision:
        """``precision`` is "bfloat16 autocast (features), float32 outputs" (cache.precision_name)
        or "float32 (…)"; a cache written before it was recorded computed in float32."""
        words = str(meta.get("precision", "")).split()
        compute = None
        if len(words) > 1 and words[1] == "autocast":
            compute = _dtype(words[0], meta)
        stored = meta.get("dtype")
        return cls(compute, _dtype(stored, meta) if stored else None)

    def run(self, encode, x: torch.Tensor) -> torch.Tensor:
        """``encode(x)`` under the cache's autocast (not while exporting), as float32 rounded
        through the stored dtype."""
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if self.compute is not None and not exporting:
            with torch.autocast(x.device.type, dtype=self.compute):
                y = encode(x).float()
        else:
            y = encode(x).float()
        return y if self.stored is None else y.to(self.stored).float()


def _dtype(name: str, meta: dict[str, Any]) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise WsmlError(f"cache {meta.get('tag')!r}: unknown dtype {name!r} in its meta.json")
    return dtype


class ClipImageEncoder(nn.Module):
    """CLIP's image tower with the cache's L2 normalisation, in the cache's precision."""

    def __init__(self, clip: nn.Module, precision: CachePrecision = CachePrecision()):
        super().__init__()
        self.visual, self.precision = clip.visual, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, D)
        return self.precision.run(lambda z: F.normalize(self.visual(z).float(), dim=-1), x)


class FeatureEncoder(nn.Module):
    """A timm backbone's pooled features, L2-normalised when the cache is, in the cache's
    precision."""

    def __init__(
        self, backbone: nn.Module, normalize: bool, precision: CachePrecision = CachePrecision()
    ):
        super().__init__()
        self.backbone, self.normalize, self.precision = backbone, normalize, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, D)
        return self.precision.run(self._features, x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x).float()
        return F.normalize(x, dim=-1) if self.normalize else x


def preset_of(preprocess: dict[str, Any]) -> Preset:
    """The loader preset a cache recorded: a registered preset's geometry with the recorded
    mean/std, or the encoder's own resize + centre crop."""
    mean, std = tuple(preprocess["mean"]), tuple(preprocess["std"])
    name = preprocess["preset"]
    if name in PRESETS:
        return dataclasses.replace(get_preset(name), mean=mean, std=std)
    interp = preprocess.get("interpolation", "bicubic")
    return center_crop_preset(int(preprocess["size"]), mean, std, interp, name=name)


def create_cache_encoder(
    meta: dict[str, Any], tag: str, weights: str | os.PathLike | None = None
) -> tuple[nn.Module, Preset]:
    """The encoder of cache ``tag`` (its ``meta``) in eval mode and its preprocessing; weights
    as the cache had them (``none``: the same seeded random ones; a file: ``weights``, checked
    against the recorded sha256). Fails before any work when that cannot be done."""
    kind = meta.get("kind")
    if kind not in ("clip", "features") or "preprocess" not in meta:
        raise WsmlError(
            f"cache {tag!r} was not made by cli.py cache-clip or cache-features (its meta.json "
            "records no encoder), so its encoder cannot be rebuilt for raw images"
        )
    pretrained = meta["pretrained"]
    if pretrained == "file" and weights is None:
        raise WsmlError(
            f"cache {tag!r} was made with a local weights file (sha256 "
            f"{meta.get('weights_sha256')}): {WEIGHTS_HINT}"
        )
    source = os.fspath(weights) if pretrained == "file" else pretrained
    try:
        with seeded(INIT_SEED):
            module, sha = _create(kind, meta, source)
    except WeightsUnavailableError as e:
        raise WsmlError(f"{e} (for cache {tag!r}: {WEIGHTS_HINT})") from e
    want = meta.get("weights_sha256")
    if want and sha and want != sha:
        raise WsmlError(
            f"the weights {source} (sha256 {sha[:12]}) are not those cache {tag!r} was made "
            f"with (sha256 {want[:12]}): {WEIGHTS_HINT}"
        )
    return module.eval(), preset_of(meta["preprocess"])


def _create(kind: str, meta: dict[str, Any], source: str) -> tuple[nn.Module, str | None]:
    precision = CachePrecision.read(meta)
    if kind == "clip":
        from models.clip import create_clip

        clip = create_clip(meta["model"], source, file_tag=meta.get("file_tag"))
        return ClipImageEncoder(clip.model, precision), clip.provenance.sha256
    from models.backbones import create_backbone

    weights = None if source not in (NO_WEIGHTS,) and meta["pretrained"] != "file" else source
    backbone, info = create_backbone(meta["model"], weights=weights)
    encoder = FeatureEncoder(backbone, bool(meta.get("normalized")), precision)
    return encoder, info.weights_sha256
