"""Click pieces shared by every package's commands: the project's error handling, registry-
backed choices, option types. Imports nothing heavy, so ``cli.py --help`` stays light."""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable

import click

STARTED = time.perf_counter()  # when the command line started (this module is imported first)

SIZE_RE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?i?b?)?\s*$", re.I)
SIZE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

# kind -> a function returning its Registry; each package's commands module registers its own
# kinds, imported only when a value is checked
REGISTRIES: dict[str, Callable] = {}


def choices(kind: str):
    """Register the function that returns the registry of ``kind`` (used as a decorator)."""

    def register(fn: Callable) -> Callable:
        REGISTRIES[kind] = fn
        return fn

    return register


def expected_errors(fn):
    """Turn the project's expected errors, and the operating system's that the user can fix,
    into ``Error: ...`` (exit 1) without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from shards.base.errors import WsmlError, os_error_message

        try:
            return fn(*args, **kwargs)
        except WsmlError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # read-only, no permission, full disk: the user's to fix
            message = os_error_message(e)
            if message is None:
                raise
            raise click.ClickException(message) from None

    return wrapper


class RegistryChoice(click.ParamType):
    """A name from one of the project's registries; an unknown one fails listing the choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = kind

    def registry(self):
        return REGISTRIES[self.kind]()

    def convert(self, value, param, ctx):
        reg = self.registry()
        if value in reg:
            return value
        self.fail(reg.unknown_message(value), param, ctx)


class PartType(click.ParamType):
    name = "K/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        k, slash, n = str(value).partition("/")
        if slash and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n):
            return int(k), int(n)
        self.fail(f"{value!r} is not K/N with 0 <= K < N, e.g. 0/4", param, ctx)


class ByteSize(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = SIZE_RE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size like 64MB or 1GB", param, ctx)
        unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
        return int(float(m.group(1)) * SIZE_UNITS[unit])


class FloatRange(click.FloatRange):
    """``click.FloatRange`` that refuses NaN and infinities (click's range checks let NaN
    through: every comparison with it is false)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


class NumberList(click.ParamType):
    """Comma-separated numbers (``int`` or ``float``), each in ``[lo, hi]`` (above ``lo`` when
    ``lo_open``) and finite, ``count`` of them when given: a tuple, or a usage error."""

    name = "numbers"

    def __init__(self, cast: type, lo: float, hi: float, *, lo_open=False, count=None):
        self.cast, self.lo, self.hi, self.lo_open, self.count = cast, lo, hi, lo_open, count

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        what = "integers" if self.cast is int else "numbers"
        want = f"{self.count} " if self.count else ""
        bound = f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
        try:
            items = tuple(self.cast(x) for x in str(value).split(","))
        except ValueError:
            items = ()
        ok = [math.isfinite(x) and (x > self.lo if self.lo_open else x >= self.lo) and x <= self.hi
              for x in items]  # fmt: skip
        if not items or not all(ok) or (self.count and len(items) != self.count):
            self.fail(f"{value!r}: expected {want}comma-separated {what} in {bound}", param, ctx)
        return items


SEED_TYPE = click.IntRange(0, 2**32 - 1)  # options.SEED: what numpy's RandomState takes


def parse_kv(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="-o")
        out[key.strip()] = value.strip()
    return out


def progress_factory(enabled: bool):
    """A function (description, total) -> tick(n) showing a tqdm bar; silent when not a TTY
    (then tqdm, 25 ms to import, is not imported)."""
    if not enabled:
        return lambda desc, total: lambda n: None
    from tqdm import tqdm

    bars = []

    def make(desc: str, total: int):
        bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)
        bars.append(bar)
        return bar.update

    return make


DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; anything else fails naming the choices."""
    if not DEVICE_RE.fullmatch(device):
        from shards.base.errors import WsmlError

        raise WsmlError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return device


def check_text_args(args: list[str]) -> None:
    """Every argument is valid UTF-8: wsml records paths and names in its JSON files and tables
    and names them in its messages, which an undecodable byte (``\\udcXX`` in Python's argv)
    cannot be in. A usage error naming the option, before any command runs."""
    for i, arg in enumerate(args):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            option = arg.split("=")[0] if arg.startswith("--") and "=" in arg else None
            option = option or (args[i - 1] if i and args[i - 1].startswith("-") else None)
            where = f" of {option}" if option else ""
            raise click.UsageError(
                f"the value{where}, '{shown}', is not valid UTF-8 (an undecodable byte); "
                "rename the file or folder, or give the text in UTF-8"
            ) from None


class DeviceType(click.ParamType):
    """A ``--device``: a usage error (exit 2) unless :func:`check_device` accepts it."""

    name = "device"

    def convert(self, value, param, ctx):
        from shards.base.errors import WsmlError

        try:
            return check_device(str(value))
        except WsmlError as e:
            self.fail(str(e), param, ctx)
