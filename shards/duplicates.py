"""``audit``'s duplicate checks across splits, on each image's hashes (``shards.image_hashes``):
the same sha256 in two splits (a hard failure), and near-duplicates, whose 64-bit perceptual
hashes lie a few bits apart. A pair at most ``fail_bits`` apart whose 256-bit hashes are also at
most ``fine_bits`` apart fails (a re-encoded or slightly resized copy lands there); the other
pairs up to ``near_bits`` are warnings to look at (look-alike images land there: the 64-bit hash
sees an image's coarse layout only). Each finding names both images: split, row, key, classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shards.image_hashes import SplitHashes


@dataclass(frozen=True)
class Rows:
    """Every split's rows laid end to end: split index, row and hashes of each."""

    names: list[str]
    split: np.ndarray  # int (M,)
    row: np.ndarray  # int64 (M,)
    sha256: np.ndarray  # uint8 (M, 32)
    phash: np.ndarray  # uint64 (M,)
    fine: np.ndarray  # uint8 (M, 32)
    known: np.ndarray  # bool (M,)
    decoded: np.ndarray  # bool (M,)

    @classmethod
    def create(cls, hashes: dict[str, SplitHashes]) -> Rows:
        names = list(hashes)
        n = [len(hashes[s].phash) for s in names]

        def joined(field: str) -> np.ndarray:
            return np.concatenate([getattr(hashes[s], field) for s in names])

        return cls(
            names,
            np.concatenate([np.full(k, i) for i, k in enumerate(n)]),
            np.concatenate([np.arange(k, dtype=np.int64) for k in n]),
            *(joined(f) for f in ("sha256", "phash", "fine", "known", "decoded")),
        )

    def at(self, i: int) -> tuple[str, int]:
        return self.names[self.split[i]], int(self.row[i])


@dataclass(frozen=True)
class NearLimits:
    near_bits: int  # 64-bit hashes at most this far apart: a near-duplicate (warned)
    fail_bits: int  # ... at most this far apart,
    fine_bits: int  # and 256-bit hashes at most this far apart: a copy (a failure)


def find_duplicates(
    hashes: dict[str, SplitHashes], limits: NearLimits, describe: Callable[[str, int], dict]
) -> tuple[list[dict], dict]:
    """Findings (both images described by ``describe(split, row)``) and counts."""
    rows = Rows.create(hashes)
    exact = _exact_pairs(rows)
    near = []
    usable = rows.known & rows.decoded
    for i, j in _near_pairs(rows.phash, rows.split, usable, limits.near_bits):
        if not np.array_equal(rows.sha256[i], rows.sha256[j]):
            bits = int(np.bitwise_count(rows.phash[i] ^ rows.phash[j]))
            fine = int(np.bitwise_count(rows.fine[i] ^ rows.fine[j]).sum())
            copy = bits <= limits.fail_bits and fine <= limits.fine_bits
            near.append((not copy, bits, fine, i, j))
    findings = [_pair("duplicate", "fail", rows, i, j, describe) for i, j in exact]
    for warn, bits, fine, i, j in sorted(near):
        found = _pair("near-duplicate", "warn" if warn else "fail", rows, i, j, describe)
        findings.append({**found, "bits": bits, "fine_bits": fine})
    counts = {
        "exact": len(exact),
        "near_fail": sum(not p[0] for p in near),
        "near_warn": sum(p[0] for p in near),
        "near_warn_within_fail_bits": sum(p[0] and p[1] <= limits.fail_bits for p in near),
    }
    return findings, counts


def _pair(check: str, severity: str, rows: Rows, i: int, j: int, describe) -> dict:
    """The pair as a finding: the later split's image first (test before train, say), so the
    copy that leaked is named first and the image it copies second."""
    if rows.split[i] < rows.split[j]:
        i, j = j, i
    return {"check": check, "severity": severity, **describe(*rows.at(i)),
            "other": describe(*rows.at(j))}  # fmt: skip


def _exact_pairs(rows: Rows) -> list[tuple[int, int]]:
    """Pairs in different splits with the same sha256 of the image bytes (each later image
    paired with the first image of its bytes), found by sorting the digests (32 bytes a row)."""
    at = np.flatnonzero(rows.known)
    digests = np.ascontiguousarray(rows.sha256[at]).view(np.dtype((np.void, 32))).ravel()
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    j = at[first[inverse.ravel()]]
    pair = (j != at) & (rows.split[j] != rows.split[at])
    return list(zip(j[pair].tolist(), at[pair].tolist(), strict=True))


def _near_pairs(
    phash: np.ndarray, split: np.ndarray, known: np.ndarray, bits: int
) -> list[tuple[int, int]]:
    """Pairs in different splits whose hashes differ in at most ``bits`` bits: two such hashes
    agree exactly on at least one of ``bits + 1`` bands (pigeonhole), so only rows that share a
    band's value are compared."""
    found: set[tuple[int, int]] = set()
    edges = np.linspace(0, 64, bits + 2).astype(np.uint64)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (phash >> lo) & ((np.uint64(1) << (hi - lo)) - np.uint64(1))
        order = np.argsort(band, kind="stable")
        order = order[known[order]]
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


def summarize_pairs(findings: list[dict], check: str, severity: str) -> str:
    """The first pairs of a kind, as ``split/key = split/key; ...``."""
    pairs = [f for f in findings if f["check"] == check and f["severity"] == severity]
    shown = [f"{a['split']}/{a['key']} = {b['split']}/{b['key']}" for a, b in
             ((f, f["other"]) for f in pairs[:5])]  # fmt: skip
    return "; ".join(shown) + ("; ..." if len(pairs) > 5 else "")
