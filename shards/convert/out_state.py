"""The ``--out`` folder of a conversion, before any shard is written: whose it is (the identity
of source and options), what state it is in (fresh, resume, overwrite, complete, or not ours to
touch), and the per-split image checks kept there so a resumed run does not read every image
again."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shards import FORMAT_VERSION
from shards.base.errors import WsmlError
from shards.base.fileio import (
    dumps_json,
    publish,
    read_json,
    remove_temporaries,
    tmp_path_for,
    write_json_atomic,
)
from shards.convert.scan import ScanResult, Workers, scan_images
from shards.convert.shardwork import PROGRESS
from shards.convert.source import Source
from shards.convert.source_checks import check_unchanged, write_seen
from shards.image_hashes import HASH_DIR

if TYPE_CHECKING:
    from shards.convert.writer import ShardOptions

MANIFEST = "manifest.json"


def start_output(out: Path, state: str, identity: str, source: Source, scans, clean: bool) -> None:
    """Mark ``out`` as ours (and whose); ``clean`` removes temporaries of killed writers, which
    a part must not do: other parts may be writing theirs."""
    if state == "overwrite":
        clear_out(out)
    if state == "resume" and clean:
        remove_temporaries(out)
    (out / PROGRESS / "done").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PROGRESS / "identity.json", {"identity": identity})
    for split, scan in zip(source.splits, scans, strict=True):
        cache_scan(out, split.name, scan)
        write_seen(out / PROGRESS, split, scan)


def output_identity(source: Source, options: ShardOptions, converter_options: dict) -> str:
    blob = dumps_json(
        {
            "format_version": FORMAT_VERSION,
            "dataset": source.dataset,
            "fingerprint": source.fingerprint,
            "converter_options": converter_options,
            "options": asdict(options),
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def inspect_out(out: Path, identity: str, required: str | None, overwrite: bool) -> str:
    """fresh / resume / overwrite / complete, or an error for a folder we must not touch.
    Changes nothing on disk."""
    manifest, ident = out / MANIFEST, out / PROGRESS / "identity.json"
    if out.exists() and not out.is_dir():
        raise WsmlError(f"--out {out} exists and is not a folder")
    if overwrite and (manifest.exists() or ident.exists()):
        return "overwrite"
    if manifest.exists():
        try:
            m = read_json(manifest)
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            raise WsmlError(
                f"{manifest} is not valid JSON; choose another --out or pass --overwrite"
            ) from None
        if m.get("identity") == identity:
            return "complete"
        raise WsmlError(
            f"{out} already holds a different shard set ({m.get('dataset')} from "
            f"{m.get('source', {}).get('root')}, or other options); choose another --out "
            "or pass --overwrite to replace it"
        )
    if ident.exists():
        if read_json(ident).get("identity") == identity:
            return "resume"
        raise WsmlError(
            f"{out} holds an interrupted conversion of a different dataset or with other "
            "options; rerun that command to finish it, choose another --out, or pass --overwrite"
        )
    if out.exists() and any(p.name != PROGRESS for p in out.iterdir()):  # (parts start at once)
        raise WsmlError(f"--out {out} is not empty and holds no shard set; choose an empty folder")
    if required:  # --resume or --finalize need earlier work to go on from
        raise WsmlError(f"{required}: {out} holds no interrupted conversion or parts")
    return "fresh"


def clear_out(out: Path) -> None:
    """Remove what a previous conversion wrote (only our own names)."""
    for p in out.iterdir():
        if p.name in (
            MANIFEST,
            PROGRESS,
            "labels",
            "observed",
            "embeddings",
            "audit.json",
            HASH_DIR,
        ):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif p.suffix in (".tar", ".idx") or p.name.endswith(".wsml-tmp"):
            p.unlink()


def scan_split(source, i, options, pool: Workers, out: Path | None, progress) -> ScanResult:
    """Check one official split's images (or reuse the check of an interrupted run in ``out``)."""
    split = source.splits[i]
    cache = out / PROGRESS / f"scan-{split.name}.npz" if out else None
    if cache and cache.exists():
        check_unchanged(split, out / PROGRESS, out)
        with np.load(cache) as z:
            return ScanResult.from_npz(z)
    tick = progress(f"checking {split.name} images", len(split.records))
    return scan_images(split.records, options.check, pool, tick)


def cache_scan(out: Path, name: str, scan: ScanResult) -> None:
    """Keep a scan that passed the checks, so a resumed run does not read every image again."""
    cache = out / PROGRESS / f"scan-{name}.npz"
    tmp = tmp_path_for(cache)
    with open(tmp, "wb") as f:
        np.savez(f, **scan.to_npz())
    publish(tmp, cache)
