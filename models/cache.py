"""Embedding caches beside a shard set (``cli.py cache-clip`` and ``cli.py cache-features``).

- CLIP (open_clip, Radford et al. 2021): L2-normalised image embeddings of every split, made
  with the model's own preprocessing, and prompt-ensembled class-text embeddings. Tag
  ``<model>__<pretrained>``: the open_clip tag, ``file-<sha256[:12]>`` or ``none``.
- Backbone features (timm, global average pooled, ``num_classes=0``): the "linear fixed
  features" setting of Cole et al. 2021. Tag ``<backbone>__<weights>__<preset>[__l2]``: weights
  is the timm pretrained tag (``in1k``, ``a1_in1k``), ``file-<sha256[:12]>`` or ``none``.

Random weights come only with ``none`` and are seeded, so every process and every resumed run
gets the same ones. The writing itself (chunks, resume, ranks) is ``models.cache_run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.cache_run import DEFAULT_CHUNK, CacheOptions, Encoder, Progress, run_cache
from models.clip import (
    DEFAULT_TEMPLATES,
    ClipPreprocess,
    create_clip,
    encode_class_texts,
    readable_class_name,
)
from models.weights import NO_WEIGHTS
from pipelines.distributed import DistContext, autocast, seeded
from pipelines.presets import PRESETS, Preset, center_crop_preset, get_preset
from shards.base.errors import WsmlError
from shards.caches import create_tag
from shards.convert.source import read_utf8
from shards.shardset import open_shard_set

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_PRETRAINED",
    "BACKBONE_PRESET",
    "cache_clip",
    "cache_features",
    "check_model_name",
    "clip_preset",
    "create_clip_encoder",
    "create_feature_encoder",
    "read_templates",
    "summary_lines",
]

INIT_SEED = 0  # random weights ("none") are seeded: the same in every process
DEFAULT_PRETRAINED = {"ViT-B-32": "laion2b_s34b_b79k"}  # the default --model needs no tag
BACKBONE_PRESET = "backbone"  # the backbone's own eval preprocessing instead of a preset


def cache_clip(
    shards: str | Path,
    *,
    model: str = "ViT-B-32",
    pretrained: str | None = None,
    file_tag: str | None = None,
    templates: Sequence[str] | None = None,
    crops: str | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    log=None,
    **options,
) -> dict:
    """CLIP image embeddings of ``options['splits']`` (default all) and class-text embeddings
    into ``embeddings/<model>__<pretrained>/``, with ``crops`` (``gridG``) the training split's
    G x G tiles too (``models/cache_crops.py``); options are ``CacheOptions`` fields."""
    from models.cache_crops import create_crops, parse_crops

    ss = open_shard_set(shards)
    opts = CacheOptions(**options)
    opts.check(ss)
    grid = parse_crops(crops) if crops is not None else None
    templates = tuple(templates or DEFAULT_TEMPLATES)
    check_templates(templates)
    ctx = DistContext.create(device)
    try:
        encoder = create_clip_encoder(
            model,
            pretrained if pretrained is not None else DEFAULT_PRETRAINED.get(model),
            classes=ss.classes,
            templates=templates,
            device=ctx.device,
            file_tag=file_tag,
        )
        tiles = create_crops(encoder, grid) if grid is not None else None
        return run_cache(ss, encoder, opts, ctx, progress=progress, log=log, crops=tiles)
    finally:
        ctx.close()


def cache_features(
    shards: str | Path,
    *,
    backbone: str,
    weights: str | None = None,
    preset: str = "cole448",
    image_size: int | None = None,
    normalize: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
    log=None,
    **options,
) -> dict:
    """Pooled backbone features into ``embeddings/<backbone>__<weights>__<preset>/``."""
    ss = open_shard_set(shards)
    opts = CacheOptions(**options)
    opts.check(ss)
    _check_preset(preset, image_size)
    ctx = DistContext.create(device)
    try:
        encoder = create_feature_encoder(
            backbone,
            weights=weights,
            preset=preset,
            image_size=image_size,
            normalize=normalize,
            device=ctx.device,
        )
        return run_cache(ss, encoder, opts, ctx, progress=progress, log=log)
    finally:
        ctx.close()


# ---- encoders ----


def create_clip_encoder(
    model_name: str,
    pretrained: str | None,
    *,
    classes: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str | torch.device = "cpu",
    file_tag: str | None = None,
) -> Encoder:
    """A CLIP model as a cache encoder; weights that cannot be had fail here, before any work."""
    import open_clip

    check_templates(templates)
    with seeded(INIT_SEED):
        clip = create_clip(model_name, pretrained, device=device, file_tag=file_tag)
    prov, pre = clip.provenance, clip.preprocess
    preset = clip_preset(pre)
    dim = int(open_clip.get_model_config(model_name)["embed_dim"])
    weights = {NO_WEIGHTS: NO_WEIGHTS, "file": f"file-{(prov.sha256 or '')[:12]}"}
    classnames = [readable_class_name(c) for c in classes]
    identity = {
        "kind": "clip",
        "model": model_name,
        "pretrained": prov.pretrained,
        "weights_sha256": prov.sha256,
        **({"file_tag": file_tag} if prov.pretrained == "file" else {}),
        **({"init_seed": INIT_SEED} if prov.pretrained == NO_WEIGHTS else {}),
        "preprocess": _preprocess_record(preset, pre.interpolation, resize_mode=pre.resize_mode),
        "normalized": True,
        "dim": dim,
        "text": {
            "templates": list(templates),
            "classnames": classnames,
            "ensemble": "mean of the L2-normalised template embeddings, L2-normalised",
        },
    }
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else None  # one precision for images and texts
    record = {
        "weights_source": prov.source,
        "open_clip_version": prov.open_clip_version,
        "torch_version": torch.__version__,
        "precision": precision_name(dtype, "images and class texts"),
    }
    model = clip.model

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(dev, dtype):
            x = model.encode_image(images)
        return F.normalize(x.float(), dim=-1).cpu()

    def text() -> np.ndarray:
        with torch.inference_mode(), autocast(dev, dtype):
            return encode_class_texts(model, clip.tokenizer, classnames, templates).numpy()

    tag = create_tag(model_name, weights.get(prov.pretrained, prov.pretrained))
    return Encoder("clip", tag, preset, dim, identity, record, encode, text)


def create_feature_encoder(
    backbone: str,
    *,
    weights: str | None = None,
    preset: str = "cole448",
    image_size: int | None = None,
    normalize: bool = False,
    device: str | torch.device = "cpu",
) -> Encoder:
    """A timm backbone's pooled features as a cache encoder (channels-last: 3x faster on CPU)."""
    import timm

    from models.backbones import create_backbone

    _check_preset(preset, image_size)
    with seeded(INIT_SEED):
        model, info = create_backbone(backbone, weights=weights)
    model = model.to(device).to(memory_format=torch.channels_last)
    p = feature_preset(info, preset, image_size)
    if info.weights == NO_WEIGHTS:
        pretrained = NO_WEIGHTS
    elif info.weights.startswith("file:"):
        pretrained = "file"
    else:
        pretrained = model.pretrained_cfg.get("tag") or "pretrained"
    hub = info.weights if info.weights.startswith("hub:") else None
    identity = {
        "kind": "features",
        "model": backbone,
        "timm_model": info.timm_name,
        "pretrained": pretrained,
        "weights_sha256": info.weights_sha256,
        **({"weights_hub": hub} if hub else {}),
        **({"init_seed": INIT_SEED} if pretrained == NO_WEIGHTS else {}),
        "preprocess": _preprocess_record(
            p, info.interpolation if preset == BACKBONE_PRESET else ""
        ),
        "pooling": "global average (timm num_classes=0)",
        "normalized": normalize,
        "dim": info.feature_dim,
    }
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    record = {
        "weights_source": info.weights,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "precision": precision_name(dtype, "features"),
    }

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(dev, dtype):
            x = model(images.contiguous(memory_format=torch.channels_last))
        x = x.float()
        return (F.normalize(x, dim=-1) if normalize else x).cpu()

    wpart = f"file-{info.weights_sha256[:12]}" if pretrained == "file" else pretrained
    tag = create_tag(backbone, wpart, p.name, "l2" if normalize else "")
    return Encoder("features", tag, p, info.feature_dim, identity, record, encode)


