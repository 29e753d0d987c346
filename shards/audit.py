"""``cli.py audit``: check a shard set against the mistakes that make published numbers wrong.

Hard failures: an image in two splits (same sha256 of its bytes), a copy across splits (64-bit
perceptual hashes at most ``near_fail_bits`` apart and 256-bit ones at most ``near_fine_bits``:
a re-encoded or resized copy lands there, ``shards.duplicates``), a split table whose labels
are not the official clean labels, a view that breaks its regime's contract
(an observed label that is not a clean one, the wrong number of positives a row, a rate outside
its binomial range, rows that are not the split's), and whatever ``verify`` finds between
tables, tars and the folder. Warnings: pairs up to ``near_bits`` apart (look-alikes land there
too) and classes without a positive in a split (mAP counts such a class as 0).

Every finding names split, row, key and classes (both images of a pair); ``audit.json`` beside
the manifest holds them all. The image hashes come from the tars, computed in ``verify``'s pass
and cached (``shards.image_hashes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shards.base.errors import os_error_message
from shards.base.fileio import write_json_atomic
from shards.duplicates import NearLimits, find_duplicates, summarize_pairs
from shards.image_hashes import (
    HASH_DIR,
    ShardHashes,
    from_shards,
    read_cached,
    write_cached,
)
from shards.lists import Lists, dense_rows
from shards.regimes import create_regime
from shards.shardset import ShardSet
from shards.tables import from_arrow, read_table
from shards.verify import check_shard_set

AUDIT = "audit.json"
NEAR_BITS = 4  # 64-bit perceptual hashes at most this many bits apart: near-duplicates (warned)
NEAR_FAIL_BITS = 2  # ... at most this many,
NEAR_FINE_BITS = 24  # with 256-bit hashes at most this many apart: copies (a failure)
CHUNK = 4096


@dataclass(frozen=True)
class AuditOptions:
    workers: int = 1
    decode: bool = True
    near_bits: int = NEAR_BITS
    near_fail_bits: int = NEAR_FAIL_BITS
    near_fine_bits: int = NEAR_FINE_BITS


@dataclass
class Audit:
    """The report (what ``audit.json`` holds) and the image hashes computed for it (to cache)."""

    report: dict
    computed: dict[str, ShardHashes] = field(default_factory=dict)


def audit_shard_set(
    ss: ShardSet,
    options: AuditOptions = AuditOptions(),
    on_progress: Callable[[int], None] = lambda n: None,
) -> Audit:
    """Run every check; nothing is written (``save_audit`` does)."""
    tables = {s: read_table(ss.root / ss.split(s)["labels"]["path"]) for s in ss.splits}
    sizes = {split: len(t) for split, t in tables.items()}
    problems, hashes, computed, source = _verify_and_hash(ss, sizes, options, on_progress)
    describe = _describer(ss, tables)
    limits = NearLimits(options.near_bits, options.near_fail_bits, options.near_fine_bits)
    dups, dup_counts = find_duplicates(hashes, limits, describe)
    views = {view: check_view(ss, tables, view, describe) for view in ss.regimes}
    split_labels = check_split_labels(ss, tables, describe)
    empty = list_empty_classes(ss, tables)
    findings = [{"check": "tables-and-tars", "severity": "fail", "message": p} for p in problems]
    findings += dups + split_labels["findings"]
    findings += [f for v in views.values() for f in v.pop("findings")]
    findings += [{"check": "classes-without-positives", "severity": "warn", "split": s,
                  "classes": names} for s, names in empty.items()]  # fmt: skip
    findings.sort(key=lambda f: f["severity"] != "fail")  # failures first, in check order
    failures, warnings = _summary(problems, dups, dup_counts, split_labels, views, empty, options)
    checks = {
        "image_hashes": source,
        "tables_and_tars": problems,
        "duplicates": dup_counts,
        "split_labels": split_labels["problems"],
        "views": views,
        "classes_without_positives": empty,
    }
    report = {"shard_set": str(ss.root), "ok": not failures, "failures": failures,
              "warnings": warnings, "findings": findings, "checks": checks}  # fmt: skip
    return Audit(report, computed)


def save_audit(ss: ShardSet, audit: Audit) -> list[str]:
    """Write ``audit.json`` and cache the computed image hashes; return what could not be
    saved (read-only storage: the audit itself still stands)."""
    unsaved = []
    for tar, hashes in audit.computed.items():
        try:
            write_cached(ss.root, tar, hashes)
        except OSError as e:
            unsaved.append(f"the image hashes ({HASH_DIR}/): {os_error_message(e) or e}")
            break
    try:
        write_json_atomic(ss.root / AUDIT, audit.report)
    except OSError as e:
        unsaved.append(f"the report {ss.root / AUDIT}: {os_error_message(e) or e}")
    return unsaved


def _verify_and_hash(ss: ShardSet, sizes: dict[str, int], options: AuditOptions, on_progress):
    """``verify``'s problems and every split's image hashes (``sizes``: rows a split), from the
    cache or computed from the tars in ``verify``'s pass (and returned, to be cached)."""
    shards = {s["tar"]: s for split in ss.splits for s in ss.split(split)["shards"]}
    cached = {t: read_cached(ss.root, s) for t, s in shards.items()}
    todo = frozenset(t for t, h in cached.items() if h is None)
    problems, found = check_shard_set(ss, options.workers, options.decode, on_progress, todo)
    per_split = {
        split: [cached[s["tar"]] or found.get(s["tar"]) for s in ss.split(split)["shards"]]
        for split in ss.splits
    }
    computed = {t: h for t, h in found.items() if h.tar_sha256 == shards[t]["sha256"]}
    source = {
        "computed_images": int(sum(len(h.rows) for h in found.values())),
        "computed_shards": len(found),
        "cached_shards": len(cached) - len(todo),
        "cache": HASH_DIR,
    }
    return problems, from_shards(sizes, per_split), computed, source


