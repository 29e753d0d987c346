"""``cli.py verify``: re-hash every file against the manifest, check that tar members and label
rows agree one to one, decode every image, and name the files in the shard set's folders that
the manifest does not list (another writer's shards, say). ``audit`` runs the same pass, which
also hashes each image for its duplicate checks (``shards.image_hashes``)."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from shards.base.fileio import sha256_file
from shards.convert.scan import Workers
from shards.image_hashes import ShardHashes, hash_images
from shards.shardset import ShardSet, list_unlisted_files


@dataclass(frozen=True)
class ShardCheck:
    tar: str
    index: str
    sha256: str
    index_sha256: str
    num_samples: int
    decode: bool
    hashes: bool = False  # also hash each image (for audit)


def verify_shard_set(
    ss: ShardSet,
    workers: int = 1,
    decode: bool = True,
    on_progress: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """Every problem found, as one line each naming the file (empty when all is well)."""
    return check_shard_set(ss, workers, decode, on_progress)[0]


def check_shard_set(
    ss: ShardSet,
    workers: int = 1,
    decode: bool = True,
    on_progress: Callable[[int], None] = lambda n: None,
    hash_tars: frozenset[str] = frozenset(),
) -> tuple[list[str], dict[str, ShardHashes]]:
    """``verify_shard_set``'s problems, and the image hashes of the shards named in
    ``hash_tars`` (by their manifest's ``tar``), computed in the same pass."""
    problems = [f"{ss.root / p}: not listed in the manifest" for p in list_unlisted_files(ss)]
    for name in ss.splits:
        problems += _check_table(ss.root, ss.split(name)["labels"])
    for meta in ss.manifest["official_splits"].values():
        problems += _check_table(ss.root, meta["labels"])
        if meta.get("missing_table"):
            problems += _check_table(ss.root, meta["missing_table"])
    for view in ss.regimes.values():
        for entry in view["splits"].values():
            problems += _check_table(ss.root, entry)
    hashes: dict[str, ShardHashes] = {}
    with Workers(workers) as pool:
        for name in ss.splits:
            found, hashed = _verify_split(ss, name, pool, decode, hash_tars, on_progress)
            problems += found
            hashes.update(hashed)
    return problems, hashes


def _check_table(root: Path, entry: dict) -> list[str]:
    path = root / entry["path"]
    if not path.is_file():
        return [f"{path}: missing"]
    if sha256_file(path) != entry["sha256"]:
        return [f"{path}: sha256 differs from the manifest"]
    return []


def _verify_split(
    ss: ShardSet, split: str, pool: Workers, decode: bool, hash_tars, on_progress
) -> tuple[list[str], dict[str, ShardHashes]]:
    try:
        table = ss.label_table(split, checked=False)  # its digest is _check_table's to report
    except (OSError, pa.ArrowException):  # reported by _check_table; still check the tars
        table = None
    keys = table["key"].to_pylist() if table is not None else []
    sizes = (
        list(zip(table["width"].to_pylist(), table["height"].to_pylist(), strict=True))
        if table is not None
        else []
    )
    checks = [
        ShardCheck(
            str(ss.root / s["tar"]),
            str(ss.root / s["index"]),
            s["sha256"],
            s["index_sha256"],
            s["num_samples"],
            decode,
            s["tar"] in hash_tars,
        )
        for s in ss.split(split)["shards"]
    ]
    problems: list[str] = []
    hashes: dict[str, ShardHashes] = {}
    seen = np.zeros(len(keys), dtype=np.int64)
    entries = ss.split(split)["shards"]
    results = pool.map(_verify_shard, checks)
    for entry, check, (errs, samples, found) in zip(entries, checks, results, strict=True):
        problems += errs
        if found is not None:
            hashes[entry["tar"]] = found
        for key, row, size in samples if table is not None else ():
            if not 0 <= row < len(keys):
                problems.append(f"{check.tar}: sample {key} has row {row}, outside the label table")
                continue
            seen[row] += 1
            if keys[row] != key:
                problems.append(
                    f"{check.tar}: sample {key} has row {row}, whose key is {keys[row]}"
                )
            elif size is not None and tuple(size) != tuple(sizes[row]):
                problems.append(
                    f"{check.tar}: image {key} is {size[0]}x{size[1]}, table says "
                    f"{sizes[row][0]}x{sizes[row][1]}"
                )
        on_progress(check.num_samples)
    for row in np.flatnonzero(seen != 1)[:20].tolist():
        problems.append(
            f"split {split}: row {row} ({keys[row]}) appears {seen[row]} times in the shards"
        )
    return problems, hashes


def _verify_shard(check: ShardCheck) -> tuple[list[str], list[tuple], ShardHashes | None]:
    tar, problems = Path(check.tar), []
    if not tar.is_file():
        return [f"{tar}: missing"], [], None
    tar_sha256 = sha256_file(tar)
    if tar_sha256 != check.sha256:
        problems.append(f"{tar}: sha256 differs from the manifest")
    index = Path(check.index)
    if not index.is_file():
        problems.append(f"{index}: missing")
    elif hashlib.sha256(index.read_bytes()).hexdigest() != check.index_sha256:
        problems.append(f"{index}: sha256 differs from the manifest")
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(tar, "r:") as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        return problems + [f"{tar}: not a readable tar ({e})"], [], None
    if len(samples) != check.num_samples:
        problems.append(f"{tar}: {len(samples)} samples, manifest says {check.num_samples}")
    out, images = [], []
    for key, members in samples.items():
        if set(members) != {"jpg", "row"} or len(members["row"]) != 8:
            problems.append(
                f"{tar}: sample {key} has members {sorted(members)}, expected jpg and row"
            )
            continue
        size = None
        if check.decode:
            try:
                with Image.open(io.BytesIO(members["jpg"])) as im:
                    im.load()
                    size = im.size
            except Exception as e:
                problems.append(f"{tar}: image {key} does not decode: {e}")
        out.append((key, struct.unpack("<q", members["row"])[0], size))
        images.append((out[-1][1], members["jpg"]))
    return problems, out, hash_images(images, tar_sha256) if check.hashes else None
