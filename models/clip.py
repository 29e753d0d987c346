"""CLIP encoders through open_clip (Radford et al. 2021; Cherti et al. 2023): weights from an
open_clip tag, a local file or none, the preprocessing they expect, their provenance, and
prompt-ensembled class text embeddings."""

from __future__ import annotations

import atexit
import difflib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from models.prompts import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, readable_class_name
from models.weights import (
    NO_WEIGHTS,
    check_weights_file,
    file_sha256,
    first_line,
    looks_like_path,
    weights_unavailable,
)
from shards.base.errors import WsmlError
from shards.base.registry import Registry

__all__ = [
    "DEFAULT_TEMPLATES",
    "SINGLE_TEMPLATE",
    "ClipPreprocess",
    "ClipProvenance",
    "LoadedClip",
    "create_clip",
    "encode_class_texts",
    "encode_images",
    "list_clip_models",
    "list_clip_tags",
    "readable_class_name",
    "register_tiny_clip",
]

PRETRAINED_HINT = "--pretrained /path/to/open_clip_pytorch_model.bin (pretrained=PATH in Python)"
TINY_CLIP = "wsml-tiny-clip"
TINY_CLIP_CONFIG: dict[str, Any] = {  # ~3.4M parameters, almost all in the token embedding
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass(frozen=True)
class ClipConfig:
    """A model config that open_clip does not ship, registered with it on first use."""

    name: str
    config: Mapping[str, Any] = field(compare=False)


CLIP_CONFIGS: Registry[ClipConfig] = Registry("wsml CLIP config")
CLIP_CONFIGS.register(ClipConfig(TINY_CLIP, TINY_CLIP_CONFIG))


@dataclass(frozen=True)
class ClipPreprocess:
    """How images must be prepared: ``resize_mode`` "shortest" resizes the short side then
    centre-crops, "longest" resizes the long side and pads, "squash" resizes both sides."""

    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    fill_color: int = 0


@dataclass(frozen=True)
class ClipProvenance:
    """Where the weights came from, to store next to anything computed with them."""

    model_name: str
    pretrained: str  # the open_clip tag, "file" or "none"
    source: str | None  # hub id / URL of a tag, or the local path
    sha256: str | None
    open_clip_version: str


class LoadedClip(NamedTuple):
    model: torch.nn.Module  # eval mode
    tokenizer: Callable[[Sequence[str]], torch.Tensor]  # texts -> (N, context_length) int64
    preprocess: ClipPreprocess
    provenance: ClipProvenance


def list_clip_models() -> list[str]:
    """Every model name ``create_clip`` accepts."""
    import open_clip

    return sorted(set(open_clip.list_models()) | set(CLIP_CONFIGS.names()))


def list_clip_tags(model_name: str) -> list[str]:
    """open_clip's pretrained tags for a model (empty for configs without published weights)."""
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(model_name))


def register_tiny_clip(name: str = TINY_CLIP) -> str:
    """Register the tiny CLIP config with open_clip under ``name`` (idempotent); returns it."""
    _add_config(name, TINY_CLIP_CONFIG)
    return name


_config_dir: str | None = None


