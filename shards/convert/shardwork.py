"""What a worker process runs: one shard written from its plan, and published.

Kept apart from the planning code so that workers import little (no pyarrow)."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from shards.base.errors import WsmlError
from shards.base.fileio import (
    publish,
    tmp_path_for,
    write_bytes_atomic,
    write_json_atomic,
)
from shards.convert.images import BadImage, encode_jpeg, probe_bytes
from shards.convert.tar_writer import TarShardWriter

PROGRESS = "_progress"


@dataclass(frozen=True)
class ShardTask:
    out: str
    name: str
    items: tuple  # (key, path, row, width, height, reencode) per sample, in tar order
    quality: int
    plan_id: str
    durable: bool = True  # fsync the shard before publishing it


def write_one_shard(task: ShardTask) -> dict:
    """Write one tar (+ its DALI index) and publish it; runs in a worker process."""
    out = Path(task.out)
    tar_path = out / f"{task.name}.tar"
    writer = TarShardWriter(tmp_path_for(tar_path), early_writeback=task.durable)
    try:
        for key, path, row, w, h, reencode in task.items:
            data = _read_image(path, key)
            if reencode:
                data = _reencoded(data, (w, h), task.quality, key, path)
            writer.add(key, (("jpg", data), ("row", struct.pack("<q", row))))
        sha, nbytes, index = writer.close()
    except BaseException:
        writer.abort()
        raise
    write_bytes_atomic(out / f"{task.name}.idx", index.encode(), task.durable)
    publish(writer.path, tar_path, task.durable)
    info = {
        "name": task.name,
        "num_samples": len(task.items),
        "bytes": nbytes,
        "sha256": sha,
        "index_sha256": hashlib.sha256(index.encode()).hexdigest(),
        "plan_id": task.plan_id,
    }
    write_json_atomic(out / PROGRESS / "done" / f"{task.name}.json", info, task.durable)
    return info


def _read_image(path: str, key: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = _read_all(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise WsmlError(f"cannot read image {key!r} at {path}: {e.strerror or e}") from None
    if data[:2] == b"\xff\xd8":
        try:
            probe_bytes(data)
        except BadImage as e:  # the file changed after the check pass
            raise WsmlError(f"bad image {key!r} at {path}: {e}") from None
    return data


def _reencoded(data: bytes, size: tuple[int, int], quality: int, key: str, path: str) -> bytes:
    try:
        return encode_jpeg(data, size, quality)
    except BadImage as e:  # the file changed after the check pass
        raise WsmlError(f"bad image {key!r} at {path}: {e}") from None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    data = os.read(fd, size + 1)  # asking one byte more tells EOF in the same call
    if len(data) == size:
        return data
    parts = [data]  # a short read, or a file that grew meanwhile
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)
