"""Offline-safe pretrained weights: local checkpoint files, their sha256, and one clear error
when weights cannot be had (never a silent fallback to random weights)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from shards.base.errors import WsmlError
from shards.base.fileio import sha256_file

NO_WEIGHTS = "none"  # the only spelling that asks for random initialisation
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".npz")
_NESTED_KEYS = ("state_dict", "model", "module")  # where training scripts nest the weights
_PREFIXES = ("module.", "_orig_mod.")  # added by DDP / DataParallel and torch.compile


class WeightsUnavailableError(WsmlError):
    """Pretrained weights could not be had; the message says how to pass a local file."""


def hub_offline() -> bool:
    """True when the Hugging Face hub is switched off (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "true", "yes")


def weights_unavailable(what: str, reason: object, hint: str) -> WeightsUnavailableError:
    """The error for weights that cannot be downloaded: the reason plus how to pass a file."""
    reason_text = " ".join(str(reason).split()).rstrip(".")
    if len(reason_text) > 300:
        reason_text = reason_text[:300].rsplit(" ", 1)[0] + " [...]"
    where = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
    fail_fast = "" if hub_offline() else " Without network, set HF_HUB_OFFLINE=1 to fail at once."
    return WeightsUnavailableError(
        f"cannot get pretrained weights for {what}{where}: {reason_text}. "
        f"Download the file on a machine with network access and pass it: {hint}; "
        f"or pass '{NO_WEIGHTS}' for random initialisation.{fail_fast}"
    )


def looks_like_path(value: str | os.PathLike) -> bool:
    """Whether a weights argument names a file rather than a tag (a separator, a weights suffix,
    or an existing file)."""
    text = os.fspath(value)
    return (
        isinstance(value, os.PathLike)
        or os.sep in text
        or "/" in text
        or text.lower().endswith(WEIGHT_SUFFIXES)
        or os.path.isfile(text)
    )


def check_weights_file(path: str | os.PathLike) -> Path:
    """The path as a ``Path`` if it is a readable file; otherwise an error naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WsmlError(f"weights file not found: {p}")
    if not p.is_file():
        raise WsmlError(f"weights path is not a file: {p}")
    return p


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a weights file (a missing one is named), for recording its provenance."""
    return sha256_file(check_weights_file(path))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: a state dict, possibly nested under ``state_dict`` /
    ``model``, possibly with a ``module.`` prefix; ``.safetensors`` files too."""
    p = check_weights_file(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any reader failure means "not a weights file"
        raise WsmlError(
            f"cannot read weights file {p}: {type(e).__name__}: {first_line(e)} "
            "(expected a PyTorch state dict saved with torch.save, or a .safetensors file)"
        ) from e
    return _unwrap(obj, p)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise WsmlError(
            f"{path} holds no state dict of tensors (found {keys}; looked under "
            f"{', '.join(_NESTED_KEYS)})"
        )
    return strip_prefixes({str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def _is_tensor_dict(obj: Mapping) -> bool:
    values = list(obj.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) >= len(values) / 2


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str] = _PREFIXES
) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``_orig_mod.``) that every key carries."""
    out = dict(state_dict)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def load_weights(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Load strictly, except unexpected keys under ``ignore_prefixes`` (e.g. a classifier the
    feature extractor drops); any other mismatch is an error naming ``source``."""
    ignore = tuple(ignore_prefixes)
    kept = {k: v for k, v in state_dict.items() if not (ignore and k.startswith(ignore))}
    expected = model.state_dict()
    missing = [k for k in expected if k not in kept]
    unexpected = [k for k in kept if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in kept.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        raise WsmlError(f"weights from {source} do not fit the model: {'; '.join(parts)}")
    model.load_state_dict(kept, strict=True)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
