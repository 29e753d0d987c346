"""``cli.py export``: the network ``predict`` uses (encoder + head for linear runs), traced to
TorchScript or ONNX, taking a normalised float NCHW batch and giving (N, L) logits; a JSON
sidecar (``<out>.json``) records the class names, the whole preprocessing (reader, resize rule
with its rounding, crop, scale, mean, std), per-class thresholds and where it came from; and
``preprocess.py`` beside it does that preprocessing with Pillow and numpy alone, to the pixel.

Tracing runs every module once on an example batch, so what is constant at inference (HSPNet's
class features from its frozen text tower and prompt generator) is computed once and folded in
as a constant: the exported graph holds the image tower and one matrix product.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.base.errors import WsmlError
from shards.base.fileio import tmp_path_for, write_bytes_atomic
from shards.convert.source import LABEL_SEPARATOR
from train.use.inference import NetworkOptions, RunNetwork, describe_preprocessing, load_network
from train.use.thresholds import MIN_POSITIVES, THRESHOLDS, VAL_F1, get_thresholds, store

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
PREPROCESS = "preprocess.py"  # written beside the model
ONNX_OPSET = 17


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise WsmlError(
            "--format onnx needs the onnx package: pip install 'wsml[onnx]' "
            "(onnx, onnxruntime); --format torchscript needs nothing more"
        ) from e


@dataclass(frozen=True)
class ExportOptions:
    num_classes: int | None = None  # fail unless the run has that many classes
    weights: str | None = None  # the feature cache's weights file, when it was made with one
    shards: str | None = None  # the run's shard set, where it is now
    member: str | None = None  # a sweep's member (lr=…,batch=…), kept with --keep-members
    min_positives: int = MIN_POSITIVES  # thresholds computed at export


def export_run(
    run_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    options: ExportOptions = ExportOptions(),
    *,
    echo: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Export the run's network to ``out`` (default ``<run>/model.pt|.onnx``), its sidecar
    ``<out>.json`` and ``preprocess.py`` beside it; per-class thresholds are computed (and
    stored in the run folder) when the run has none yet."""
    if fmt not in FORMATS:
        raise WsmlError(f"unknown format {fmt!r}: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    network = NetworkOptions("cpu", options.weights, options.shards, options.member)
    run = load_network(run_dir, network)
    if options.num_classes is not None and options.num_classes != len(run.classes):
        raise WsmlError(
            f"{run_dir} was trained on {len(run.classes)} classes, not the "
            f"{options.num_classes} expected"
        )
    path = Path(out) if out is not None else run.folder.path / f"model{FORMATS[fmt]}"
    if path.suffix != FORMATS[fmt]:
        raise WsmlError(f"--out {path}: a {fmt} file ends in {FORMATS[fmt]}")
    if not path.parent.is_dir():
        raise WsmlError(f"--out {path}: folder {path.parent} does not exist")
    thresholds, new = thresholds_of(run, options.min_positives, echo)
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
        sidecar = sidecar_of(run, fmt, path, thresholds)
        write_bytes_atomic(Path(f"{path}.json"), (json.dumps(sidecar, indent=1) + "\n").encode())
        write_bytes_atomic(path.parent / PREPROCESS, app_preprocess(sidecar).encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if new is not None:
        store(run, new, echo)
    return path, sidecar


def thresholds_of(run: RunNetwork, min_positives: int, echo) -> tuple[dict[str, Any], dict | None]:
    """The sidecar's thresholds (the global one, and per class from validation, computed now
    when the run has none yet) and the new record to store, if any. Where they cannot be had
    (no validation predictions: a run scored by annotations; the shard set moved), the sidecar
    says why."""
    out: dict[str, Any] = {"global": run.threshold, "label_separator": LABEL_SEPARATOR}
    try:
        values, new = get_thresholds(run, min_positives)
    except WsmlError as e:
        echo(f"no per-class thresholds in the sidecar: {e}")
        return {**out, "per_class": None, "why": str(e)}, None
    record = new or json.loads((run.folder.path / THRESHOLDS).read_text())
    out.update(
        rule=VAL_F1,
        min_positives=min_positives,
        per_class=dict(zip(run.classes, map(float, values), strict=True)),
        classes=record["classes"],
    )
    return out, new


def app_preprocess(sidecar: dict[str, Any]) -> str:
    """``preprocess.py``: train/use/app_preprocess.py with the sidecar's preprocessing and the
    image reader's source (``shards.convert.images.rgb_image``) filled in; it imports nothing of wsml."""
    import inspect
    import pprint

    from shards.convert import images
    from train.use import app_preprocess as template

    reader = f"EXIF_ORIENTATION = {images.EXIF_ORIENTATION:#06x}\n\n\n" + inspect.getsource(
        images.rgb_image
    )
    spec = pprint.pformat(sidecar["preprocessing"], sort_dicts=False, width=96)
    text = inspect.getsource(template)
    text = text.replace("SPEC: dict = {}  # the sidecar's \"preprocessing\" (filled in by export)",
                        f"SPEC: dict = {spec}")  # fmt: skip
    marker = (
        "# {READER}: the reader's rgb_image(im) -> an 8-bit RGB PIL image (filled in by export)"
    )
    if marker not in text or "SPEC: dict = {}" in text:
        raise AssertionError("train/use/app_preprocess.py lost its placeholders")
    return text.replace(marker, reader.rstrip())


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


def sidecar_of(run: RunNetwork, fmt: str, path: Path, thresholds: dict) -> dict[str, Any]:
    return {
        "format": "wsml-export",
        "version": 2,
        "model": path.name,
        "model_format": fmt,
        "input": "float32 NCHW, RGB, prepared as 'preprocessing' says (preprocess.py does it)",
        "output": "logits (N, classes); probabilities = sigmoid(logits)",
        "classes": run.classes,
        "preprocessing": describe_preprocessing(run.preset),
        "preprocess": PREPROCESS,
        "thresholds": thresholds,
        "run": {
            **run.provenance,
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
