"""Each image's hashes for ``audit``'s duplicate checks: the sha256 of its stored bytes and its
64- and 256-bit perceptual hashes (``shards.convert.images.perceptual_hashes``).

``shard`` does not compute them: decoding every image for its perceptual hash cost 4x the rest of
a conversion, which every user runs and few audit. ``audit`` computes them from the tars instead,
in ``verify``'s pass over every shard (in parallel), and caches them beside the manifest, one
file per shard under ``image-hashes/``, keyed by the shard's sha256: an unchanged shard is never
hashed twice, a rewritten one always is. (Shard sets written while ``shard`` computed hashes
carry ``image_sha256`` and ``phash`` columns in their label tables; ``audit`` computes its own
from the tars for them too, the same values for every image stored as its original bytes.)
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.base.fileio import publish, removed_on_error, tmp_path_for
from shards.convert.images import perceptual_hashes

HASH_DIR = "image-hashes"
HASH_VERSION = 1  # bump when perceptual_hashes changes: cached hashes are then computed again


@dataclass(frozen=True)
class ShardHashes:
    """The hashes of one shard's images, in tar order."""

    tar_sha256: str  # of the tar they were computed from
    rows: np.ndarray  # int64 (n,): each image's row in its split's table
    sha256: np.ndarray  # uint8 (n, 32): of the image bytes
    phash: np.ndarray  # uint64 (n,)
    fine: np.ndarray  # uint8 (n, 32): the 256-bit perceptual hash
    decoded: np.ndarray  # bool (n,): False where the image does not decode (no perceptual hash)


@dataclass(frozen=True)
class SplitHashes:
    """The hashes of one split's images in row order; ``known`` is False for rows no shard
    holds, ``decoded`` also for images that do not decode (``verify`` reports both)."""

    sha256: np.ndarray  # uint8 (N, 32)
    phash: np.ndarray  # uint64 (N,)
    fine: np.ndarray  # uint8 (N, 32)
    known: np.ndarray  # bool (N,)
    decoded: np.ndarray  # bool (N,)


def hash_images(samples: list[tuple[int, bytes]], tar_sha256: str) -> ShardHashes:
    """Hash ``(row, image bytes)`` pairs; runs in ``verify``'s workers."""
    rows = np.array([r for r, _ in samples], dtype=np.int64)
    n = len(samples)
    sha, fine = np.zeros((n, 32), np.uint8), np.zeros((n, 32), np.uint8)
    phash, decoded = np.zeros(n, np.uint64), np.zeros(n, bool)
    for k, (_, data) in enumerate(samples):
        sha[k] = np.frombuffer(hashlib.sha256(data).digest(), np.uint8)
        hashes = perceptual_hashes(data)
        if hashes is not None:
            phash[k], fine[k], decoded[k] = hashes[0], np.frombuffer(hashes[1], np.uint8), True
    return ShardHashes(tar_sha256, rows, sha, phash, fine, decoded)


def cache_path(root: Path, tar: str) -> Path:
    return root / HASH_DIR / f"{Path(tar).stem}.npz"


def read_cached(root: Path, shard: dict) -> ShardHashes | None:
    """The cached hashes of a manifest's shard entry, if they were computed from its bytes."""
    path = cache_path(root, shard["tar"])
    try:
        with np.load(path) as z:
            if int(z["version"]) != HASH_VERSION or str(z["tar_sha256"]) != shard["sha256"]:
                return None
            fields = (z["rows"], z["sha256"], z["phash"], z["fine"], z["decoded"])
            return ShardHashes(str(z["tar_sha256"]), *fields)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, unreadable
        return None  # or not ours: computed again


def write_cached(root: Path, tar: str, hashes: ShardHashes) -> None:
    """Cache one shard's hashes (atomically; raises OSError on read-only storage)."""
    path = cache_path(root, tar)
    path.parent.mkdir(exist_ok=True)
    tmp = tmp_path_for(path)
    with removed_on_error(tmp, path):
        with open(tmp, "wb") as f:
            np.savez(
                f,
                version=np.int64(HASH_VERSION),
                tar_sha256=np.array(hashes.tar_sha256),
                rows=hashes.rows,
                sha256=hashes.sha256,
                phash=hashes.phash,
                fine=hashes.fine,
                decoded=hashes.decoded,
            )
        publish(tmp, path, durable=False)  # a cache: a lost file is computed again


def from_shards(sizes: dict[str, int], shards: dict[str, list[ShardHashes | None]]) -> dict:
    """Each split's hashes in row order, assembled from its shards' (``sizes``: rows a split;
    None for a shard that could not be read)."""
    out = {}
    for split, n in sizes.items():
        out[split] = SplitHashes(
            np.zeros((n, 32), np.uint8),
            np.zeros(n, np.uint64),
            np.zeros((n, 32), np.uint8),
            np.zeros(n, bool),
            np.zeros(n, bool),
        )
        for h in filter(None, shards.get(split, [])):
            ok = (h.rows >= 0) & (h.rows < n)
            at, into = h.rows[ok], out[split]
            into.sha256[at], into.phash[at], into.fine[at] = h.sha256[ok], h.phash[ok], h.fine[ok]
            into.known[at], into.decoded[at] = True, h.decoded[ok]
    return out