def precision_name(dtype: torch.dtype | None, what: str) -> str:
    """How an encoder computed, for meta.json: CLIP in fp16 autocast on GPUs as CLIP's releases
    do (bf16's coarser mantissa moves VLPL's 100x cosines), the same for its class texts."""
    if dtype is None:
        return f"float32 ({what})"
    return f"{str(dtype).removeprefix('torch.')} autocast ({what}), float32 outputs"


def clip_preset(pre: ClipPreprocess) -> Preset:
    """A CLIP model's own eval preprocessing as a loader preset (resize the shorter side,
    centre crop)."""
    h, w = pre.image_size
    if pre.resize_mode != "shortest" or h != w:
        raise WsmlError(
            f"CLIP preprocessing {pre.resize_mode!r} at {h}x{w} is not supported by the loader "
            "(square images, resize of the shorter side and centre crop only)"
        )
    return center_crop_preset(h, pre.mean, pre.std, pre.interpolation, name=f"clip{h}")


def feature_preset(info, preset: str, image_size: int | None) -> Preset:
    """A registered preset's geometry with the backbone's mean/std, or (``backbone``) the
    backbone's own eval resize + centre crop at its input size or ``image_size``."""
    if preset == BACKBONE_PRESET:
        size = image_size or int(info.input_size[-1])
        return center_crop_preset(
            size, info.mean, info.std, info.interpolation, name=f"{BACKBONE_PRESET}{size}"
        )
    return dataclasses.replace(get_preset(preset), mean=tuple(info.mean), std=tuple(info.std))