def _describer(ss: ShardSet, tables: dict) -> Callable[[str, int], dict]:
    """``describe(split, row)``: the split, row, key and clean positive classes of an image."""
    keys = {s: t["key"].to_pylist() for s, t in tables.items()}
    positives = {s: from_arrow(t["positives"]) for s, t in tables.items()}

    def describe(split: str, row: int) -> dict:
        names = [ss.classes[c] for c in positives[split].row(row).tolist()]
        return {"split": split, "row": row, "key": keys[split][row], "classes": names}

    return describe


def _summary(problems, dups, dup_counts, split_labels, views, empty, options) -> tuple:
    """The one-line failures and warnings (the findings name every image)."""
    failures = [f"tables and tars: {p}" for p in problems[:100]]
    failures += [f"split labels: {p}" for p in split_labels["problems"]]
    failures += [f"view {v}: {p}" for v, r in views.items() for p in r["problems"]]
    warnings = []
    if dup_counts["exact"]:
        failures.append(
            f"{dup_counts['exact']} image(s) in two splits (same sha256): "
            + summarize_pairs(dups, "duplicate", "fail")
        )
    o = options
    if dup_counts["near_fail"]:
        failures.append(
            f"{dup_counts['near_fail']} near-duplicate pair(s) across splits (copies: perceptual "
            f"hashes at most {o.near_fail_bits} of 64 and {o.near_fine_bits} of 256 bits apart; "
            "a re-encoded or resized copy lands there): "
            + summarize_pairs(dups, "near-duplicate", "fail")
        )
    if dup_counts["near_warn"]:
        warnings.append(
            f"{dup_counts['near_warn']} near-duplicate pair(s) across splits (perceptual hashes "
            f"at most {o.near_bits} of 64 bits apart, look-alikes land there too; look at "
            "them): " + summarize_pairs(dups, "near-duplicate", "warn")
        )
    for split, names in empty.items():
        warnings.append(
            f"{len(names)} class(es) without a positive in {split} (mAP counts them as 0): "
            + ", ".join(names[:20])
            + (", ..." if len(names) > 20 else "")
        )
    return failures, warnings


def check_split_labels(ss: ShardSet, tables: dict, describe) -> dict:
    """Every split table holds the official clean labels of its rows (val and test are
    evaluated on clean labels; a train row must not carry another image's labels)."""
    problems, findings = [], []
    for name, meta in ss.manifest["official_splits"].items():
        official = read_table(ss.root / meta["labels"]["path"])
        where = np.array(official["split"].to_pylist(), dtype=object)
        rows = official["row"].to_numpy(zero_copy_only=False)
        for split in sorted({s for s in where.tolist() if s is not None}):
            at = np.flatnonzero(where == split)
            if split not in tables:
                problems.append(f"official {name} places rows in {split}, which has no table")
                continue
            for col in ("positives", "negatives"):
                a = from_arrow(official[col]).take(at)
                b = from_arrow(tables[split][col]).take(rows[at].astype(np.int64))
                if _same(a, b):
                    continue
                problems.append(
                    f"{split}: {col} differ from the official {name} labels of its rows"
                )
                for k, row in _differing_rows(a, b, rows[at]):
                    differ = sorted(set(a.row(k).tolist()) ^ set(b.row(k).tolist()))
                    found = describe(split, int(row))
                    findings.append({"check": "split-labels", "severity": "fail", **found,
                                     "what": f"{col} differ from the official {name} labels",
                                     "differing": [ss.classes[c] for c in differ]})  # fmt: skip
    return {"problems": problems, "findings": findings}


def _differing_rows(a: Lists, b: Lists, rows: np.ndarray):
    """(k, row) of the rows whose lists differ (or whose nullness does)."""
    for k in range(len(a)):
        if a.is_valid(k) != b.is_valid(k) or not np.array_equal(a.row(k), b.row(k)):
            yield k, rows[k]


