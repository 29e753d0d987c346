"""Cheap image checks for conversion: JPEG structure and size without decoding, the optional
re-encode (``--max-side``, non-JPEG sources), and the one image reader (:func:`read_rgb`) that
every image file goes through: the shard writer's re-encode, ``predict`` on image files, and
export's ``preprocess.py`` (a copy of its source).

The structural check catches what real downloads get wrong (truncated files, HTML error
pages saved as .jpg, empty files) at a fraction of a decode's cost; ``check="decode"``
decodes fully. ``verify`` always decodes.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

HEAD_BYTES = 1 << 13  # JPEG headers are small; files with a larger EXIF block are read whole
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


class BadImage(Exception):
    """An image that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Probe:
    width: int
    height: int
    size: int  # bytes on disk
    is_jpeg: bool
    mtime_ns: int = -1  # modification time of the file probed (-1: not from a file)


def parse_jpeg_header(head: bytes) -> tuple[int, int, int]:
    """Walk the JPEG segments up to the start of scan; return (width, height, sos_offset)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] != 0xD8:
        raise BadImage("not a JPEG (no SOI marker)")
    pos, n = 2, len(head)
    width = height = None
    while pos < n:
        if head[pos] != 0xFF:
            raise BadImage(f"corrupt JPEG header (no marker at byte {pos})")
        while pos < n and head[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = head[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            raise BadImage("JPEG ends before its image data (EOI before SOS)")
        if pos + 2 > n:
            break
        length = (head[pos] << 8) | head[pos + 1]
        if length < 2:
            raise BadImage(f"corrupt JPEG segment length at byte {pos}")
        if marker in _SOF:
            if pos + 7 > n:
                break
            height = (head[pos + 3] << 8) | head[pos + 4]
            width = (head[pos + 5] << 8) | head[pos + 6]
        if marker == 0xDA:
            if width is None or height is None:
                raise BadImage("JPEG has no frame header (SOF) before its scan")
            if width == 0 or height == 0:
                raise BadImage(f"JPEG declares an empty image ({width}x{height})")
            return width, height, pos + length
        pos += length
    raise _Incomplete()


class _Incomplete(Exception):
    """The header did not fit in the bytes read so far."""


def probe_bytes(data: bytes) -> tuple[int, int]:
    """(width, height) of complete JPEG bytes; raises BadImage when truncated or malformed."""
    width, height, sos = _parse_all(data)
    if data.rfind(b"\xff\xd9", sos) < 0:
        raise BadImage("truncated JPEG (no EOI marker after the image data)")
    return width, height


def _parse_all(data: bytes) -> tuple[int, int, int]:
    try:
        return parse_jpeg_header(data)
    except _Incomplete:
        raise BadImage("truncated JPEG (file ends inside its header)") from None


def probe_file(path: str, check: str = "header") -> Probe:
    """Probe one image file. JPEGs are checked structurally (or decoded with ``check="decode"``);
    other formats Pillow can read are decoded and flagged for re-encoding."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return _probe_fd(fd, check)
        finally:
            os.close(fd)
    except OSError as e:
        raise BadImage(f"cannot read file: {e.strerror or e}") from None


def _probe_fd(fd: int, check: str) -> Probe:
    st = os.fstat(fd)
    size = st.st_size
    head = os.pread(fd, HEAD_BYTES, 0)
    if check == "decode" or size <= len(head) or head[:2] != b"\xff\xd8":
        return _probe_full(_pread_all(fd, size), size, check, st.st_mtime_ns)
    try:
        width, height, sos = parse_jpeg_header(head)
    except _Incomplete:  # very large APP segments: read it all
        return _probe_full(_pread_all(fd, size), size, check, st.st_mtime_ns)
    if os.pread(fd, 2, size - 2) != b"\xff\xd9":  # bytes after EOI happen; look for it
        if _pread_all(fd, size).rfind(b"\xff\xd9", sos) < 0:
            raise BadImage("truncated JPEG (no EOI marker after the image data)")
    return Probe(width, height, size, True, st.st_mtime_ns)


def _pread_all(fd: int, size: int) -> bytes:
    parts, pos = [], 0
    while pos < size and (chunk := os.pread(fd, size - pos, pos)):
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


