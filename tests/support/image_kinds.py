"""Image files of the kinds users have (the reader's cases, shards/convert/images.py ``read_rgb``), made
from one RGB picture: 16-bit PNGs (grey and RGB), a palette PNG with transparency, RGBA, grey
and CMYK JPEGs, and JPEGs in each EXIF orientation, stored turned so that they show the
picture upright. Each kind comes with the pixels a reader must give for it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# EXIF orientation -> how the stored pixels are made from the upright picture (the inverse of
# what a reader does with the tag)
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric RGB picture (uint8 (H, W, 3)) that JPEG keeps well."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [
        127.5 + 100 * np.sin(x / (width / 3.0) + phase[0]) * np.cos(y / (height / 2.0)),
        255 * x / max(1, width - 1),
        127.5 + 110 * np.sin((x + 2 * y) / 9.0 + phase[2]),
    ]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 (H, W) grey or (H, W, 3) RGB samples (Pillow writes no 16-bit
    RGB, so the file is assembled here)."""
    grey = samples.ndim == 2
    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 0 if grey else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def jpeg_turned(upright: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    """A JPEG whose stored pixels show ``upright`` once its EXIF ``orientation`` is applied."""
    im = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    exif = im.getexif()
    exif[0x0112] = orientation
    return _save(im, "JPEG", quality=quality, exif=exif.tobytes())


def image_kinds(a: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, file suffix) of every kind, all showing RGB uint8 ``a`` (H, W, 3)
    (or its first channel as grey)."""
    grey = a[..., 0]
    palette = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    kinds = {
        "plain": (_save(Image.fromarray(a), "JPEG", quality=95), ".jpg"),
        "grey-jpeg": (_save(Image.fromarray(grey), "JPEG", quality=95), ".jpg"),
        "cmyk": (_save(Image.fromarray(a).convert("CMYK"), "JPEG", quality=95), ".jpg"),
        "grey16": (png16(grey.astype(np.uint16) * 256 + 100), ".png"),
        "rgb16": (png16(a.astype(np.uint16) * 256 + 200), ".png"),
        "palette-alpha": (_save(palette, "PNG", transparency=bytes(range(0, 256, 16))), ".png"),
        "rgba": (_save(Image.fromarray(np.dstack([a, a[..., 1:2]])), "PNG"), ".png"),
    }
    for o in range(2, 9):
        kinds[f"exif{o}"] = (jpeg_turned(a, o), ".jpg")
    return kinds


def reencoded(name: str) -> bool:
    """Whether a shard stores the kind re-encoded (not a JPEG), rather than its bytes."""
    return name in ("grey16", "rgb16", "palette-alpha", "rgba")
