"""``cli.py audit``: check a shard set against the mistakes that make published numbers wrong.

Hard failures: an image in two splits (same sha256 of its bytes), a split table whose labels are
not the official clean labels, a view that breaks its regime's contract (an observed label that
is not a clean one, the wrong number of positives a row, a rate outside its binomial range, rows
that are not the split's), and whatever ``verify`` finds between tables and tars. Warnings:
near-duplicates across splits (64-bit perceptual hashes a few bits apart) and classes without a
positive in a split (mAP counts such a class as 0). The report goes to ``audit.json`` beside the
manifest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shards.fileio import write_json_atomic
from shards.lists import Lists, dense_rows
from shards.regimes import create_regime
from shards.shardset import ShardSet
from shards.tables import from_arrow, read_table
from shards.verify import verify_shard_set

AUDIT = "audit.json"
NEAR_BITS = 4  # perceptual hashes at most this many bits apart are near-duplicates
LISTED = 100  # pairs and problems listed in the report, each
CHUNK = 4096


def audit_shard_set(
    ss: ShardSet,
    workers: int = 1,
    decode: bool = True,
    near_bits: int = NEAR_BITS,
    on_progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Run every check; return the report (``failures`` and ``warnings`` are lines)."""
    tables = {s: read_table(ss.root / ss.split(s)["labels"]["path"]) for s in ss.splits}
    checks = {
        "tables_and_tars": verify_shard_set(ss, workers, decode, on_progress),
        **check_duplicates(tables, near_bits),
        "split_labels": check_split_labels(ss, tables),
        "views": {view: check_view(ss, tables, view) for view in ss.regimes},
        "classes_without_positives": list_empty_classes(ss, tables),
    }
    failures = [f"tables and tars: {p}" for p in checks["tables_and_tars"][:LISTED]]
    failures += [f"split labels: {p}" for p in checks["split_labels"]]
    failures += [f"view {v}: {p}" for v, r in checks["views"].items() for p in r["problems"]]
    warnings = list(checks.get("hash_warnings", []))
    exact, near = checks["exact_duplicates"], checks["near_duplicates"]
    if exact["count"]:
        failures.append(f"{exact['count']} image(s) in two splits (same sha256): " + _pairs(exact))
    if near["count"]:
        warnings.append(
            f"{near['count']} near-duplicate pair(s) across splits (perceptual hashes at most "
            f"{near_bits} bits apart): " + _pairs(near)
        )
    for split, names in checks["classes_without_positives"].items():
        warnings.append(
            f"{len(names)} class(es) without a positive in {split} (mAP counts them as 0): "
            + ", ".join(names[:20])
            + (", ..." if len(names) > 20 else "")
        )
    return {"shard_set": str(ss.root), "ok": not failures, "failures": failures,
            "warnings": warnings, "checks": checks}  # fmt: skip


def write_audit(ss: ShardSet, report: dict) -> None:
    write_json_atomic(ss.root / AUDIT, report)


def _pairs(found: dict) -> str:
    shown = [f"{a['split']}/{a['key']} = {b['split']}/{b['key']}" for a, b in found["pairs"][:5]]
    return "; ".join(shown) + ("; ..." if found["count"] > 5 else "")


def check_duplicates(tables: dict, near_bits: int) -> dict:
    """Pairs of rows in different splits with the same image bytes, or near-equal pHashes."""
    if not all({"image_sha256", "phash"} <= set(t.column_names) for t in tables.values()):
        empty = {"count": 0, "pairs": []}
        note = "no image hashes in the label tables (a shard set made before wsml had them): "
        note += "duplicates across splits not checked; re-shard to check them"
        return {"exact_duplicates": empty, "near_duplicates": empty, "hash_warnings": [note]}
    names = list(tables)
    split = np.concatenate([np.full(len(tables[s]), k) for k, s in enumerate(names)])
    keys = [k for s in names for k in tables[s]["key"].to_pylist()]
    sha = [h for s in names for h in tables[s]["image_sha256"].to_pylist()]
    phash = np.concatenate([tables[s]["phash"].to_numpy() for s in names]).astype(np.uint64)
    first: dict[str, int] = {}
    exact = []
    for i, h in enumerate(sha):
        j = first.setdefault(h, i)
        if j != i and split[j] != split[i]:
            exact.append((j, i))
    near = [(i, j) for i, j in _near_pairs(phash, split, near_bits) if sha[i] != sha[j]]

    def listing(pairs):
        rows = [[{"split": names[split[x]], "key": keys[x]} for x in p] for p in pairs[:LISTED]]
        return {"count": len(pairs), "pairs": rows}

    return {"exact_duplicates": listing(exact), "near_duplicates": listing(near)}


def _near_pairs(phash: np.ndarray, split: np.ndarray, bits: int) -> list[tuple[int, int]]:
    """Pairs in different splits whose hashes differ in at most ``bits`` bits: two such hashes
    agree exactly on at least one of ``bits + 1`` bands (pigeonhole), so only rows that share a
    band's value are compared."""
    found: set[tuple[int, int]] = set()
    edges = np.linspace(0, 64, bits + 2).astype(np.uint64)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (phash >> lo) & ((np.uint64(1) << (hi - lo)) - np.uint64(1))
        order = np.argsort(band, kind="stable")
        cuts = np.flatnonzero(np.diff(band[order])) + 1
        for group in np.split(order, cuts):
            if len(group) < 2 or len(set(split[group].tolist())) < 2:
                continue
            for start in range(0, len(group), 1024):  # bounded memory for a crowded band
                part = group[start : start + 1024]
                dist = np.bitwise_count(phash[part][:, None] ^ phash[group][None, :])
                close = (dist <= bits) & (split[part][:, None] != split[group][None, :])
                for a, b in zip(*np.nonzero(close), strict=True):
                    found.add((int(min(part[a], group[b])), int(max(part[a], group[b]))))
    return sorted(found)


def check_split_labels(ss: ShardSet, tables: dict) -> list[str]:
    """Every split table holds the official clean labels of its rows (val and test are
    evaluated on clean labels; a train row must not carry another image's labels)."""
    problems = []
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
                if not _same(a, b):
                    problems.append(
                        f"{split}: {col} differ from the official {name} labels of its rows"
                    )
    return problems


def _same(a: Lists, b: Lists) -> bool:
    va = np.ones(len(a), bool) if a.valid is None else a.valid
    vb = np.ones(len(b), bool) if b.valid is None else b.valid
    return (
        np.array_equal(a.offsets, b.offsets)
        and np.array_equal(a.values, b.values)
        and np.array_equal(va, vb)
    )


def check_view(ss: ShardSet, tables: dict, view: str) -> dict:
    """A view's splits are the shard set's, one row per split row, and its labels keep its
    regime's contract against the clean labels (``audit_counts``/``audit_failures``)."""
    meta = ss.regimes[view]
    regime = create_regime(meta["regime"], **meta["params"])
    problems, counts = [], {}
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
        counts[split] = total
        problems += [f"{split}: {p}" for p in regime.audit_failures(total)]
    return {"regime": meta["regime"], "problems": problems, "counts": counts}


def list_empty_classes(ss: ShardSet, tables: dict) -> dict[str, list[str]]:
    out = {}
    for split, t in tables.items():
        counts = np.bincount(from_arrow(t["positives"]).values, minlength=len(ss.classes))
        empty = [ss.classes[k] for k in np.flatnonzero(counts == 0).tolist()]
        if empty:
            out[split] = empty
    return out
