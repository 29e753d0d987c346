"""Label regimes: observed-label views derived from the full labels without touching the tars.

Each regime runs on an official split in the field's formatted row order, before the train/val
split (Cole et al. 2021, ``preproc/generate_observed_labels.py``), so a shard set reproduces the
observed matrices of the reference code bases exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from shards.base.errors import WsmlError
from shards.base.options import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    SEED,
    UNIT,
    Range,
    check_ranges,
)
from shards.base.registry import Registry
from shards.lists import Lists, ListsBuilder, concat, dense_rows, from_dense


@dataclass(frozen=True)
class OfficialLabels:
    """Full labels of one official split in formatted order; a null ``negatives`` row means
    every class not positive is negative (a fully annotated source)."""

    positives: Lists
    negatives: Lists
    num_classes: int
    # per-positive values the source gives (``size_weight``, ``location_weight``: float64
    # arrays aligned with ``positives.values``), for the biased single-positive protocols
    columns: dict[str, np.ndarray] = field(default_factory=dict)

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


def _negative_counts(labels: OfficialLabels) -> np.ndarray:
    """int64 (N,): every row's number of negatives (:meth:`OfficialLabels.num_negatives`)."""
    pos, neg = labels.positives, labels.negatives
    counts = np.diff(neg.offsets)
    if neg.valid is not None:
        counts = np.where(neg.valid, counts, labels.num_classes - np.diff(pos.offsets))
    return counts


_EMPTY = np.zeros(0, dtype=np.int64)
_STAND_INS: dict[int, np.ndarray] = {}


def _stand_in(n: int) -> np.ndarray:
    if n not in _STAND_INS:
        _STAND_INS[n] = np.arange(n)
    return _STAND_INS[n]


Observed = tuple[Lists, Lists]  # kept positives, kept negatives per row


