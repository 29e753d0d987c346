"""A CPU stand-in for a GPU, so a CPU test catches what only a GPU would show: tensors that mix
devices, and host syncs.

Inside ``with stand_in() as check:`` the ``meta`` device computes: a tensor made on it or moved
to it (``device="meta"``, ``.to("meta")``, ``module.to("meta")``) reports ``device.type ==
"meta"`` but holds real CPU values, so data-dependent code (``nonzero``, ``unique``, ``int(x)``)
runs. Every op is checked as CUDA checks it: its tensor arguments must be on one device, a 0-dim
CPU tensor excepted; a CPU generator cannot draw on the stand-in. ``check.syncs`` counts what
would make the host wait for a GPU: reading a value (``item``, ``int()``, ``tolist``), a copy
back to the CPU, an op whose output size depends on the values (``nonzero``, boolean
indexing, ``repeat_interleave`` without ``output_size``); ``check.blocking`` counts host-to-device
copies made without ``non_blocking``. Code that branches on ``device.type == "cpu"`` takes its
GPU path here; code that asks for ``"cuda"`` by name (pinned memory, cuDNN) does not, and
``torch.autocast("meta")`` is the CPU's.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

STAND_IN = torch.device("meta")
aten = torch.ops.aten
# ops whose output size depends on the values: on a GPU the host waits to learn it
SIZED_BY_VALUES = {
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten.masked_select.default,
    aten.unique_dim.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
}
READS = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default}
COPIES = {aten._to_copy.default, aten.copy_.default}


class StandInTensor(torch.Tensor):
    """A tensor on the stand-in device: ``device`` meta, values in ``inner`` (a CPU tensor)."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            layout=inner.layout,
            device=STAND_IN,
            requires_grad=inner.requires_grad,
        )

    def __init__(self, inner: torch.Tensor):
        self.inner = inner

    def __repr__(self) -> str:
        return f"StandInTensor({self.inner!r})"

    def tolist(self):
        _active().note_sync("tolist")
        return self.inner.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert a device tensor (stand-in) to numpy; use .cpu() first")

    def __array__(self, *args, **kwargs):
        return self.numpy()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _active().run(func, args, kwargs or {})


class DeviceCheck(TorchDispatchMode):
    """The mode that makes ``meta`` compute (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()  # what made the host wait, by op
        self.blocking: Counter[str] = Counter()  # host-to-device copies without non_blocking
        self.sites: Counter[str] = Counter()  # where they happened: the project's innermost line

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.run(func, args, kwargs or {})

    def note_sync(self, what: str) -> None:
        self.syncs[what] += 1
        self.sites[f"{what} at {_caller()}"] += 1

    def note_blocking(self, what: str) -> None:
        self.blocking[what] += 1
        self.sites[f"blocking {what} at {_caller()}"] += 1

    def reset(self) -> None:
        self.syncs.clear()
        self.blocking.clear()
        self.sites.clear()

    def run(self, func, args, kwargs):
        flat, _ = tree_flatten((args, kwargs))
        onto = _target(kwargs)
        on = _devices(func, flat)
        if onto is not None and onto.type == "meta":
            _check_generators(func, flat)
        stand_in = "meta" in on
        self._count(func, flat, kwargs, stand_in, onto)
        a, k = tree_map(_unwrap, args), tree_map(_unwrap, kwargs)
        if onto is not None and onto.type == "meta":
            k = {**k, "device": torch.device("cpu")}
        out = func(*a, **k)
        if func in COPIES and onto is not None and onto.type != "meta":
            return out  # leaving the stand-in device
        mutated = _mutated(func, args, kwargs)
        if mutated is not None:
            return mutated  # in place (or out=): the argument itself, on its device
        if stand_in or (onto is not None and onto.type == "meta"):
            return tree_map(_wrap, out)
        return out

    def _count(self, func, flat, kwargs, stand_in: bool, onto) -> None:
        name = str(func).removeprefix("aten.")
        if stand_in and (func in READS or func in SIZED_BY_VALUES):
            self.note_sync(name)
        elif stand_in and func is aten.repeat_interleave.Tensor and "output_size" not in kwargs:
            self.note_sync(name)
        elif stand_in and func in (
            aten.index.Tensor,
            aten.index_put_.default,
            aten.index_put.default,
        ):
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in flat[1:]):
                self.note_sync(name + " (boolean mask)")
        if func is aten._to_copy.default and stand_in and onto is not None and onto.type == "cpu":
            self.note_sync("copy to the CPU")
        if func is aten.copy_.default and len(flat) > 1:
            dst, src = flat[0], flat[1]
            if isinstance(src, StandInTensor) and not isinstance(dst, StandInTensor):
                self.note_sync("copy to the CPU")
            elif isinstance(dst, StandInTensor) and _on_cpu(src) and not kwargs.get("non_blocking"):
                self.note_blocking(name)
        if func is aten._to_copy.default and onto is not None and onto.type == "meta":
            if any(_on_cpu(t) for t in flat) and not kwargs.get("non_blocking"):
                self.note_blocking("to")


class _FromData(TorchFunctionMode):
    """``torch.tensor(data, device="meta")`` and its kin make their tensor without the
    dispatcher: made on the CPU here, then moved (a host-to-device copy, as on a GPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FROM_DATA and _target(kwargs) is not None and _target(kwargs).type == "meta":
            made = func(*args, **{**kwargs, "device": torch.device("cpu")})
            return made.to(STAND_IN)
        return func(*args, **kwargs)


FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}


