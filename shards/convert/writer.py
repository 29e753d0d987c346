"""The one writer of shard sets: raw source -> tar shards + DALI indexes + Parquet label tables +
observed views + manifest (written last).

Resumable per shard: each shard is published atomically with a done-marker under ``_progress/``;
a rerun with the same source and options skips finished shards and ends with the same bytes.
The ``--out`` folder's state (whose it is, fresh / resume / complete) is ``shards.convert.out_state``'s.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards import FORMAT_VERSION, __version__
from shards.base.errors import WsmlError
from shards.base.fileio import (
    folder_lock,
    fsync_dir,
    read_json,
    write_json_atomic,
)
from shards.convert.images import target_size
from shards.convert.out_state import (
    MANIFEST,
    inspect_out,
    output_identity,
    scan_split,
    start_output,
)
from shards.convert.plan import ShardPlan, assign_rows, plan_shards
from shards.convert.scan import BAD, MISSING, OK, ScanResult, Workers
from shards.convert.shardwork import PROGRESS, ShardTask, write_one_shard
from shards.convert.source import Source
from shards.convert.source_checks import report_source
from shards.regimes import parse_regime_spec

MISSING_LISTED = 1000  # missing images named in the manifest; all in labels/official/*-missing


@dataclass(frozen=True)
class ShardOptions:
    """How a source becomes a shard set; every field is recorded in the manifest."""

    val_frac: float = 0.2
    split_seed: int = 1200
    shuffle_seed: int = 1200
    shard_bytes: int = 64_000_000
    shard_samples: int = 1000
    max_side: int | None = None
    jpeg_quality: int = 90
    check: str = "header"  # header | decode
    on_bad: str = "fail"  # fail | skip
    max_bad: float = 0.01  # with on_bad=skip: largest fraction of an official split skipped
    regimes: tuple[str, ...] = ("single-positive",)

    def check_values(self) -> None:
        if not 0.0 <= self.val_frac < 1.0:
            raise WsmlError(f"--val-frac must be in [0, 1), got {self.val_frac}")
        if self.check not in ("header", "decode"):
            raise WsmlError(f"--check must be header or decode, got {self.check!r}")
        if self.on_bad not in ("fail", "skip"):
            raise WsmlError(f"--on-bad must be fail or skip, got {self.on_bad!r}")
        if self.shard_samples < 1 or self.shard_bytes < 1:
            raise WsmlError("shard size limits must be positive")
        if self.max_side is not None and self.max_side < 1:
            raise WsmlError(f"--max-side must be at least 1, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100 or not 0.0 <= self.max_bad <= 1.0:
            raise WsmlError("--jpeg-quality must be in 1..100 and --max-bad in [0, 1]")
        for spec in self.regimes:
            parse_regime_spec(spec)


@dataclass(frozen=True)
class Job:
    """What one conversion is: its source, output, options and identity."""

    source: Source
    out: Path
    options: ShardOptions
    converter_options: dict
    identity: str
    durable: bool  # fsync every file before publishing it


def write_shard_set(
    source: Source, out: Path, options: ShardOptions, converter_options: dict, **kwargs
) -> dict:
    """Convert ``source`` into a shard set at ``out`` (see ``_write_shard_set``) as the one
    writer of ``out``; the parts of a multi-machine conversion (``part=``) write side by side."""
    lock = nullcontext() if kwargs.get("part") is not None else folder_lock(out)
    with lock:
        return _write_shard_set(source, out, options, converter_options, **kwargs)


def _write_shard_set(
    source: Source,
    out: Path,
    options: ShardOptions,
    converter_options: dict,
    *,
    workers: int | Workers = 1,
    fsync: bool = True,
    resume: bool | None = None,
    overwrite: bool = False,
    part: tuple[int, int] | None = None,
    finalize: bool = False,
    allows_missing: bool = False,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Convert ``source`` into a shard set at ``out``; return the manifest.

    ``part=(k, n)`` writes only shards k, k + n, ... (one of n machines) and no manifest;
    ``finalize`` then checks that every shard is there and writes tables and manifest."""
    options.check_values()
    progress = progress or (lambda desc, total: lambda n: None)
    identity = output_identity(source, options, converter_options)
    state = inspect_out(
        out, identity, "--finalize" if finalize else resume and "--resume", overwrite
    )
    if state == "complete":
        log(f"{out} already holds this shard set; nothing to do")
        return read_json(out / MANIFEST)
    if state == "resume" and not (part or finalize):
        log(f"resuming the interrupted conversion in {out}")
    pool_context = Workers(workers) if isinstance(workers, int) else nullcontext(workers)
    with pool_context as pool:
        # Every image is checked before anything is written or replaced: bad input loses nothing.
        cached = out if state == "resume" else None
        scans = [
            scan_split(source, i, options, pool, cached, progress)
            for i in range(len(source.splits))
        ]
        report = {
            split.name: _check_scan(split, scan, options, allows_missing)
            for split, scan in zip(source.splits, scans, strict=True)
        }
        splits = assign_rows(source.splits, scans, options.val_frac, options.split_seed)
        report_source(source, splits, out, report, log)
        start_output(out, state, identity, source, scans, clean=part is None)
        job = Job(source, out, options, converter_options, identity, fsync)
        plan = _plan(job, splits, scans)
        if part is not None:
            return _write_part(job, plan, part, pool, progress)
        tables = functools.partial(_write_tables, job, splits, scans)
        shard_infos, (tables, regimes) = _write_shards(job, plan, pool, progress, tables, finalize)
    return _finish(job, plan.plan_id, splits, shard_infos, tables, regimes, report)


