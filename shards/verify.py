"""``cli.py verify``: re-hash every file against the manifest, check that tar members and label
rows agree one to one, and decode every image."""

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

from shards.fileio import sha256_file
from shards.scan import Workers
from shards.shardset import ShardSet


@dataclass(frozen=True)
class ShardCheck:
    tar: str
    index: str
    sha256: str
    index_sha256: str
    num_samples: int
    decode: bool


def verify_shard_set(
    ss: ShardSet,
    workers: int = 1,
    decode: bool = True,
    on_progress: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """Every problem found, as one line each naming the file (empty when all is well)."""
    problems: list[str] = []
    for name in ss.splits:
        problems += _check_table(ss.root, ss.split(name)["labels"])
    for meta in ss.manifest["official_splits"].values():
        problems += _check_table(ss.root, meta["labels"])
        if meta.get("missing_table"):
            problems += _check_table(ss.root, meta["missing_table"])
    for view in ss.regimes.values():
        for entry in view["splits"].values():
            problems += _check_table(ss.root, entry)
    with Workers(workers) as pool:
        for name in ss.splits:
            problems += _verify_split(ss, name, pool, decode, on_progress)
    return problems


def _check_table(root: Path, entry: dict) -> list[str]:
    path = root / entry["path"]
    if not path.is_file():
        return [f"{path}: missing"]
    if sha256_file(path) != entry["sha256"]:
        return [f"{path}: sha256 differs from the manifest"]
    return []


def _verify_split(ss: ShardSet, split: str, pool: Workers, decode: bool, on_progress) -> list[str]:
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
        )
        for s in ss.split(split)["shards"]
    ]
    problems: list[str] = []
    seen = np.zeros(len(keys), dtype=np.int64)
    for check, (errs, samples) in zip(checks, pool.map(_verify_shard, checks), strict=True):
        problems += errs
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
    return problems


def _verify_shard(check: ShardCheck) -> tuple[list[str], list[tuple]]:
    tar, problems = Path(check.tar), []
    if not tar.is_file():
        return [f"{tar}: missing"], []
    if sha256_file(tar) != check.sha256:
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
        return problems + [f"{tar}: not a readable tar ({e})"], []
    if len(samples) != check.num_samples:
        problems.append(f"{tar}: {len(samples)} samples, manifest says {check.num_samples}")
    out = []
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
    return problems, out