class _Autocast(torch.autocast):
    """``torch.autocast("meta")`` is the CPU's: the stand-in's values are on the CPU."""

    def __init__(self, device_type: str, *args, **kwargs):
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


_MODES: list[DeviceCheck] = []


def _active() -> DeviceCheck:
    if not _MODES:
        raise RuntimeError("a stand-in tensor was used outside `with stand_in()`")
    return _MODES[-1]


def active() -> bool:
    """Whether the stand-in device is on (``resolve_device`` then accepts ``meta``)."""
    return bool(_MODES)


@contextlib.contextmanager
def stand_in() -> Iterator[DeviceCheck]:
    """The stand-in device for the block: ``meta`` computes, device mixing raises."""
    check = DeviceCheck()
    _MODES.append(check)
    autocast, torch.autocast = torch.autocast, _Autocast
    try:
        with _FromData(), check:
            yield check
    finally:
        torch.autocast = autocast
        _MODES.pop()


def _mutated(func, args, kwargs):
    """The tensor an in-place op (``add_``, ``copy_``) or an ``out=`` call writes and returns."""
    if "out" in kwargs and isinstance(kwargs["out"], torch.Tensor):
        return kwargs["out"]
    schema = func._schema
    first = schema.arguments[0] if schema.arguments else None
    writes = first is not None and first.alias_info is not None and first.alias_info.is_write
    returned = len(schema.returns) == 1 and schema.returns[0].alias_info is not None
    return args[0] if writes and returned and isinstance(args[0], torch.Tensor) else None


def _caller() -> str:
    """The innermost frame of the project's own code (not torch's, not this module's)."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename
        if (
            "site-packages" not in path
            and not path.endswith("stand_in.py")
            and "/torch/" not in path
        ):
            return f"{Path(path).name}:{frame.lineno}"
    return "?"


def _unwrap(x):
    return x.inner if isinstance(x, StandInTensor) else x


def _wrap(x):
    if isinstance(x, torch.Tensor) and not isinstance(x, StandInTensor):
        return StandInTensor(x)
    return x


def _on_cpu(x) -> bool:
    return (
        isinstance(x, torch.Tensor) and not isinstance(x, StandInTensor) and x.device.type == "cpu"
    )


def _target(kwargs) -> torch.device | None:
    device = kwargs.get("device")
    return None if device is None else torch.device(device)


def _devices(func, flat) -> set[str]:
    """The devices of an op's tensor arguments; raises where CUDA would (mixed devices)."""
    found: dict[str, torch.Tensor] = {}
    for t in flat:
        if isinstance(t, StandInTensor):
            found["meta"] = t
        elif isinstance(t, torch.Tensor):
            if t.device.type == "meta":
                raise RuntimeError(f"{func}: a real meta tensor (no values) met the stand-in")
            if t.dim() > 0 or t.device.type != "cpu":  # CPU scalars mix with any device
                found[t.device.type] = t
    if len(found) > 1 and func not in COPIES:
        raise RuntimeError(
            f"{func}: expected all tensors on one device, found {' and '.join(sorted(found))} "
            f"(the stand-in for a GPU is meta): a tensor was made on the wrong device"
        )
    return set(found)


def _check_generators(func, flat) -> None:
    for g in flat:
        if isinstance(g, torch.Generator) and g.device.type == "cpu":
            raise RuntimeError(f"{func}: a CPU generator cannot draw on the device (stand-in)")