def _write_tables(job: Job, splits, scans) -> tuple[dict, dict]:
    """Label tables and observed views (they need no shard, so they are written meanwhile)."""
    from shards.views import write_official_and_label_tables, write_regime_view

    tables = write_official_and_label_tables(
        job.out, job.source, scans, splits, job.options.max_side, job.durable
    )
    regimes = {}
    for spec in job.options.regimes:
        regime = parse_regime_spec(spec)
        view = write_regime_view(job.out, regime, len(job.source.classes), job.durable)
        regimes[regime.view_name()] = view
    return tables, regimes


def _finish(job: Job, plan_id, splits, shard_infos, tables, regimes, report) -> dict:
    """The manifest: written last, once everything else is written (and durable)."""
    out, durable = job.out, job.durable
    manifest = _manifest(job, plan_id, splits, shard_infos, tables, report, regimes)
    if durable:
        fsync_dir(out)
    write_json_atomic(out / MANIFEST, manifest, durable)
    if durable:
        fsync_dir(out)
    shutil.rmtree(out / PROGRESS, ignore_errors=True)
    return manifest


def _check_scan(split, scan: ScanResult, options: ShardOptions, allows_missing: bool) -> dict:
    """Apply the missing/bad-image policy to one official split; return what the manifest
    records about it."""
    recs = split.records
    missing = np.flatnonzero(scan.status == MISSING)
    if len(missing) and (not allows_missing or len(missing) == len(recs)):
        shown = ", ".join(recs.paths(missing[:5].tolist()))
        what = "all" if len(missing) == len(recs) else str(len(missing))
        raise WsmlError(f"{what} image file(s) of the {split.name} split are missing: {shown}")
    bad = np.flatnonzero(scan.status == BAD).tolist()
    if bad and options.on_bad == "fail":
        (path,), (sid,), (hint,) = (
            f(bad[:1]) for f in (recs.paths, recs.source_ids, recs.key_hints)
        )
        raise WsmlError(
            f"bad image {hint!r} (id {sid}) at {path}: {scan.reasons[bad[0]]}; "
            f"{len(bad)} bad image(s) in the {split.name} split. Use --on-bad skip to leave them out"
        )
    if len(bad) > options.max_bad * len(recs):
        raise WsmlError(
            f"{len(bad)} of {len(recs)} images of the {split.name} split are bad, more than "
            f"--max-bad {options.max_bad:g}; first: {recs.paths(bad[:1])[0]}: "
            f"{scan.reasons[bad[0]]}"
        )
    skipped = zip(recs.source_ids(bad), recs.paths(bad), bad, strict=True)
    return {
        "records": len(recs),
        "missing_count": len(missing),
        "missing": recs.source_ids(missing[:MISSING_LISTED].tolist()),
        "skipped": [{"id": i, "path": p, "reason": scan.reasons[k]} for i, p, k in skipped],
        "reencoded": int(np.sum((scan.status == OK) & ~scan.is_jpeg)),
    }


@dataclass(frozen=True)
class Plan:
    shards: list[ShardPlan]
    orders: list[np.ndarray]  # written order of each split's rows
    splits: list  # SplitRows
    scans: list[ScanResult]
    plan_id: str


def _plan(job: Job, splits, scans) -> Plan:
    opts, out = job.options, job.out
    shards, orders = plan_shards(
        splits, scans, opts.shuffle_seed, opts.shard_bytes, opts.shard_samples
    )
    # Rows, keys and order follow from the source and options (the identity) and the image
    # check; this digest tells a resumed run, or another part, that it plans the same shards.
    digest = hashlib.sha256(job.identity.encode())
    for scan in scans:
        for arr in (scan.status, scan.nbytes, scan.width, scan.height, scan.is_jpeg):
            digest.update(np.ascontiguousarray(arr).tobytes())
    plan_id = digest.hexdigest()
    stored = out / PROGRESS / "plan.json"
    if stored.exists() and read_json(stored)["plan_id"] != plan_id:
        raise WsmlError(
            f"the source images changed since the interrupted conversion in {out}; "
            "pass --overwrite to start again"
        )
    write_json_atomic(stored, {"plan_id": plan_id})
    return Plan(shards, orders, splits, scans, plan_id)


