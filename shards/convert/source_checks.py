"""What a conversion says about its source before writing: splits left empty or a training
split without a single label are refused, and one image file under two ids is reported."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shards.base.errors import WsmlError
from shards.base.fileio import publish, removed_on_error, tmp_path_for

CHUNK = 4096  # records read at a time (large sources hold their records in arrays)


def check_split_contents(source, splits: Sequence) -> None:
    """Refuse an output split without rows, or a train split where no image has a positive
    label: either would train or score on nothing and still look like a result."""
    for split in source.splits:
        if len(split.records) == 0:
            raise WsmlError(
                f"official split {split.name} of {source.root} has no images (none listed, or "
                "none with annotations): check its annotation file"
            )
    for rows in splits:
        official = source.splits[rows.official].name
        if len(rows.records) == 0:
            raise WsmlError(
                f"the {rows.name} split (from official split {official} of {source.root}) has "
                "no images: check the annotation file and the image folder"
            )
    for rows in (r for r in splits if r.name == "train"):
        recs = source.splits[rows.official].records
        if not any(
            len(recs.labels(rows.records[i : i + CHUNK].tolist())[0].values)
            for i in range(0, len(rows.records), CHUNK)
        ):
            raise WsmlError(
                f"no image of the train split ({len(rows.records)} images, from official split "
                f"{source.splits[rows.official].name} of {source.root}) has a positive label: "
                "check the annotations"
            )


def list_shared_files(source, shown: int = 5) -> tuple[int, list[str]]:
    """(count, examples) of image files listed under more than one id (in any official
    splits): each is stored once per id, as the source asks, but the user should know."""
    hashes, where = [], []
    for k, split in enumerate(source.splits):
        recs = split.records
        for i in range(0, len(recs), CHUNK):
            paths = recs.paths(range(i, min(len(recs), i + CHUNK)))
            hashes.append(np.fromiter((hash(p) for p in paths), np.int64, len(paths)))
            where.append((k, i, len(paths)))
    if not hashes:
        return 0, []
    flat = np.concatenate(hashes)
    values, counts = np.unique(flat, return_counts=True)
    suspects = set(values[counts > 1].tolist())
    if not suspects:
        return 0, []
    seen: dict[str, list[str]] = {}
    for (k, start, n), h in zip(where, hashes, strict=True):
        at = [j for j in range(n) if int(h[j]) in suspects]
        recs = source.splits[k].records
        idx = [start + j for j in at]
        for path, sid in zip(recs.paths(idx), recs.source_ids(idx), strict=True):
            seen.setdefault(path, []).append(f"{source.splits[k].name}:{sid}")
    shared = {p: ids for p, ids in seen.items() if len(ids) > 1}
    examples = [f"{p} (ids {', '.join(ids)})" for p, ids in list(shared.items())[:shown]]
    return len(shared), examples


def missing_lines(out, report: dict) -> list[str]:
    """One line per official split whose missing images were left out (sources such as NUS-WIDE
    allow that): how many, and the table that lists them."""
    return [
        f"{r['missing_count']} of {r['records']} images of official split {name} are missing "
        f"and left out; listed in {out}/labels/official/{name}-missing.parquet"
        for name, r in report.items()
        if r["missing_count"]
    ]


def stat_images(records, idx=None) -> np.ndarray:
    """int64 (N, 2): size in bytes and mtime in ns of every record's image (or of the records
    ``idx``; -1: absent), what an interrupted conversion saw, so a resume can tell that the
    source changed since."""
    idx = range(len(records)) if idx is None else idx
    out = np.full((len(idx), 2), -1, np.int64)
    for i in range(0, len(idx), CHUNK):
        for j, path in enumerate(records.paths(idx[i : i + CHUNK])):
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[i + j] = st.st_size, st.st_mtime_ns
    return out


def seen_images(records, scan) -> np.ndarray:
    """:func:`stat_images` from what the image check saw (its sizes and times), with only the
    images it did not read (missing, bad) looked at again."""
    if scan.mtime_ns is None:  # a check kept by an interrupted run of an older version
        return stat_images(records)
    out = np.stack([scan.nbytes, scan.mtime_ns], axis=1).astype(np.int64)
    other = np.flatnonzero(scan.mtime_ns < 0)
    out[other] = stat_images(records, other.tolist())
    return out


def write_seen(progress: Path, split, scan) -> None:
    """Record what an official split's images are now (``progress/seen-SPLIT.npy``)."""
    path = progress / f"seen-{split.name}.npy"
    tmp = tmp_path_for(path)
    with removed_on_error(tmp, path):
        with open(tmp, "wb") as f:
            np.save(f, seen_images(split.records, scan))
        publish(tmp, path)


def check_unchanged(split, progress: Path, out) -> None:
    """Refuse to resume a conversion whose source images changed (size or mtime) since the
    interrupted run looked at them (``write_seen``): the result would mix old and new images."""
    seen = progress / f"seen-{split.name}.npy"
    if not seen.exists():  # an interruption recorded before sizes and times were
        return
    saved = np.load(seen)
    now = stat_images(split.records)
    if now.shape != saved.shape:
        changed = 0
    else:
        diff = np.flatnonzero((now != saved).any(1))
        if not len(diff):
            return
        changed = int(diff[0])
    path = split.records.paths([changed])[0] if len(split.records) else "?"
    raise WsmlError(
        f"the source changed since the interrupted conversion in {out} looked at it: {path} "
        f"(official split {split.name}) has another size or time; pass --overwrite to start "
        "the conversion again"
    )


def report_source(source, splits, out, report: dict, log: Callable[[str], None]) -> None:
    """Refuse empty splits; say which files are listed under two ids and how many images of
    each official split are missing (and where they are listed)."""
    check_split_contents(source, splits)
    count, examples = list_shared_files(source)
    if count:
        log(
            f"{count} image file(s) are listed under more than one id (each id is stored): "
            + "; ".join(examples)
        )
    for line in missing_lines(out, report):
        log(line)