def _probe_full(data: bytes, size: int, check: str, mtime_ns: int = -1) -> Probe:
    if size == 0:
        raise BadImage("empty file")
    if data[:2] == b"\xff\xd8":
        width, height = probe_bytes(data)
        if check == "decode":
            decode_check(data)
        return Probe(width, height, size, True, mtime_ns)
    width, height = decode_check(data)  # PNG, WebP, ...: usable, stored re-encoded as JPEG
    return Probe(width, height, size, False, mtime_ns)


def decode_check(data: bytes) -> tuple[int, int]:
    """Decode fully, as the reader does (:func:`read_rgb`); the stored (width, height), before
    any EXIF turn. Raises BadImage naming the decoder's complaint."""
    return _decoded(data, lambda im: (rgb_image(im).load(), im.size)[1])


def read_rgb(data: bytes) -> np.ndarray:
    """The one image reader: the RGB uint8 pixels (H, W, 3) of an image file's bytes, the same
    that a shard of that image holds (JPEGs are stored as they are and decoded with their EXIF
    orientation by every loader; other formats are stored as a JPEG of these pixels). Raises
    BadImage naming the decoder's complaint."""
    return _decoded(data, lambda im: np.array(rgb_image(im)))  # writable: torch takes it as is


def _decoded(data: bytes, then):
    try:
        with Image.open(io.BytesIO(data)) as im:
            return then(im)
    except UnidentifiedImageError:  # its message is only a BytesIO repr
        raise BadImage(
            "does not decode: not a JPEG (no SOI marker) nor a format Pillow reads"
        ) from None
    except Exception as e:  # Pillow raises many types for corrupt data
        raise BadImage(f"does not decode: {' '.join(str(e).split())[:200]}") from None


EXIF_ORIENTATION = 0x0112


def rgb_image(im: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB by the readers' rules: EXIF orientation applied (as DALI's
    and torchvision's JPEG decoders apply it); 16-bit samples to 8 bits by their high byte (as
    Pillow reads 16-bit RGB); grey, palette and CMYK converted; alpha dropped, leaving the
    colour under it (as ``convert("RGB")`` and torchvision's folder loaders do)."""
    if im.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
        im = ImageOps.exif_transpose(im)
    if im.mode == "I" or im.mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF)
        high = np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(high.astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:  # its alpha is dropped below
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Stored size of an image under ``--max-side`` (aspect kept, longer side = max_side)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_jpeg(data: bytes, size: tuple[int, int], quality: int) -> bytes:
    """The reader's pixels (:func:`read_rgb`), resized to ``size`` (the stored width and height
    before an EXIF turn, which turns it too) if needed, as a baseline JPEG."""

    def encode(raw: Image.Image) -> bytes:
        im = rgb_image(raw)
        turned = im.size != raw.size  # an EXIF turn by 90 or 270 degrees
        want = (size[1], size[0]) if turned else size
        if im.size != want:
            im = im.resize(want, Image.Resampling.BICUBIC, reducing_gap=3.0)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
        return buf.getvalue()

    return _decoded(data, encode)


PHASH_SIDE = 32  # pHash: DCT of a 32x32 grey image, signs of its 8x8 lowest frequencies
_DCT = np.cos(
    np.pi * (2 * np.arange(PHASH_SIDE)[None, :] + 1) * np.arange(PHASH_SIDE)[:, None] / 64
)


def grey_thumbnail(data: bytes) -> np.ndarray | None:
    """The 32x32 grey image (float64) that the perceptual hash reads; None for data Pillow
    cannot decode (such images are refused elsewhere)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("L", (PHASH_SIDE, PHASH_SIDE))  # JPEG: decode in grey at 1/2..1/8 scale
            grey = im.convert("L").resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.BILINEAR)
    except Exception:  # Pillow raises many types for corrupt data
        return None
    return np.asarray(grey, dtype=np.float64)


def perceptual_hashes(data: bytes) -> tuple[int, bytes] | None:
    """The 64-bit perceptual hash (pHash: bits of the 8x8 lowest DCT frequencies of the 32x32
    grey image above their median), so re-encoded or resized copies of an image land a few bits
    apart, and a 256-bit one of the 16x16 lowest frequencies, which tells look-alike images
    (the demo's digits on one vignetted background) from copies better; None for data Pillow
    cannot decode."""
    pixels = grey_thumbnail(data)
    if pixels is None:
        return None
    dct = _DCT @ pixels @ _DCT.T
    low, fine = dct[:8, :8].ravel(), dct[:16, :16].ravel()
    phash = int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")
    return phash, np.packbits(fine > np.median(fine)).tobytes()