def _add_config(name: str, config: Mapping[str, Any]) -> None:
    """open_clip reads configs from JSON files; one private temp folder holds ours."""
    import open_clip

    wanted = json.loads(json.dumps(config))
    existing = open_clip.get_model_config(name)
    if existing is not None:
        if existing != wanted:
            raise WsmlError(f"CLIP model {name!r} is already registered with another config")
        return
    global _config_dir
    if _config_dir is None:
        _config_dir = tempfile.mkdtemp(prefix="wsml-open-clip-configs-")
        atexit.register(shutil.rmtree, _config_dir, ignore_errors=True)
    path = os.path.join(_config_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(wanted, f)
    open_clip.add_model_config(path)


def create_clip(
    model_name: str,
    pretrained: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    file_tag: str | None = None,
) -> LoadedClip:
    """A CLIP model in eval mode with its tokenizer, preprocessing and provenance. ``pretrained``:
    an open_clip tag, a local checkpoint, or ``"none"`` (random); ``file_tag`` names the tag a
    local file was published under (sets its preprocessing and QuickGELU)."""
    import open_clip

    check_clip_name(model_name)
    tokenizer = _tokenizer(model_name)  # before the model: it may need the hub, fail early
    path, provenance, tag_cfg = _resolve_weights(model_name, pretrained, file_tag)
    try:
        model = open_clip.create_model(
            model_name,
            pretrained=path,
            device=device,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg={k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg},
            pretrained_image=False,  # no tower downloads: a checkpoint covers the whole model
            pretrained_text=False,
        )
    except Exception as e:  # torch.load or strict loading failed on the file
        if path is None:
            raise
        reason = " ".join(str(e).split())[:400]
        raise WsmlError(
            f"cannot load CLIP weights from {path} into {model_name}: {type(e).__name__}: {reason}"
        ) from e
    return LoadedClip(model.eval(), tokenizer, _preprocess(model), provenance)


def _resolve_weights(
    model_name: str, pretrained: str | os.PathLike, file_tag: str | None
) -> tuple[str | None, ClipProvenance, dict[str, Any]]:
    """The checkpoint file to load (None for random), its provenance, and the tag config that
    sets preprocessing and QuickGELU; a tag is downloaded here, failing with one clear error."""
    import open_clip

    if pretrained is None or str(pretrained) == "":
        raise WsmlError(f"CLIP {model_name} needs pretrained=: {_tag_choices(model_name)}")
    version = open_clip.__version__
    if str(pretrained) == NO_WEIGHTS:
        provenance = ClipProvenance(model_name, NO_WEIGHTS, None, None, version)
        return None, provenance, _shared_preprocess(model_name)
    if looks_like_path(pretrained):
        path = str(check_weights_file(pretrained))
        tag_cfg = _tag_cfg(model_name, file_tag) if file_tag else _shared_preprocess(model_name)
        _warn_quick_gelu(model_name, file_tag)
        return path, ClipProvenance(model_name, "file", path, file_sha256(path), version), tag_cfg
    tag = str(pretrained)
    tag_cfg = _tag_cfg(model_name, tag)
    source = tag_cfg.get("hf_hub") or tag_cfg.get("url") or tag_cfg.get("file")
    try:
        path = open_clip.download_pretrained(tag_cfg)
    except Exception as e:  # hub / URL failures of every kind: one clear message
        what = f"CLIP {model_name} pretrained={tag!r} ({source})"
        raise weights_unavailable(what, e, PRETRAINED_HINT) from e
    return path, ClipProvenance(model_name, tag, source, file_sha256(path), version), tag_cfg


def _tokenizer(model_name: str) -> Callable[[Sequence[str]], torch.Tensor]:
    import open_clip

    try:
        return open_clip.get_tokenizer(model_name)
    except (OSError, ImportError) as e:  # Hugging Face tokenizers: transformers + hub files
        raise WsmlError(
            f"the tokenizer of CLIP {model_name} comes from Hugging Face and cannot be had here "
            f"({type(e).__name__}: {first_line(e)}); it needs the transformers package and its "
            "files in the local hub cache. Models with open_clip's own tokenizer (ViT-B-32, "
            "ViT-B-16, ViT-L-14, RN50, ...) work offline."
        ) from e


def check_clip_name(model_name: str) -> None:
    import open_clip

    if model_name in CLIP_CONFIGS:
        _add_config(model_name, CLIP_CONFIGS.get(model_name).config)
    if model_name in open_clip.list_models():
        return
    choices = list_clip_models()
    close = difflib.get_close_matches(model_name, choices, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise WsmlError(
        f"unknown CLIP model {model_name!r}.{hint} Choices ({len(choices)}): {', '.join(choices)}"
    )


def _tag_choices(model_name: str, tag: str | None = None) -> str:
    tags = list_clip_tags(model_name)
    close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.6) if tag else []
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    if not tags:
        return f"It has no published weights: pass a local file, or '{NO_WEIGHTS}' (random)"
    return f"{hint}Choices: {', '.join(tags)}; or a local file, or '{NO_WEIGHTS}' (random)"


def _tag_cfg(model_name: str, tag: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise WsmlError(
            f"unknown pretrained tag {tag!r} for CLIP {model_name}. {_tag_choices(model_name, tag)}"
        )
    return dict(cfg)


def _shared_preprocess(model_name: str) -> dict[str, Any]:
    """The preprocessing every tag of the model agrees on (a file of unknown tag gets it)."""
    import open_clip

    cfgs = [open_clip.get_pretrained_cfg(model_name, t) for t in list_clip_tags(model_name)]
    return {
        k: cfgs[0][k]
        for k in _PREPROCESS_KEYS
        if cfgs and all(k in c and c[k] == cfgs[0][k] for c in cfgs)
    }


def _warn_quick_gelu(model_name: str, file_tag: str | None) -> None:
    import open_clip

    if file_tag is not None or (open_clip.get_model_config(model_name) or {}).get("quick_gelu"):
        return
    quick = [
        t
        for t in list_clip_tags(model_name)
        if open_clip.get_pretrained_cfg(model_name, t).get("quick_gelu")
    ]
    if quick:
        warnings.warn(
            f"{model_name} weights published as {', '.join(quick)} need QuickGELU: if the file is "
            f"one of them, pass file_tag (or use {model_name}-quickgelu)",
            stacklevel=4,  # the caller of create_clip
        )


def _preprocess(model: torch.nn.Module) -> ClipPreprocess:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return ClipPreprocess(
        image_size=(int(size[0]), int(size[1])),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_mode=str(cfg.get("resize_mode", "shortest")),
        fill_color=int(cfg.get("fill_color", 0)),
    )


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_class_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """One unit-norm text embedding per class, (L, D) float32 on CPU: the mean of the normalised
    embeddings of every template, normalised again (the CLIP prompt ensemble)."""
    if not classnames:
        raise WsmlError("no class names to encode")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise WsmlError(f"each template needs exactly one '{{}}' for the class name: {bad}")
    prompts = [t.format(c) for c in classnames for t in templates]
    device = _device(model)
    chunks = [
        F.normalize(model.encode_text(tokenizer(prompts[i : i + batch_size]).to(device)).float())
        for i in range(0, len(prompts), batch_size)
    ]
    per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (L, T, D)
    return F.normalize(per_prompt.mean(dim=1)).cpu()  # (L, D)


@torch.no_grad()
def encode_images(
    model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 256
) -> torch.Tensor:
    """Unit-norm image embeddings (N, D) float32 on CPU of preprocessed images (N, 3, H, W)."""
    device = _device(model)
    chunks = [
        F.normalize(model.encode_image(images[i : i + batch_size].to(device)).float())
        for i in range(0, len(images), batch_size)
    ]
    if not chunks:
        raise WsmlError("no images to encode")
    return torch.cat(chunks).cpu()
