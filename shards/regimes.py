"""Label regimes: observed-label views derived from the full labels without touching the tars.

Each regime runs on an official split in the field's formatted row order, before the train/val
split (Cole et al. 2021, ``preproc/generate_observed_labels.py``), so a shard set reproduces the
observed matrices of the reference code bases exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.errors import WsmlError
from shards.lists import Lists, ListsBuilder, concat, dense_rows, from_dense
from shards.registry import Registry


@dataclass(frozen=True)
class OfficialLabels:
    """Full labels of one official split in formatted order; a null ``negatives`` row means
    every class not positive is negative (a fully annotated source)."""

    positives: Lists
    negatives: Lists
    num_classes: int

    def num_negatives(self, i: int) -> int:
        if self.negatives.is_valid(i):
            return int(self.negatives.offsets[i + 1] - self.negatives.offsets[i])
        return self.num_classes - int(self.positives.offsets[i + 1] - self.positives.offsets[i])

    def negatives_of(self, i: int) -> np.ndarray:
        """A fresh array (callers shuffle it in place)."""
        if self.negatives.is_valid(i):
            return self.negatives.row(i).copy()
        mask = np.ones(self.num_classes, dtype=bool)
        mask[self.positives.row(i)] = False
        return np.flatnonzero(mask)


_EMPTY = np.zeros(0, dtype=np.int64)
_STAND_INS: dict[int, np.ndarray] = {}


def _stand_in(n: int) -> np.ndarray:
    if n not in _STAND_INS:
        _STAND_INS[n] = np.arange(n)
    return _STAND_INS[n]


Observed = tuple[Lists, Lists]  # kept positives, kept negatives per row


@dataclass(frozen=True)
class SinglePositive:
    """The field's generator: keep ``num_pos`` random positives and ``num_neg`` random negatives."""

    seed: int = 1200
    num_pos: int = 1
    num_neg: int = 0

    def view_name(self) -> str:
        name = "single-positive"
        if (self.num_pos, self.num_neg) != (1, 0):
            name += f"-pos{self.num_pos}-neg{self.num_neg}"
        return name + ("" if self.seed == 1200 else f"-s{self.seed}")

    def generate(self, labels: OfficialLabels) -> Observed:
        # A fresh RandomState per official split; row by row: shuffle the positives and keep the
        # first num_pos, then shuffle the negatives even when none are kept (the draw advances
        # the RNG, and skipping it would change every later row).
        rng = np.random.RandomState(self.seed)
        pos_out, neg_out = ListsBuilder(), ListsBuilder()
        for i in range(len(labels.positives)):
            idx_pos = np.sort(labels.positives.row(i))  # a copy, ascending like np.where
            rng.shuffle(idx_pos)
            pos_out.append(np.sort(idx_pos[: self.num_pos]))
            if self.num_neg:
                idx_neg = labels.negatives_of(i)
                rng.shuffle(idx_neg)
                neg_out.append(np.sort(idx_neg[: self.num_neg]))
            else:  # the draws depend on the length alone: shuffle a stand-in of that length
                rng.shuffle(_stand_in(labels.num_negatives(i)))
                neg_out.append(_EMPTY)
        return pos_out.build(), neg_out.build()


@dataclass(frozen=True)
class Partial:
    """PU-MLC's partial labels (Yuan et al. 2024): each label entry is kept independently with
    probability ``fraction`` (U(0,1) < fraction, drawn row-major over the formatted split with
    ``RandomState(seed)``); the others become unknown."""

    fraction: float = 0.1
    seed: int = 0

    def view_name(self) -> str:
        return f"partial-p{self.fraction:g}" + ("" if self.seed == 0 else f"-s{self.seed}")

    def generate(self, labels: OfficialLabels) -> Observed:
        if not 0.0 < self.fraction <= 1.0:
            raise WsmlError(f"partial: fraction must be in (0, 1], got {self.fraction}")
        rng = np.random.RandomState(self.seed)
        n, chunk = len(labels.positives), 4096
        pos_parts, neg_parts = [], []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            full = dense_rows(labels.positives, labels.negatives, labels.num_classes, start, stop)
            keep = rng.rand(stop - start, labels.num_classes) < self.fraction  # = rand(n, L)
            observed = np.where(keep, full, 0)
            pos_parts.append(from_dense(observed, 1))
            neg_parts.append(from_dense(observed, -1))
        return concat(pos_parts), concat(neg_parts)


@dataclass(frozen=True)
class RegimeInfo:
    name: str
    description: str
    params: type
    paper: str


REGIMES: Registry[RegimeInfo] = Registry("label regime")
REGIMES.register(
    RegimeInfo(
        "single-positive",
        "one observed positive per image, the rest unknown",
        SinglePositive,
        "Cole et al., CVPR 2021",
    )
)
REGIMES.register(
    RegimeInfo(
        "partial",
        "each label entry observed with probability `fraction`",
        Partial,
        "Yuan et al., ICME 2024 (PU-MLC)",
    )
)


def create_regime(name: str, **params) -> SinglePositive | Partial:
    """Build a regime from its name and parameters; unknown names or parameters fail listing choices."""
    info = REGIMES.get(name)
    valid = set(info.params.__dataclass_fields__)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise WsmlError(
            f"unknown parameter(s) {', '.join(unknown)} for regime {name}; valid: {', '.join(sorted(valid))}"
        )
    return info.params(**params)


def parse_regime_spec(spec: str) -> SinglePositive | Partial:
    """``single-positive`` or ``partial:fraction=0.1,seed=0`` -> a regime."""
    name, _, rest = spec.partition(":")
    params: dict[str, float | int] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise WsmlError(f"bad regime parameter {item!r} in {spec!r}; expected key=value")
        try:
            params[key.strip()] = float(value) if key.strip() == "fraction" else int(value)
        except ValueError:
            kind = "a number" if key.strip() == "fraction" else "an integer"
            raise WsmlError(f"regime parameter {item!r} in {spec!r}: expected {kind}") from None
    return create_regime(name.strip(), **params)


REGIME_KIND: dict[type, str] = {info.params: info.name for info in REGIMES}
