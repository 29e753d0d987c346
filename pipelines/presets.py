"""Augmentation presets, each matching the protocol of the papers that use it (METHODS.md).

A preset is written twice, side by side: as DALI operators (``dali``, CPU or GPU) and as
operations on uint8 image tensors (``tensor``: torchvision's antialiased uint8 kernels), used by
the PyTorch fallback and by DALI on a CPU, whose own resampling is 6x slower (see the README).
Both end in a ``size`` x ``size`` RGB image (``views`` of them side by side: a grid of tiles,
``pipelines/tiles.py``); the loaders normalise it with ``mean``/``std`` (0-1 scale). Eval is
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shards.base.errors import WsmlError
from shards.base.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preset:
    name: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    summary: str
    dali: Callable  # (images HWC uint8, train, device) -> (images, crop args for normalize)
    tensor: Callable  # (uint8 (1,3,H,W), train, rng) -> (uint8 (1,3,size,size), mirror: bool)
    geometry: dict | None = None  # the eval operations as data: export's sidecar (eval_geometry)
    views: int = 1  # square images side by side: outputs are size x (views x size)


PRESETS: Registry[Preset] = Registry("augmentation preset")
KERNEL = (
    "torchvision's antialiased uint8 resize (separable, horizontal pass first; per pass int16 "
    "weights of the normalised filter, int32 sums rounded, shifted and clamped to uint8; "
    "bicubic a = -0.5), which export's preprocess.py implements in numpy"
)


def exact_geometry(height: int, width: int, interp: str) -> dict:
    """Eval geometry: a resize to ``height`` x ``width`` (aspect not kept), no crop."""
    return {"resize": "exact", "height": height, "width": width, "interpolation": interp}


def eval_geometry(preset: Preset) -> dict:
    """The preset's eval operations as data an application can follow exactly (export's
    sidecar and ``preprocess.py``): resize rule with its rounding, interpolation, crop."""
    if preset.geometry is None:
        raise WsmlError(f"preset {preset.name} does not describe its eval geometry")
    return {**preset.geometry, "antialias": True, "kernel": KERNEL}


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)


# ---- shared DALI pieces (imported lazily: the torch fallback must work without DALI) ----


def _dali_interp(kind: str):
    from nvidia.dali import types

    return {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC}[kind]


def _coin(train: bool):
    from nvidia.dali import fn

    return fn.random.coin_flip(probability=0.5) if train else 0


# ---- cole448: Cole et al. 2021 and the SPML line (Resize((448, 448)), flip) ----


def _cole_dali(images, train: bool, device: str):
    from nvidia.dali import fn

    images = fn.resize(
        images,
        device=device,
        resize_x=448,
        resize_y=448,
        interp_type=_dali_interp("linear"),
        antialias=True,
    )
    return images, {"mirror": _coin(train)}


def _resize(x, size, interp: str):
    """torchvision's antialiased resize (uint8 kernels; fastest on channels_last input)."""
    import torchvision.transforms.v2.functional as F

    mode = {"linear": F.InterpolationMode.BILINEAR, "cubic": F.InterpolationMode.BICUBIC}[interp]
    return F.resize(x, size, interpolation=mode, antialias=True)


def _crop_or_pad(x, top: int, left: int, size: int, fill: tuple[float, ...]):
    """A size x size window at (top, left) that may reach outside the image: the outside is
    ``fill`` (the mean colour, i.e. about 0 after normalisation), as DALI's pad policy does."""
    import torch

    h, w = x.shape[-2:]
    if 0 <= top <= h - size and 0 <= left <= w - size:
        return x[..., top : top + size, left : left + size]
    out = torch.empty((*x.shape[:-2], size, size), dtype=x.dtype)
    out[:] = torch.tensor([round(255 * f) for f in fill], dtype=x.dtype).view(-1, 1, 1)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + size, h), min(left + size, w)
    if t0 < t1 and l0 < l1:
        out[..., t0 - top : t1 - top, l0 - left : l1 - left] = x[..., t0:t1, l0:l1]
    return out


def _cole_tensor(x, train: bool, rng: np.random.Generator):
    return _resize(x, [448, 448], "linear"), bool(train and rng.random() < 0.5)


PRESETS.register(
    Preset(
        "cole448",
        448,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "resize to 448x448 (bilinear, antialiased, no crop), flip in training; ImageNet mean/std",
        _cole_dali,
        _cole_tensor,
        exact_geometry(448, 448, "bilinear"),
    )
)


# ---- clip224: CLIP's own preprocessing (HSPNet, train = eval) ----


def _center_dali(size: int, interp: str):
    def ops(images, train: bool, device: str):
        import nvidia.dali.math as dmath
        from nvidia.dali import fn, types

        # torchvision's Resize(int) truncates the longer side (500x380 -> 294x224) where DALI's
        # resize_shorter rounds it; compute the size as torchvision does and resize exactly
        shape = fn.cast(images.shape(device="cpu"), dtype=types.FLOAT)
        h, w = shape[0], shape[1]
        short = dmath.min(h, w)
        images = fn.resize(
            images,
            device=device,
            resize_x=dmath.floor(size * w / short),
            resize_y=dmath.floor(size * h / short),
            subpixel_scale=False,
            interp_type=_dali_interp(interp),
            antialias=True,
        )
        return images, {"crop": (size, size)}

    return ops


def _center_tensor(size: int, interp: str):
    def ops(x, train: bool, rng: np.random.Generator):
        h, w = x.shape[-2:]
        short = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        x = _resize(x, list(short), interp)
        h, w = x.shape[-2:]
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        return x[..., top : top + size, left : left + size], False

    return ops


