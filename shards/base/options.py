"""The one parser of ``key=value`` option strings (``-o`` on the command line) into the fields of
a dataclass, by each field's annotation: converters' options, method configs and run options."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shards.base.errors import WsmlError

_CASTS = {"int": (int, "an integer"), "float": (float, "a number")}


def parse_value(text: str, annotation: Any, key: str) -> Any:
    """One option's text as its field's annotated type (annotations are strings here):
    ``none`` for an optional field, booleans, ints, floats, comma-separated tuples (of the
    tuple's item type), else the text itself."""
    ann = str(annotation)
    kind = ann.split("|")[0].strip()
    if "None" in ann and text.strip().lower() == "none":
        return None
    if kind.startswith("tuple"):
        item = kind[kind.find("[") + 1 :].split(",")[0].strip() if "[" in kind else "str"
        parts = [s.strip() for s in text.split(",") if s.strip()]
        if item not in _CASTS:
            return tuple(parts)
        try:
            return tuple(_CASTS[item][0](s) for s in parts)
        except ValueError:
            raise WsmlError(f"option {key} expects comma-separated numbers, got {text!r}") from None
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise WsmlError(f"option {key} expects true/false, got {text!r}")
    if kind in _CASTS:
        cast, what = _CASTS[kind]
        try:
            return cast(text)
        except ValueError:
            raise WsmlError(f"option {key} expects {what}, got {text!r}") from None
    return text


def parse_fields(cls: type, raw: Mapping[str, str], what: str) -> dict[str, Any]:
    """``raw``'s values parsed for the fields of dataclass ``cls``; an unknown key fails listing
    the valid ones (``what`` names the owner in the message)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise WsmlError(f"unknown option(s) {', '.join(unknown)} for {what}; valid: {valid}")
    return {key: parse_value(text, fields[key].type, key) for key, text in raw.items()}


@dataclass(frozen=True)
class Range:
    """The values a numeric option may take, from ``lo`` to ``hi`` (each end included unless
    open); never NaN or infinite. Declared per field in a dataclass's ``RANGES``."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            return False
        above = self.lo < x if self.lo_open else self.lo <= x
        return above and (x < self.hi if self.hi_open else x <= self.hi)

    def __str__(self) -> str:
        if self.lo == -math.inf and self.hi == math.inf:
            return "a finite number"
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {_number(self.lo)}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"in {left}{_number(self.lo)}, {_number(self.hi)}{right}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


FINITE = Range(-math.inf)  # any real number (never NaN or infinite)
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
UNIT = Range(0, 1)  # a probability or a share, both ends included
UNIT_OPEN = Range(0, 1, lo_open=True, hi_open=True)
BELOW_ONE = Range(0, 1, hi_open=True)  # a decay or a momentum
SEED = Range(0, 2**32 - 1)  # what numpy's RandomState takes
EPOCHS = Range(1, 10_000)  # schedules are made per step before the first one


def declared_ranges(cls: type) -> dict[str, Range]:
    """The ``RANGES`` a dataclass and its bases declare (a subclass's entry wins)."""
    out: dict[str, Range] = {}
    for base in reversed(cls.__mro__):
        out.update(base.__dict__.get("RANGES", {}))
    return out


def check_ranges(obj: Any) -> None:
    """Every field with a declared range holds a value in it (each item of a tuple; None where
    the field allows none); else a WsmlError naming the option, its range and the value."""
    for name, allowed in declared_ranges(type(obj)).items():
        value = getattr(obj, name)
        items = value if isinstance(value, tuple | list) else (value,)
        if any(v is not None and v not in allowed for v in items):
            raise WsmlError(f"{name} must be {allowed}, got {value!r}")


def numeric_fields(cls: type) -> list[str]:
    """The fields of a dataclass that hold numbers (ints, floats, tuples of them)."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if any(t in str(f.type) for t in ("int", "float")) and "bool" not in str(f.type)
    ]
