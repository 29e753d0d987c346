"""Checkpoint files (a run's ``checkpoint-last.pt`` and ``checkpoint-best.pt``): written by
``torch.save`` holding only tensors and plain data (dicts, lists, tuples, str, bytes, numbers,
None), read with ``weights_only=True``. A run folder is what people share; opening one (resume,
eval, predict, export, report) never runs code that came with it: a file that needs anything
else to load is refused, naming what, before any of it runs."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals
from torch.torch_version import TorchVersion

from shards.base.errors import WsmlError

_reconstruct = np.array(0).__reduce__()[0]  # numpy's array rebuilder, whatever its module
# What checkpoints written before these rules held beside plain data: numpy's RNG key (a
# uint32 array: the rebuilder, the array, its dtype and dtype class) and torch's version (a
# str subclass). Rebuilding them runs no code of the file's; numpy 1.x pickles the rebuilder
# as numpy.core's, 2.x as numpy._core's.
OLDER_CHECKPOINTS = [
    (_reconstruct, "numpy._core.multiarray._reconstruct"),
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    TorchVersion,
]


def dumps_checkpoint(state: dict[str, Any]) -> memoryview:
    """``state`` as ``torch.save`` writes it. A state holding anything ``read_checkpoint`` would
    refuse (a numpy array, a class of ours) is a bug: it raises here, before a run writes a
    checkpoint it could not resume from."""
    buffer = io.BytesIO()  # torch's own writer turns a full disk into a RuntimeError
    torch.save(state, buffer)
    buffer.seek(0)
    unsafe = get_unsafe_globals_in_checkpoint(buffer)
    if unsafe:
        raise TypeError(
            f"a checkpoint holds tensors and plain data only, not {', '.join(sorted(unsafe))}"
        )
    return buffer.getbuffer()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` on the CPU, whatever device saved it (RNG states must be CPU
    byte tensors; the saving machine may have had devices this one lacks), loaded with
    ``weights_only=True`` (older wsml checkpoints' numpy RNG key and torch version allowed)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):  # torch.save's archive; a truncated one lacks its end
        raise WsmlError(_damaged(path, "not the zip archive torch.save writes"))
    try:
        with safe_globals(OLDER_CHECKPOINTS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WsmlError(_refusal(path, e)) from None
    except (OSError, MemoryError):  # this machine's, not the file's
        raise
    except Exception as e:  # whatever else the reader trips over is in the file's bytes
        raise WsmlError(_damaged(path, f"{type(e).__name__}: {_first_line(e)}")) from None
    if not isinstance(ckpt, dict):
        raise WsmlError(f"{path} is not a wsml checkpoint (it holds a {type(ckpt).__name__})")
    return ckpt


def _damaged(path: Path, why: str) -> str:
    return (
        f"{path} is not a readable checkpoint ({why}): it is damaged or not one of wsml's; "
        "train the run again or use an intact copy of its run folder"
    )


def _refusal(path: Path, error: Exception) -> str:
    """Why ``path`` was refused: the globals it names that loading would call (or torch's
    reason), and what to do; never torch's advice to load it with ``weights_only=False``."""
    try:
        with safe_globals(OLDER_CHECKPOINTS):
            names = sorted(get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a damaged pickle the scan trips over: torch's reason says it
        names = []
    if names:
        why = f"it holds {', '.join(names)}, which loading would call (code, not data)"
    else:
        why = _weights_only_reason(error)
    return (
        f"{path} is refused: {why}; wsml's checkpoints hold only tensors and plain data, so it "
        "was made or altered elsewhere. Nothing of it ran: train the run again, or use a copy "
        "of the run folder from a source you trust"
    )


def _weights_only_reason(error: Exception) -> str:
    """torch's reason, without its advice around it (to retry with ``weights_only=False``)."""
    text = str(error)
    if "WeightsUnpickler error:" not in text:
        return _first_line(error)
    reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    return " ".join(reason.split()) or _first_line(error)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