def _task(job: Job, plan: Plan, shard: ShardPlan) -> ShardTask:
    """The worker's instructions for one shard: key, path, row and size of every sample."""
    rows = plan.splits[shard.split]
    records = job.source.splits[rows.official].records
    scan = plan.scans[rows.official]
    order = plan.orders[shard.split][shard.start : shard.stop]
    idx = rows.records[order]
    items = []
    for key, path, row, j in zip(
        rows.keys_of(order), records.paths(idx.tolist()), order.tolist(), idx.tolist(), strict=True
    ):
        w, h = target_size(int(scan.width[j]), int(scan.height[j]), job.options.max_side)
        reencode = bool(not scan.is_jpeg[j] or (w, h) != (scan.width[j], scan.height[j]))
        items.append((key, path, row, w, h, reencode))
    return ShardTask(
        str(job.out), shard.name, tuple(items), job.options.jpeg_quality, plan.plan_id, job.durable
    )


def _done(job: Job, plan: Plan, shard: ShardPlan) -> dict | None:
    """The done-marker of a shard finished by this plan, if there is one."""
    done = job.out / PROGRESS / "done" / f"{shard.name}.json"
    if done.exists() and (job.out / f"{shard.name}.tar").exists():
        info = read_json(done)
        if info.get("plan_id") == plan.plan_id:
            return info
    return None


def _write_shards(
    job: Job,
    plan: Plan,
    pool: Workers,
    progress,
    meanwhile: Callable[[], Any],
    finalize: bool = False,
):
    """Write the shards not done yet in the pool, running ``meanwhile()`` in this process while
    the workers write; returns (shard infos by name, what ``meanwhile`` returned)."""
    infos = {s.name: _done(job, plan, s) for s in plan.shards}
    todo = [s for s in plan.shards if infos[s.name] is None]
    if finalize and todo:
        names = ", ".join(s.name for s in todo[:5])
        raise WsmlError(
            f"--finalize: {len(todo)} of {len(plan.shards)} shards are not written yet "
            f"({names}{', ...' if len(todo) > 5 else ''}); run the parts that write them first"
        )
    tasks = (_task(job, plan, s) for s in todo)
    results = pool.map(write_one_shard, tasks)  # a pool starts at once; in-process is lazy
    other = meanwhile()
    tick = progress("writing shards", sum(s.stop - s.start for s in todo))
    for info in results:
        infos[info["name"]] = info
        tick(info["num_samples"])
    return infos, other


def _write_part(job: Job, plan: Plan, part: tuple[int, int], pool: Workers, progress) -> dict:
    """One machine's share of the shards (every n-th from k); no tables, no manifest."""
    k, n = part
    mine = [s for i, s in enumerate(plan.shards) if i % n == k]
    todo = [s for s in mine if _done(job, plan, s) is None]
    tick = progress(f"writing shards (part {k}/{n})", sum(s.stop - s.start for s in todo))
    for info in pool.map(write_one_shard, (_task(job, plan, s) for s in todo)):
        tick(info["num_samples"])
    return {
        "part": [k, n],
        "shards": len(mine),
        "written": len(todo),
        "total_shards": len(plan.shards),
    }


def _manifest(job: Job, plan_id, splits, shard_infos, tables, report, regimes) -> dict:
    source = job.source
    split_entries = {}
    for rows in splits:
        shards = [
            {
                "tar": f"{n}.tar",
                "index": f"{n}.idx",
                "num_samples": i["num_samples"],
                "bytes": i["bytes"],
                "sha256": i["sha256"],
                "index_sha256": i["index_sha256"],
            }
            for n, i in shard_infos.items()
            if n.rsplit("-", 1)[0] == rows.name
        ]
        split_entries[rows.name] = {
            "num_samples": len(rows.records),
            "official": source.splits[rows.official].name,
            "labels": tables[rows.name],
            "shards": shards,
        }
    return {
        "format": "wsml-shards",
        "format_version": FORMAT_VERSION,
        "created_by": f"wsml {__version__}",
        "dataset": source.dataset,
        "classes": list(source.classes),
        "groups": list(source.groups) if source.groups else None,
        "complete_labels": source.complete_labels,
        "splits": split_entries,
        "official_splits": {
            s.name: {
                "role": s.role,
                **report[s.name],
                "labels": tables[f"official/{s.name}"],
                "missing_table": tables.get(f"official/{s.name}-missing"),
            }
            for s in source.splits
        },
        "regimes_at_conversion": regimes,
        "options": asdict(job.options),
        "source": {
            "dataset": source.dataset,
            "root": source.root,
            "fingerprint": source.fingerprint,
            "converter_options": job.converter_options,
            **source.notes,
        },
        "identity": job.identity,
        "plan_id": plan_id,
    }