def exact(x: float) -> str:
    """A number in a view's name: short (``0.1``, ``1e-09``) where that reads back as the same
    number, else every digit (``0.1000000001``), so two views never share a name."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


@dataclass(frozen=True)
class SinglePositive:
    """The field's generator: keep ``num_pos`` random positives and ``num_neg`` random negatives;
    ``bias`` other than ``uniform`` keeps one positive drawn by the protocols of Arroyo, Perona
    and Cole (arXiv 2305.15584), see :mod:`shards.bias`."""

    seed: int = 1200
    num_pos: int = 1
    num_neg: int = 0
    bias: str = "uniform"  # uniform | size | location | semantic
    class_weights: tuple[float, ...] = ()  # semantic: one weight per class

    RANGES: ClassVar = {
        "seed": SEED,
        "num_pos": AT_LEAST_ONE,
        "num_neg": NON_NEGATIVE,
        "class_weights": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self)

    def view_name(self) -> str:
        name = "single-positive" + ("" if self.bias == "uniform" else f"-{self.bias}")
        if (self.num_pos, self.num_neg) != (1, 0):
            name += f"-pos{self.num_pos}-neg{self.num_neg}"
        return name + ("" if self.seed == 1200 else f"-s{self.seed}")

    def generate(self, labels: OfficialLabels) -> Observed:
        if self.bias != "uniform":
            from shards.bias import generate_biased

            return generate_biased(self, labels)
        # A fresh RandomState per official split; row by row: shuffle the positives and keep the
        # first num_pos, then shuffle the negatives even when none are kept (the draw advances
        # the RNG, and skipping it would change every later row). A shuffle of 0 or 1 items
        # draws nothing, so such rows skip it.
        rng = np.random.RandomState(self.seed)
        pos = labels.positives
        offsets, num_neg = pos.offsets.tolist(), _negative_counts(labels).tolist()
        lengths, flat = [0], []
        neg_out = ListsBuilder()
        for i in range(len(pos)):
            lo, hi = offsets[i], offsets[i + 1]
            if hi - lo > 1:
                idx_pos = np.sort(pos.values[lo:hi])  # a copy, ascending like np.where
                rng.shuffle(idx_pos)
                kept = np.sort(idx_pos[: self.num_pos]).tolist()
            else:
                kept = pos.values[lo:hi].tolist()
            lengths.append(len(kept))
            flat.extend(kept)
            if self.num_neg:
                idx_neg = labels.negatives_of(i)
                rng.shuffle(idx_neg)
                neg_out.append(np.sort(idx_neg[: self.num_neg]))
            elif num_neg[i] > 1:  # the draws depend on the length alone: shuffle a stand-in
                rng.shuffle(_stand_in(num_neg[i]))
        kept_pos = Lists(np.cumsum(np.asarray(lengths, np.int64)), np.asarray(flat, np.int64))
        if not self.num_neg:
            return kept_pos, Lists(np.zeros(len(pos) + 1, np.int64), _EMPTY)
        return kept_pos, neg_out.build()

    def audit_counts(self, clean: np.ndarray, observed: np.ndarray) -> dict[str, int]:
        """What ``audit`` sums over a view's rows (int8 (N, L) clean and observed labels)."""
        c = entry_counts(clean, observed)
        for what, k, value in (("positives", self.num_pos, 1), ("negatives", self.num_neg, -1)):
            want = np.minimum(k, (clean == value).sum(1))
            c[f"rows_off_{what}"] = int(((observed == value).sum(1) != want).sum())
        return c

    def audit_masks(self, clean: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
        """The entries at fault, by problem (``audit`` names their rows and classes): a
        row that keeps too many labels names the kept ones, too few the ones it could keep."""
        masks = not_clean_masks(clean, observed)
        for what, k, value in (("positives", self.num_pos, 1), ("negatives", self.num_neg, -1)):
            want = np.minimum(k, (clean == value).sum(1))[:, None]
            kept = (observed == value).sum(1)[:, None]
            bound = f"min({k}, clean {what}) {what}"
            masks[f"keeps more than {bound}"] = (kept > want) & (observed == value)
            masks[f"keeps fewer than {bound}"] = (
                (kept < want) & (clean == value) & (observed != value)
            )
        return masks

    def audit_failures(self, c: dict[str, int]) -> list[str]:
        out = _not_clean(c)
        for what, k in (("positives", self.num_pos), ("negatives", self.num_neg)):
            if c[f"rows_off_{what}"]:
                out.append(
                    f"{c[f'rows_off_{what}']} row(s) do not keep min({k}, clean {what}) {what}"
                )
        return out


def entry_counts(clean: np.ndarray, observed: np.ndarray) -> dict[str, int]:
    """Entry counts of an observed view against its clean labels (1 / 0 unknown / -1)."""
    pairs = {
        "not_clean_positive": (observed == 1) & (clean != 1),
        "not_clean_negative": (observed == -1) & (clean != -1),
        "on_unknown": (observed != 0) & (clean == 0),
        "kept": observed != 0,
        "known": clean != 0,
        "clean_positive": clean == 1,
        "clean_negative": clean == -1,
        "positive_to_negative": (clean == 1) & (observed == -1),
        "negative_to_positive": (clean == -1) & (observed == 1),
        "dropped": (clean != 0) & (observed == 0),
    }
    return {k: int(v.sum()) for k, v in pairs.items()}


def not_clean_masks(clean: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
    """Observed labels that the clean labels do not hold (a leaked or flipped label)."""
    return {
        "observed positive that is not a clean positive": (observed == 1) & (clean != 1),
        "observed negative that is not a clean negative": (observed == -1) & (clean != -1),
    }


def _not_clean(c: dict[str, int]) -> list[str]:
    out = []
    for what in ("positive", "negative"):
        if c[f"not_clean_{what}"]:
            out.append(f"{c[f'not_clean_{what}']} observed {what}(s) are not clean {what}s")
    return out


def binomial_ok(k: int, n: int, p: float, z: float = 5.0) -> bool:
    """``k`` successes of ``n`` draws at rate ``p`` lie within ``z`` standard deviations."""
    return abs(k - n * p) <= z * (n * p * (1 - p)) ** 0.5 + 1


def draw_view(labels: OfficialLabels, seed: int, decide) -> Observed:
    """A view drawn entry by entry: U(0,1) draws row-major over the formatted split with
    ``RandomState(seed)`` (chunk by chunk, the same stream as one rand(N, L)), and
    ``decide(full, u)`` the observed int8 labels of a chunk of full labels."""
    rng = np.random.RandomState(seed)
    n, chunk = len(labels.positives), 4096
    pos_parts, neg_parts = [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        full = dense_rows(labels.positives, labels.negatives, labels.num_classes, start, stop)
        observed = decide(full, rng.rand(stop - start, labels.num_classes))
        pos_parts.append(from_dense(observed, 1))
        neg_parts.append(from_dense(observed, -1))
    return concat(pos_parts), concat(neg_parts)


@dataclass(frozen=True)
class Partial:
    """PU-MLC's partial labels (Yuan et al. 2024): each label entry is kept independently with
    probability ``fraction`` (U(0,1) < fraction, drawn row-major over the formatted split with
    ``RandomState(seed)``); the others become unknown."""

    fraction: float = 0.1
    seed: int = 0

    RANGES: ClassVar = {"fraction": Range(0, 1, lo_open=True), "seed": SEED}

    def __post_init__(self) -> None:
        check_ranges(self)

    def view_name(self) -> str:
        return f"partial-p{exact(self.fraction)}" + ("" if self.seed == 0 else f"-s{self.seed}")

    def generate(self, labels: OfficialLabels) -> Observed:
        fraction = self.fraction
        return draw_view(labels, self.seed, lambda full, u: np.where(u < fraction, full, 0))

    def audit_counts(self, clean: np.ndarray, observed: np.ndarray) -> dict[str, int]:
        return entry_counts(clean, observed)

    def audit_masks(self, clean: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
        return not_clean_masks(clean, observed)

    def audit_failures(self, c: dict[str, int]) -> list[str]:
        out = _not_clean(c)
        if not binomial_ok(c["kept"], c["known"], self.fraction):
            out.append(
                f"{c['kept']} of {c['known']} entries kept, outside the binomial range of "
                f"fraction {self.fraction:g}"
            )
        return out


@dataclass(frozen=True)
class RegimeInfo:
    name: str
    description: str
    params: type
    paper: str
    trains_as: str | None = None  # the kind of labels methods see (default: the name)


@dataclass(frozen=True)
class Noisy:
    """Label noise on the full labels: a positive becomes a negative with probability
    ``flip_pos``, a negative a positive with probability ``flip_neg`` (U(0,1) draws row-major
    over the formatted split with ``RandomState(seed)``, like ``partial``); unknowns stay
    unknown. ``flip_pos == flip_neg`` is symmetric noise."""

    flip_pos: float = 0.1
    flip_neg: float = 0.0
    seed: int = 0

    RANGES: ClassVar = {"flip_pos": UNIT, "flip_neg": UNIT, "seed": SEED}

    def __post_init__(self) -> None:
        check_ranges(self)

    def view_name(self) -> str:
        name = f"noisy-p{exact(self.flip_pos)}-q{exact(self.flip_neg)}"
        return name + ("" if self.seed == 0 else f"-s{self.seed}")

    def generate(self, labels: OfficialLabels) -> Observed:
        flip_pos, flip_neg = self.flip_pos, self.flip_neg

        def flip(full: np.ndarray, u: np.ndarray) -> np.ndarray:
            flips = ((full == 1) & (u < flip_pos)) | ((full == -1) & (u < flip_neg))
            return np.where(flips, -full, full)

        return draw_view(labels, self.seed, flip)

    def audit_counts(self, clean: np.ndarray, observed: np.ndarray) -> dict[str, int]:
        return entry_counts(clean, observed)

    def audit_masks(self, clean: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "observed entry that is unknown in the clean labels": (observed != 0) & (clean == 0),
            "known entry dropped": (clean != 0) & (observed == 0),
        }

    def audit_failures(self, c: dict[str, int]) -> list[str]:
        out = []
        if c["on_unknown"] or c["dropped"]:
            out.append(f"{c['on_unknown']} unknown entries observed, {c['dropped']} known dropped")
        for flips, base, rate in (
            ("positive_to_negative", "clean_positive", self.flip_pos),
            ("negative_to_positive", "clean_negative", self.flip_neg),
        ):
            if not binomial_ok(c[flips], c[base], rate):
                out.append(
                    f"{c[flips]} of {c[base]} {base.replace('_', ' ')}s flipped, outside the "
                    f"binomial range of rate {rate:g}"
                )
        return out


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
        "noisy",
        "full labels with positives and negatives flipped at rates p and q",
        Noisy,
        "symmetric/asymmetric noise of the robust-loss papers (e.g. Hill, SPLC)",
        trains_as="partial",  # observed 1/-1 entries taken as given; none unknown
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


Regime = SinglePositive | Partial | Noisy


def create_regime(name: str, **params) -> Regime:
    """Build a regime from its name and parameters; unknown names or parameters fail listing choices."""
    info = REGIMES.get(name)
    valid = {f.name for f in fields(info.params)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise WsmlError(
            f"unknown parameter(s) {', '.join(unknown)} for regime {name}; valid: {', '.join(sorted(valid))}"
        )
    return info.params(**params)


_FLOATS = {"fraction", "flip_pos", "flip_neg"}


def parse_regime_spec(spec: str) -> Regime:
    """``single-positive``, ``partial:fraction=0.1,seed=0`` or
    ``single-positive:bias=size`` -> a regime."""
    name, _, rest = spec.partition(":")
    params: dict[str, float | int | str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise WsmlError(f"bad regime parameter {item!r} in {spec!r}; expected key=value")
        key = key.strip().replace("-", "_")
        if key == "bias":
            params[key] = value.strip()
            continue
        try:
            params[key] = float(value) if key in _FLOATS else int(value)
        except ValueError:
            kind = "a number" if key in _FLOATS else "an integer"
            raise WsmlError(f"regime parameter {item!r} in {spec!r}: expected {kind}") from None
    return create_regime(name.strip(), **params)


REGIME_KIND: dict[type, str] = {info.params: info.name for info in REGIMES}
