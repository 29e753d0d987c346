"""Preprocessing for an exported wsml model: image files in, the model's input out (float32
NCHW, RGB), the same numbers ``cli.py predict`` gives the network. Needs only Pillow and numpy.

    from preprocess import load_batch
    x = load_batch(["a.jpg", "b.png"])  # (2, 3, S, S) float32
    probabilities = 1 / (1 + np.exp(-logits))  # the model gives logits

``python preprocess.py IMAGE...`` prints each image's input shape and mean.

SPEC is the sidecar's ``preprocessing``: the reader's rules, the resize rule with its rounding
and interpolation, the crop, the scale, mean and std. The resize is torchvision's antialiased
uint8 kernel (the one wsml runs), written here in numpy so that the pixels are the same.
(This file is written by ``cli.py export`` from wsml's ``train/use/app_preprocess.py`` and the image
reader of ``shards/convert/images.py``; it imports nothing of wsml.)
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageOps  # noqa: F401  ImageOps: the reader's EXIF turn

SPEC: dict = {}  # the sidecar's "preprocessing" (filled in by export)

# {READER}: the reader's rgb_image(im) -> an 8-bit RGB PIL image (filled in by export)


def read_image(path) -> np.ndarray:
    """An image file's RGB uint8 pixels (H, W, 3), by the reader's rules (SPEC["read"])."""
    with Image.open(path) as im:
        return np.asarray(rgb_image(im))  # noqa: F821  (inserted above by export)


def _filter(interpolation: str):
    if interpolation == "bilinear":
        return 1.0, lambda x: np.maximum(0.0, 1.0 - np.abs(x))
    a = -0.5  # the antialiased bicubic's (Pillow's), not the -0.75 of plain upsampling

    def cubic(x):
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = (((x - 5) * x + 8) * x - 4) * a
        return np.where(x < 1, near, np.where(x < 2, far, 0.0))

    return 2.0, cubic


def _weights(size_in: int, size_out: int, interpolation: str):
    """Per output index: the first input index, and int16-range weights with their precision
    (bits), as torchvision's uint8 kernel computes them (float64, then rounded)."""
    support, f = _filter(interpolation)
    scale = size_in / size_out
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    support = support * scale if scale >= 1.0 else support
    center = scale * (np.arange(size_out) + 0.5)
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(center + support + 0.5), size_in).astype(np.int64)
    taps = np.arange(int((hi - lo).max()))
    w = f((lo[:, None] + taps - center[:, None] + 0.5) * invscale)
    w = np.where(taps < (hi - lo)[:, None], w, 0.0)
    total = w.sum(1, keepdims=True)
    w = np.where(total != 0, w / np.where(total != 0, total, 1), 0.0)
    bits = 0
    while bits < 22 and int(0.5 + w.max() * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    q = np.where(w < 0, np.trunc(w * (1 << bits) - 0.5), np.trunc(w * (1 << bits) + 0.5))
    return lo, q.astype(np.int64), bits


def _pass(a: np.ndarray, size_out: int, axis: int, interpolation: str) -> np.ndarray:
    """One separable pass along ``axis`` (1: width, 0: height) of uint8 (H, W, 3)."""
    lo, q, bits = _weights(a.shape[axis], size_out, interpolation)
    x = np.moveaxis(a, axis, 0).astype(np.int64)
    acc = np.full((size_out, *x.shape[1:]), 1 << (bits - 1), dtype=np.int64)
    last = x.shape[0] - 1
    for k in range(q.shape[1]):
        acc += q[:, k].reshape(-1, 1, 1) * x[np.minimum(lo + k, last)]
    out = np.clip(acc >> bits, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize(a: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    """torchvision's antialiased resize of uint8 (H, W, 3): width first, then height; a side
    that keeps its size is not resampled."""
    if width != a.shape[1]:
        a = _pass(a, width, 1, interpolation)
    if height != a.shape[0]:
        a = _pass(a, height, 0, interpolation)
    return a


def _crop(a: np.ndarray, crop: dict) -> np.ndarray:
    """A size x size window centred by round-half-even offsets; outside the image (a negative
    offset), the pad colour."""
    size, (h, w) = crop["size"], a.shape[:2]
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # Python's round: half-even
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.asarray(crop.get("pad") or [0, 0, 0], np.uint8)
    t0, l0, t1, l1 = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
    out[t0 - top : t1 - top, l0 - left : l1 - left] = a[t0:t1, l0:l1]
    return out


def geometry(a: np.ndarray, spec: dict) -> np.ndarray:
    """SPEC["geometry"] on uint8 (H, W, 3): the resize rule, then the crop."""
    h, w = a.shape[:2]
    rule, interp = spec["resize"], spec["interpolation"]
    if rule == "exact":
        size = (spec["height"], spec["width"])
    elif rule == "shorter":  # torchvision's Resize(int): the longer side truncated
        s = spec["size"]
        size = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
    elif rule == "longer":
        scale = spec["size"] / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        raise ValueError(f"unknown resize rule {rule!r}")
    a = resize(a, size[0], size[1], interp)
    return _crop(a, spec["crop"]) if spec.get("crop") else a


def normalise(a: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 (S, S, 3) -> float32 (3, S, S): (x / 255 - mean) / std, as x * scale + shift."""
    mean, std = (np.asarray(spec[k], np.float32).reshape(3, 1, 1) for k in ("mean", "std"))
    scale, shift = np.float32(1) / (np.float32(255) * std), -mean / std
    return a.transpose(2, 0, 1).astype(np.float32) * scale + shift


def preprocess(path, spec: dict | None = None) -> np.ndarray:
    """One image file as the model's input (3, S, S) float32."""
    spec = spec or SPEC
    return normalise(geometry(read_image(path), spec["geometry"]), spec)


def load_batch(paths, spec: dict | None = None) -> np.ndarray:
    """Image files as one batch (N, 3, S, S) float32."""
    return np.stack([preprocess(p, spec) for p in paths])


if __name__ == "__main__":
    for name in sys.argv[1:]:
        x = preprocess(name)
        print(f"{name}: {tuple(x.shape)} mean {float(x.mean()):.4f}")
