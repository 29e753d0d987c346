"""``cli.py export``: the network ``predict`` uses (encoder + head for linear runs), traced to
TorchScript or ONNX, taking a normalised float NCHW batch and giving (N, L) logits; a JSON
sidecar (``<out>.json``) records the class names, preprocessing and thresholds.

Tracing runs every module once on an example batch, so what is constant at inference (HSPNet's
class features from its frozen text tower and prompt generator) is computed once and folded in
as a constant: the exported graph holds the image tower and one matrix product.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.errors import WsmlError
from shards.fileio import tmp_path_for, write_bytes_atomic
from train.inference import RunNetwork, describe_preprocessing, load_network
from train.thresholds import THRESHOLDS

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 17


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise WsmlError(
            "--format onnx needs the onnx package: pip install 'wsml[onnx]' "
            "(onnx, onnxruntime); --format torchscript needs nothing more"
        ) from e


def export_run(
    run_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    weights: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export the run's network to ``out`` (default ``<run>/model.pt|.onnx``) and its sidecar
    ``<out>.json``; ``num_classes``: fail unless the run has that many."""
    if fmt not in FORMATS:
        raise WsmlError(f"unknown format {fmt!r}: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    run = load_network(run_dir, "cpu", weights)
    if num_classes is not None and num_classes != len(run.classes):
        raise WsmlError(
            f"{run_dir} was trained on {len(run.classes)} classes, not the {num_classes} expected"
        )
    path = Path(out) if out is not None else run.folder.path / f"model{FORMATS[fmt]}"
    if path.suffix != FORMATS[fmt]:
        raise WsmlError(f"--out {path}: a {fmt} file ends in {FORMATS[fmt]}")
    if not path.parent.is_dir():
        raise WsmlError(f"--out {path}: folder {path.parent} does not exist")
    example = torch.zeros(2, 3, run.preset.size, run.preset.size)
    tmp = tmp_path_for(path)
    try:
        with warnings.catch_warnings():  # the tracers' notes on shape checks made constant
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            if fmt == "torchscript":
                with torch.no_grad():
                    torch.jit.trace(run.net, example, check_trace=False).save(str(tmp))
            else:
                _export_onnx(run, example, tmp)
        sidecar = sidecar_of(run, fmt, path)
        write_bytes_atomic(Path(f"{path}.json"), (json.dumps(sidecar, indent=1) + "\n").encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, sidecar


def _export_onnx(run: RunNetwork, example: torch.Tensor, tmp: Path) -> None:
    # attention's inference fast path (CLIP towers) is one fused op ONNX has no symbol for
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            _onnx_call(run.net, example, tmp)
    except torch.onnx.errors.OnnxExporterError as e:
        raise WsmlError(f"cannot export {run.folder.path} to ONNX: {e}") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _onnx_call(net, example: torch.Tensor, tmp: Path) -> None:
    torch.onnx.export(
        net,
        (example,),
        str(tmp),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )


def sidecar_of(run: RunNetwork, fmt: str, path: Path) -> dict[str, Any]:
    stored = run.folder.path / THRESHOLDS
    thresholds: dict[str, Any] = {"global": run.threshold}
    if stored.is_file():
        thresholds["per_class"] = json.loads(stored.read_text())["thresholds"]
    return {
        "format": "wsml-export",
        "version": 1,
        "model": path.name,
        "model_format": fmt,
        "input": "float32 NCHW, normalised as below",
        "output": "logits (N, classes); probabilities = sigmoid(logits)",
        "classes": run.classes,
        "preprocessing": describe_preprocessing(run.preset),
        "thresholds": thresholds,
        "run": {
            "folder": str(run.folder.path),
            "method": run.config.method,
            "setting": run.config.setting,
            "features": run.config.features,
        },
    }


def run_exported(path: str | os.PathLike, images: torch.Tensor) -> np.ndarray:
    """Probabilities of an exported model on a normalised batch (round-trip checks)."""
    path = Path(path)
    x = images.float().contiguous()
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        model = torch.jit.load(str(path)).eval()
        with torch.no_grad():
            logits = model(x)
    return torch.sigmoid(logits.float()).numpy()