def _same(a: Lists, b: Lists) -> bool:
    va = np.ones(len(a), bool) if a.valid is None else a.valid
    vb = np.ones(len(b), bool) if b.valid is None else b.valid
    return (
        np.array_equal(a.offsets, b.offsets)
        and np.array_equal(a.values, b.values)
        and np.array_equal(va, vb)
    )


def check_view(ss: ShardSet, tables: dict, view: str, describe) -> dict:
    """A view's splits are the shard set's, one row per split row, and its labels keep its
    regime's contract against the clean labels (``audit_counts``/``audit_failures``), with
    the rows and classes at fault (``audit_masks``)."""
    meta = ss.regimes[view]
    regime = create_regime(meta["regime"], **meta["params"])
    problems, counts, findings = [], {}, []
    for split, entry in meta["splits"].items():
        if split not in tables:
            problems.append(f"has rows of {split}, a split this shard set does not have")
            continue
        t = read_table(ss.root / entry["path"])
        rows = t["row"].to_numpy()
        if not np.array_equal(np.sort(rows), np.arange(len(tables[split]))):
            problems.append(f"{split}: rows are not one per row of the {split} split")
            continue
        clean_pos = from_arrow(tables[split]["positives"]).take(rows)
        clean_neg = from_arrow(tables[split]["negatives"]).take(rows)
        obs_pos, obs_neg = from_arrow(t["positives"]), from_arrow(t["negatives"])
        total: dict[str, int] = {}
        for start in range(0, len(rows), CHUNK):
            stop = min(len(rows), start + CHUNK)
            clean = dense_rows(clean_pos, clean_neg, len(ss.classes), start, stop)
            observed = dense_rows(obs_pos, obs_neg, len(ss.classes), start, stop)
            for k, v in regime.audit_counts(clean, observed).items():
                total[k] = total.get(k, 0) + v
            for what, mask in regime.audit_masks(clean, observed).items():
                for at in np.flatnonzero(mask.any(1)).tolist():
                    found = describe(split, int(rows[start + at]))
                    wrong = [ss.classes[c] for c in np.flatnonzero(mask[at]).tolist()]
                    findings.append({"check": "view", "severity": "fail", "view": view,
                                     **found, "what": what, "labels": wrong})  # fmt: skip
        counts[split] = total
        problems += [f"{split}: {p}" for p in regime.audit_failures(total)]
    return {"regime": meta["regime"], "problems": problems, "counts": counts,
            "findings": findings}  # fmt: skip


def list_empty_classes(ss: ShardSet, tables: dict) -> dict[str, list[str]]:
    out = {}
    for split, t in tables.items():
        counts = np.bincount(from_arrow(t["positives"]).values, minlength=len(ss.classes))
        empty = [ss.classes[k] for k in np.flatnonzero(counts == 0).tolist()]
        if empty:
            out[split] = empty
    return out


SHOWN = 20  # findings printed; audit.json holds them all


def console_lines(report: dict, root) -> list[str]:
    """What ``cli.py audit`` prints: where the hashes came from, the one-line warnings and
    failures, and the first findings."""
    lines = [hash_source_line(report["checks"]["image_hashes"], root)]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines += [f"FAIL: {f}" for f in report["failures"]]
    findings = report["findings"]
    if findings:
        lines.append(f"findings ({min(SHOWN, len(findings))} of {len(findings)}; all in {AUDIT}):")
        lines += [f"  {format_finding(f)}" for f in findings[:SHOWN]]
    return lines


def hash_source_line(source: dict, root) -> str:
    """Where the image hashes of the duplicate checks came from."""
    if not source["computed_shards"]:
        return f"image hashes: from the cache in {root / source['cache']}"
    return (
        f"image hashes: computed from the tars for {source['computed_images']} images in "
        f"{source['computed_shards']} shard(s) (shard sets carry none; cached in "
        f"{root / source['cache']}, reused while the shards are unchanged)"
    )


def format_finding(f: dict) -> str:
    """One console line for a finding."""

    def image(d: dict) -> str:
        return f"{d['split']} row {d['row']} (key {d['key']}; {', '.join(d['classes']) or '-'})"

    tag = "FAIL" if f["severity"] == "fail" else "warn"
    check = f["check"]
    if check == "tables-and-tars":
        return f"{tag} {check}: {f['message']}"
    if check == "classes-without-positives":
        return f"{tag} {check}: {f['split']}: {', '.join(f['classes'])}"
    if "other" in f:
        bits = (
            f" ({f['bits']}/64, {f['fine_bits']}/256 bits apart)"
            if "bits" in f
            else " (same sha256)"
        )
        return f"{tag} {check}{bits}: {image(f)} = {image(f['other'])}"
    detail = f["labels"] if "labels" in f else f["differing"]
    what = f"view {f['view']}" if "view" in f else check
    return f"{tag} {what}: {image(f)}: {f['what']}: {', '.join(detail)}"
