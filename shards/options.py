"""The one parser of ``key=value`` option strings (``-o`` on the command line) into the fields of
a dataclass, by each field's annotation: converters' options, method configs and run options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shards.errors import WsmlError

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