def _check_preset(preset: str, image_size: int | None) -> None:
    if preset != BACKBONE_PRESET:
        if preset not in PRESETS:
            choices = ", ".join([*PRESETS.names(), BACKBONE_PRESET])
            raise WsmlError(f"unknown preset {preset!r}. Choices: {choices}")
        if image_size is not None:
            raise WsmlError(
                f"--image-size goes with --preset {BACKBONE_PRESET} ({preset} has its own)"
            )
    if image_size is not None and image_size < 8:
        raise WsmlError(f"--image-size {image_size} is too small")


def _preprocess_record(p: Preset, interpolation: str, **extra) -> dict:
    out = {"preset": p.name, "size": p.size, "mean": list(p.mean), "std": list(p.std)}
    if interpolation:
        out["interpolation"] = interpolation
    return {**out, **extra, "summary": p.summary}


# ---- names, templates, summaries ----


def check_model_name(kind: str, name: str) -> None:
    """An unknown CLIP model ("clip") or backbone ("backbone") fails listing close matches and
    the choices."""
    if kind == "clip":
        from models.clip import check_clip_name

        check_clip_name(name)
        return
    from models.backbones import BACKBONES, check_timm_name

    if name not in BACKBONES:
        check_timm_name(name)


def check_templates(templates: Sequence[str]) -> None:
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise WsmlError(f"each prompt template needs exactly one '{{}}' for the class name: {bad}")


def read_templates(path: str | Path) -> tuple[str, ...]:
    """Prompt templates from a file: one per line, blank lines and ``#`` comments skipped."""
    if not Path(path).is_file():
        raise WsmlError(f"prompt templates file {path} does not exist")
    lines = [ln.strip() for ln in read_utf8(Path(path)).splitlines()]
    templates = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    if not templates:
        raise WsmlError(f"{path} holds no prompt templates")
    check_templates(templates)
    return templates


def summary_lines(r: dict) -> list[str]:
    """What the cache commands print."""
    rows = ", ".join(f"{s} {n}" for s, n in r["splits"].items())
    norm = "L2-normalised" if r["normalized"] else "not normalised"
    lines = [f"{r['folder']}: {rows} rows, dim {r['dim']} (float16, {norm})"]
    if r.get("crops"):
        g = r["crops"]
        lines.append(f"with the {g}x{g} tiles of every training image ({g * g} embeddings a row)")
    if r["status"] == "cached":
        return lines + [
            "already complete with these settings: nothing to do (--overwrite redoes it)"
        ]
    procs = f"{r['world_size']} processes" if r["world_size"] > 1 else "1 process"
    resumed = f"; resumed with {r['resumed_chunks']} of {r['chunks']} chunks done" * bool(
        r["resumed_chunks"]
    )
    lines.append(
        f"embedded {r['images']} images in {r['seconds']:.1f}s ({r['images_per_s']:.1f} images/s, "
        f"{procs}){resumed}"
    )
    return lines