def center_geometry(size: int, interp: str) -> dict:
    """Eval geometry of a shorter-side resize and centre crop (torchvision's Resize(int) and
    CenterCrop)."""
    return {
        "resize": "shorter",
        "size": size,
        "longer": "floor(size * longer / shorter), computed in float64",
        "interpolation": interp,
        "crop": {
            "size": size,
            "top": "round_half_even((height - size) / 2)",
            "left": "round_half_even((width - size) / 2)",
        },
    }


def center_crop_preset(
    size: int, mean=CLIP_MEAN, std=CLIP_STD, interpolation: str = "bicubic", name: str = ""
) -> Preset:
    """An encoder's own eval preprocessing (resize the shorter side, centre crop), e.g. any
    CLIP model's; not registered, built from the encoder's config."""
    interp = {"bicubic": "cubic", "bilinear": "linear"}.get(interpolation)
    if interp is None:
        raise WsmlError(f"unsupported interpolation {interpolation!r} (bicubic or bilinear)")
    return Preset(
        name or f"center{size}-{interpolation}",
        size,
        tuple(mean),
        tuple(std),
        f"{interpolation} resize of the shorter side to {size}, centre crop {size}",
        _center_dali(size, interp),
        _center_tensor(size, interp),
        center_geometry(size, interpolation),
    )


PRESETS.register(
    Preset(
        "clip224",
        224,
        CLIP_MEAN,
        CLIP_STD,
        "bicubic resize of the shorter side to 224, centre crop 224, CLIP mean/std (train = eval)",
        _center_dali(224, "cubic"),
        _center_tensor(224, "cubic"),
        center_geometry(224, "bicubic"),
    )
)


# ---- asl448: PU-MLC / ASL (Resize 512 bicubic, multi-scale crop, Resize 448, flip) ----

ASL_CROPS = (512, 448, 384, 320, 256)


def _asl_dali(images, train: bool, device: str):
    from nvidia.dali import fn, types

    if not train:
        images = fn.resize(
            images,
            device=device,
            size=(448, 448),
            interp_type=_dali_interp("linear"),
            antialias=True,
        )
        return images, {"mirror": 0}
    images = fn.resize(
        images, device=device, size=(512, 512), interp_type=_dali_interp("cubic"), antialias=True
    )
    side = fn.cast(fn.random.choice(list(ASL_CROPS)), dtype=types.FLOAT)
    images = fn.crop(
        images,
        device=device,
        crop_h=side,
        crop_w=side,
        crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
        crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
    )
    images = fn.resize(
        images, device=device, size=(448, 448), interp_type=_dali_interp("linear"), antialias=True
    )
    return images, {"mirror": _coin(True)}


def _asl_tensor(x, train: bool, rng: np.random.Generator):
    if not train:
        return _resize(x, [448, 448], "linear"), False
    x = _resize(x, [512, 512], "cubic")
    side = int(rng.choice(ASL_CROPS))
    left, top = (int(round(rng.random() * (512 - side))) for _ in range(2))
    x = _resize(x[..., top : top + side, left : left + side], [448, 448], "linear")
    return x, bool(rng.random() < 0.5)


PRESETS.register(
    Preset(
        "asl448",
        448,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "train: resize 512x512 (bicubic), random square crop of side 512/448/384/320/256, "
        "resize 448, flip; eval: resize 448x448",
        _asl_dali,
        _asl_tensor,
        exact_geometry(448, 448, "bilinear"),
    )
)


# ---- puzzle512: Puzzle-CAM / OASS (random resize 320-640 of the long side, flip, crop 512) ----


def _puzzle_dali(images, train: bool, device: str):
    from nvidia.dali import fn, types

    longer = (
        fn.cast(fn.random.uniform(range=(320, 641), dtype=types.INT32), dtype=types.FLOAT)
        if train
        else 512.0
    )
    images = fn.resize(
        images,
        device=device,
        resize_longer=longer,
        interp_type=_dali_interp("cubic"),
        antialias=True,
    )
    crop = {"crop": (512, 512), "out_of_bounds_policy": "pad", "mirror": _coin(train)}
    if train:
        crop["crop_pos_x"] = fn.random.uniform(range=(0.0, 1.0))
        crop["crop_pos_y"] = fn.random.uniform(range=(0.0, 1.0))
    return images, crop


def _puzzle_tensor(x, train: bool, rng: np.random.Generator):
    longer = int(rng.integers(320, 641)) if train else 512
    h, w = x.shape[-2:]
    scale = longer / max(w, h)
    x = _resize(x, [max(1, round(h * scale)), max(1, round(w * scale))], "cubic")
    h, w = x.shape[-2:]
    fx, fy = (rng.random(), rng.random()) if train else (0.5, 0.5)
    # anchored as DALI anchors it: a crop larger than the image places the image at an offset
    left, top = int(round(fx * (w - 512))), int(round(fy * (h - 512)))
    x = _crop_or_pad(x, top, left, 512, IMAGENET_MEAN)
    return x, bool(train and rng.random() < 0.5)


PRESETS.register(
    Preset(
        "puzzle512",
        512,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "train: resize the longer side to 320-640 (bicubic), flip, random crop 512 padded with 0 "
        "after normalisation; eval: longer side 512, centred and padded",
        _puzzle_dali,
        _puzzle_tensor,
        {
            "resize": "longer",
            "size": 512,
            "sides": "max(1, round_half_even(side * (size / longer))), in float64",
            "interpolation": "bicubic",
            "crop": {
                "size": 512,
                "top": "round_half_even((height - size) / 2), may be negative",
                "left": "round_half_even((width - size) / 2), may be negative",
                "pad": [round(255 * m) for m in IMAGENET_MEAN],
            },
        },
    )
)
