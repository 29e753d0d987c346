"""One small registry pattern for every extension point (converters, regimes, methods, presets).

An entry is a frozen dataclass with a ``name``; registering a name twice is an error and an
unknown name fails at once with close matches and the full list of choices. A package of
entries (methods, converters) registers them by importing all its modules
(:func:`import_modules`): a new file is found without a list to update.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from shards.base.errors import WsmlError

T = TypeVar("T")


class UnknownNameError(WsmlError):
    """An unknown registry name; the message lists close matches and every choice."""


class Registry(Generic[T]):
    """Name -> entry mapping for one kind of extension (``kind`` names it in messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        name = entry.name  # type: ignore[attr-defined]
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Choices: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """The names in registration order (stable as entries are added after them)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries[n] for n in self.names())


def import_modules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module of ``package`` (``path``: its ``__path__``), sorted by name, so each
    registers its entries; returns their names. A module that fails to import stops everything,
    naming itself: it is never skipped."""
    names = sorted(m.name for m in pkgutil.iter_modules(path))
    for name in names:
        try:
            importlib.import_module(f"{package}.{name}")
        except Exception as e:
            raise ImportError(f"{package}.{name} failed to import: {type(e).__name__}: {e}") from e
    return names
