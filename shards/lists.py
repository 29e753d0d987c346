"""Ragged lists of class indices in one flat array (CSR: offsets + values), the in-memory form of
every label column, so millions of rows cost a few arrays rather than millions of objects."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lists:
    """Row ``i`` is ``values[offsets[i]:offsets[i + 1]]``; ``valid[i]`` False marks a null row."""

    offsets: np.ndarray  # int64 (N + 1,)
    values: np.ndarray  # int64 (offsets[-1],)
    valid: np.ndarray | None = None  # bool (N,); None: every row is valid

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def is_valid(self, i: int) -> bool:
        return self.valid is None or bool(self.valid[i])

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[int] | None]) -> Lists:
        lengths, flat, valid = [0], [], []
        for r in rows:
            valid.append(r is not None)
            lengths.append(0 if r is None else len(r))
            if r is not None:
                flat.extend(r)
        offsets = np.cumsum(np.asarray(lengths, dtype=np.int64))
        v = np.asarray(valid, dtype=bool)
        return cls(offsets, np.asarray(flat, dtype=np.int64), None if v.all() else v)

    @classmethod
    def nulls(cls, n: int) -> Lists:
        return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros(n, dtype=bool))

    def take(self, idx: np.ndarray) -> Lists:
        """The rows ``idx`` in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        valid = None if self.valid is None else self.valid[idx]
        return Lists(offsets, self.values[gather], valid)


class ListsBuilder:
    """Appends rows one at a time into growing flat lists (no per-row objects kept)."""

    def __init__(self):
        self._lengths: list[int] = [0]
        self._flat: list[int] = []

    def append(self, row: np.ndarray) -> None:
        self._lengths.append(len(row))
        self._flat.extend(row.tolist())

    def build(self) -> Lists:
        offsets = np.cumsum(np.asarray(self._lengths, dtype=np.int64))
        return Lists(offsets, np.asarray(self._flat, dtype=np.int64))


def dense_rows(
    positives: Lists, negatives: Lists, num_classes: int, start: int, stop: int, fill: int = 0
) -> np.ndarray:
    """int8 (stop - start, L): 1 at positives, -1 at negatives, ``fill`` elsewhere; a null
    negatives row makes every class that is not positive -1 (a fully annotated source)."""
    out = np.full((stop - start, num_classes), fill, dtype=np.int8)
    if negatives.valid is not None:
        out[~negatives.valid[start:stop]] = -1
    for lists, value in ((negatives, -1), (positives, 1)):
        lo, hi = lists.offsets[start], lists.offsets[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(lists.offsets[start : stop + 1]))
        out[rows, lists.values[lo:hi]] = value
    return out


def from_dense(matrix: np.ndarray, value: int) -> Lists:
    """Rows of the column indices where ``matrix == value`` (ascending)."""
    rows, cols = np.nonzero(matrix == value)
    offsets = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=offsets[1:])
    return Lists(offsets, cols.astype(np.int64))


def concat(parts: Sequence[Lists]) -> Lists:
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        offsets.append(p.offsets[1:] + base)
        base += p.offsets[-1]
    values = np.concatenate([p.values for p in parts]) if parts else np.zeros(0, np.int64)
    return Lists(np.concatenate(offsets), values)


@dataclass(frozen=True)
class LabelLists:
    """One split's labels kept ragged: ``positives`` and ``negatives`` per row (a null
    negatives row: every class that is not positive is negative, a fully annotated source),
    every other entry unknown. Memory grows with the annotations, not with rows x classes."""

    positives: Lists
    negatives: Lists
    num_classes: int

    def __len__(self) -> int:
        return len(self.positives)

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> LabelLists:
        """The ragged form of an int8 (N, L) matrix (1 / 0 unknown / -1)."""
        matrix = np.asarray(matrix)
        return cls(from_dense(matrix, 1), from_dense(matrix, -1), int(matrix.shape[1]))

    def take(self, rows: np.ndarray) -> LabelLists:
        return LabelLists(self.positives.take(rows), self.negatives.take(rows), self.num_classes)

    def dense(self, rows: np.ndarray | None = None) -> np.ndarray:
        """int8 (B, L) of ``rows`` (every row when None): 1 / 0 unknown / -1."""
        part = self if rows is None else self.take(rows)
        return dense_rows(part.positives, part.negatives, self.num_classes, 0, len(part))

    def full_rows(self) -> np.ndarray:
        """bool (N,): rows whose negatives are null (every non-positive class negative)."""
        if self.negatives.valid is None:
            return np.zeros(len(self), dtype=bool)
        return ~self.negatives.valid

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(positives, annotated) per class, int64 (L,): how many rows have the class as a
        positive, and as a positive or a negative."""
        n_cls = self.num_classes
        pos = np.bincount(self.positives.values, minlength=n_cls)
        full = self.full_rows()
        neg_lengths = np.diff(self.negatives.offsets)
        neg_rows = np.repeat(np.arange(len(self)), neg_lengths)
        kept = ~full[neg_rows]  # a null row's stored negatives (none) never count twice
        neg = np.bincount(self.negatives.values[kept], minlength=n_cls)
        pos_rows = np.repeat(np.arange(len(self)), np.diff(self.positives.offsets))
        pos_in_full = np.bincount(self.positives.values[full[pos_rows]], minlength=n_cls)
        return pos, pos + neg + (int(full.sum()) - pos_in_full)

    def has_unknown(self) -> bool:
        """Whether some entry is neither positive nor negative (the annotated-only mAP)."""
        return int(self.class_counts()[1].sum()) < len(self) * self.num_classes
