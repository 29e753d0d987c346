"""The tar/index encoding of a shard: one WebDataset tar written with fixed headers (the bytes
depend on content alone), its DALI index and its sha256."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default record size; tarfile pads the archive to it too
WRITEBACK = 8 << 20  # start the disk writing every 8 MiB of a shard


def tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


_TEMPLATE = bytearray(tarfile_header("x", 0))
_TEMPLATE[0:100] = bytes(100)
_TEMPLATE[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
_TEMPLATE[124:136] = bytes(12)
_TEMPLATE_SUM = sum(_TEMPLATE)  # the checksum of a header is this + its name and size fields


def tar_header(name: str, size: int) -> bytes:
    """A USTAR header with fixed owner, mode and time, so the bytes depend on content alone.
    Byte-identical to ``tarfile``'s, filled in from a template (5x faster per sample)."""
    raw = name.encode()
    if len(raw) > 100 or size >= 8**11:
        return tarfile_header(name, size)
    size_field = b"%011o\0" % size
    h = bytearray(_TEMPLATE)
    h[0 : len(raw)] = raw
    h[124:136] = size_field
    h[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return bytes(h)


_ZEROS = bytes(2 * RECORD)


class TarShardWriter:
    """Writes one WebDataset tar and collects its DALI index (wds2idx v1.2) and sha256.

    One ``writev`` per sample straight from the image bytes (no copy through a buffer).
    ``early_writeback``: start the disk writing every ``WRITEBACK`` bytes, so that a flush
    when the shard is published waits only for its tail; without a flush (``--no-fsync``) it
    would only spend CPU on disk writes the page cache can defer, as ``tar cf``'s are."""

    def __init__(self, path: Path, early_writeback: bool = True):
        self.path = path
        self._early = early_writeback and hasattr(os, "posix_fadvise")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._sha = hashlib.sha256()
        self._pos = self._flushed = 0
        self._index: list[str] = []

    def _write(self, buffers: list[bytes]) -> None:
        for b in buffers:
            self._sha.update(b)
        want = sum(len(b) for b in buffers)
        try:
            done = os.writev(self._fd, buffers)
            if done < want:  # a short write (rare: signals, nearly full disks): finish it
                rest = memoryview(b"".join(buffers))
                while done < want:
                    done += os.write(self._fd, rest[done:])
        except OSError as e:  # name the file (a full disk, a size limit)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self._pos += want
        if self._early and self._pos - self._flushed >= WRITEBACK:
            # Let the disk write what we have while we go on, so the fsync at publish time
            # waits only for the tail (Linux starts writeback of dirty pages on DONTNEED).
            os.posix_fadvise(
                self._fd, self._flushed, self._pos - self._flushed, os.POSIX_FADV_DONTNEED
            )
            self._flushed = self._pos

    def add(self, key: str, members: Iterable[tuple[str, bytes]]) -> None:
        """Add one sample: its members ``(extension, bytes)`` in the given order."""
        parts, buffers, pos = [], [], self._pos
        for ext, data in members:
            name = f"{key}.{ext}"
            buffers.append(tar_header(name, len(data)))
            parts.append(f"{ext} {pos + BLOCK} {len(data)} {name}")
            buffers.append(data)
            pad = -len(data) % BLOCK
            if pad:
                buffers.append(_ZEROS[:pad])
            pos += BLOCK + len(data) + pad
        self._write(buffers)
        self._index.append(" ".join(parts))

    def close(self) -> tuple[str, int, str]:
        """Finish the archive; return (sha256, bytes, index text)."""
        end = 2 * BLOCK
        end += -(self._pos + end) % RECORD
        self._write([_ZEROS[:end]])
        os.close(self._fd)
        self._fd = -1
        index = f"v1.2 {len(self._index)}\n" + "".join(line + "\n" for line in self._index)
        return self._sha.hexdigest(), self._pos, index

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self.path.unlink(missing_ok=True)
