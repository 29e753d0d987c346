"""Converter options from ``-o key=value``: typed, and unknown keys refused with the valid list."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shards.base.errors import WsmlError
from shards.base.registry import Registry
from shards.convert.source import parse_options


@dataclass(frozen=True)
class Opts:
    name: str = ""
    count: int = 1
    limit: int | None = None
    ratio: float = 0.5
    flag: bool = False
    items: tuple[str, ...] = ()


def test_values_take_the_annotated_type():
    got = parse_options(
        Opts,
        {
            "name": "x",
            "count": "3",
            "limit": "7",
            "ratio": "0.25",
            "flag": "yes",
            "items": "a, b,,c",
        },
        "t",
    )
    assert got == Opts("x", 3, 7, 0.25, True, ("a", "b", "c"))


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"cuont": "1"}, "unknown option.*cuont.*valid: name, count, limit, ratio, flag, items"),
        ({"count": "many"}, "count expects an integer"),
        ({"ratio": "half"}, "ratio expects a number"),
        ({"flag": "perhaps"}, "flag expects true/false"),
    ],
)
def test_bad_values_are_refused(raw, message):
    with pytest.raises(WsmlError, match=message):
        parse_options(Opts, raw, "t")


def test_registry_refuses_twice_and_suggests():
    @dataclass(frozen=True)
    class Entry:
        name: str

    reg: Registry[Entry] = Registry("thing")
    reg.register(Entry("alpha"))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Entry("alpha"))
    with pytest.raises(WsmlError, match="Did you mean alpha"):
        reg.get("alpah")
