"""Augmentation presets, each matching the protocol of the papers that use it (METHODS.md).

A preset is written twice, side by side: as DALI operators (``dali``, CPU or GPU) and as PIL
operations for the PyTorch fallback (``pil``). Both end in a ``size``x``size`` RGB image; the
loaders normalise with ``mean``/``std`` (0-1 scale) and lay it out NCHW. Eval is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shards.errors import WsmlError
from shards.registry import Registry

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
    pil: Callable  # (PIL image, train, rng) -> (PIL image size x size, mirror: bool)


PRESETS: Registry[Preset] = Registry("augmentation preset")


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


def _cole_pil(img: Image.Image, train: bool, rng: np.random.Generator):
    img = img.resize((448, 448), Image.BILINEAR)
    return img, bool(train and rng.random() < 0.5)


PRESETS.register(
    Preset(
        "cole448",
        448,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "resize to 448x448 (bilinear, antialiased, no crop), flip in training; ImageNet mean/std",
        _cole_dali,
        _cole_pil,
    )
)


# ---- clip224: CLIP's own preprocessing (HSPNet, train = eval) ----


def _center_dali(size: int, interp: str):
    def ops(images, train: bool, device: str):
        from nvidia.dali import fn

        images = fn.resize(
            images,
            device=device,
            resize_shorter=size,
            interp_type=_dali_interp(interp),
            antialias=True,
        )
        return images, {"crop": (size, size)}

    return ops


def _center_pil(size: int, interp: str):
    resample = {"linear": Image.BILINEAR, "cubic": Image.BICUBIC}[interp]

    def ops(img: Image.Image, train: bool, rng: np.random.Generator):
        img = img.resize(_short_side_size(*img.size, size), resample)
        return _center_crop(img, size), False

    return ops


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
        _center_pil(size, interp),
    )


def _short_side_size(w: int, h: int, short: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side becomes ``short``, the other truncated."""
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


PRESETS.register(
    Preset(
        "clip224",
        224,
        CLIP_MEAN,
        CLIP_STD,
        "bicubic resize of the shorter side to 224, centre crop 224, CLIP mean/std (train = eval)",
        _center_dali(224, "cubic"),
        _center_pil(224, "cubic"),
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


def _asl_pil(img: Image.Image, train: bool, rng: np.random.Generator):
    if not train:
        return img.resize((448, 448), Image.BILINEAR), False
    img = img.resize((512, 512), Image.BICUBIC)
    side = int(rng.choice(ASL_CROPS))
    x, y = (int(round(rng.random() * (512 - side))) for _ in range(2))
    img = img.crop((x, y, x + side, y + side)).resize((448, 448), Image.BILINEAR)
    return img, bool(rng.random() < 0.5)


PRESETS.register(
    Preset(
        "asl448",
        448,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "train: resize 512x512 (bicubic), random square crop of side 512/448/384/320/256, "
        "resize 448, flip; eval: resize 448x448",
        _asl_dali,
        _asl_pil,
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


def _puzzle_pil(img: Image.Image, train: bool, rng: np.random.Generator):
    longer = int(rng.integers(320, 641)) if train else 512
    w, h = img.size
    scale = longer / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    fx, fy = (rng.random(), rng.random()) if train else (0.5, 0.5)
    # anchored as DALI anchors it: a crop larger than the image places the image at an offset;
    # the padding is the mean colour, i.e. (almost exactly) 0 after normalisation
    x, y = int(round(fx * (w - 512))), int(round(fy * (h - 512)))
    if 0 <= x <= w - 512 and 0 <= y <= h - 512:
        out = img.crop((x, y, x + 512, y + 512))
    else:
        out = Image.new("RGB", (512, 512), tuple(round(255 * m) for m in IMAGENET_MEAN))
        out.paste(img, (-x, -y))
    return out, bool(train and rng.random() < 0.5)


PRESETS.register(
    Preset(
        "puzzle512",
        512,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "train: resize the longer side to 320-640 (bicubic), flip, random crop 512 padded with 0 "
        "after normalisation; eval: longer side 512, centred and padded",
        _puzzle_dali,
        _puzzle_pil,
    )
)
