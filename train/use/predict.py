"""``cli.py predict``: a run's network on image files, folders or a shard set's split, streamed
with the run's evaluation preprocessing; a table of every class's probability and the labels
predicted at a threshold (global, per class from validation, or the top K), written at once
(Parquet, or CSV) when every image is done, with where it came from: Parquet metadata, or a
``<out>.json`` sidecar beside a CSV (:func:`provenance`)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.folder import list_images, shown_name
from shards.base.errors import WsmlError
from shards.convert.source import LABEL_SEPARATOR
from train.use.inference import NetworkOptions, RunNetwork, load_network
from train.use.thresholds import MIN_POSITIVES, VAL_F1, get_thresholds, store

FORMATS = (".parquet", ".csv")
SHOWN_ROWS = 5
METADATA_KEY = b"wsml"  # the Parquet schema metadata entry holding the provenance (JSON)


@dataclass(frozen=True)
class PredictOptions:
    threshold: str | None = None  # a number, "val-f1", or None: the run's own
    top_k: int = 0  # > 0: the K most probable classes instead of a threshold
    batch_size: int = 32
    device: str = "cpu"
    on_bad: str = "fail"
    weights: str | None = None  # the feature cache's weights file, when it was made with one
    loader: str | None = None  # shard sets: None: the run's loader backend
    min_positives: int = MIN_POSITIVES  # val-f1: fewer val positives keep the global threshold
    shards: str | None = None  # the run's shard set (where it is now); alone: predict its split
    member: str | None = None  # a sweep's member (lr=…,batch=…), kept with --keep-members


@dataclass
class Predictions:
    """What predict wrote: the table's columns before they became a file, and figures."""

    names: list[str]  # image path (as text that can be written) or shard key per row
    probs: np.ndarray  # (N, L) float32
    labels: list[list[str]]
    extra: dict[str, list] = field(default_factory=dict)  # row, clean_labels (shard sets)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    seconds: float = 0.0
    out: Path | None = None
    notes: list[str] = field(default_factory=list)  # said after the table (thresholds)


def check_out(out: str | os.PathLike) -> Path:
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise WsmlError(f"--out {shown_name(out)}: expected a .parquet or .csv file name")
    if not path.parent.is_dir():
        raise WsmlError(f"--out {shown_name(out)}: folder {shown_name(path.parent)} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise WsmlError(f"--out {shown_name(out)}: folder {shown_name(path.parent)} is read-only")
    return path


def parse_threshold(text: str | None) -> float | str | None:
    if text is None or text == VAL_F1:
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise WsmlError(f"--threshold {text}: expected a number in (0, 1) or {VAL_F1}")
    return value


def run_predict(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: PredictOptions,
    *,
    images: Sequence[str] = (),
    split: str = "test",
    echo: Callable[[str], None] = print,
) -> Predictions:
    """Predict ``images`` (files and folders), or without them ``split`` of ``options.shards``;
    writes ``out`` (Parquet or CSV) once all are done. Bad input fails before any work."""
    path, wanted = check_out(out), parse_threshold(options.threshold)
    if not images and not options.shards:
        raise WsmlError("predict takes image files or folders, or --shards DIR (a split of it)")
    if options.top_k < 0 or options.batch_size < 1 or options.min_positives < 1:
        raise WsmlError("--top-k must be >= 0, --batch-size and --min-positives positive")
    paths = list_images(images) if images else []
    network = NetworkOptions(options.device, options.weights, options.shards, options.member)
    run = load_network(run_dir, network)
    if options.top_k > len(run.classes):
        raise WsmlError(f"--top-k {options.top_k}: the run has {len(run.classes)} classes")
    threshold, new = wanted or run.threshold, None
    if wanted == VAL_F1 and not options.top_k:
        threshold, new = get_thresholds(run, options.min_positives)
    t0 = time.perf_counter()
    if paths:
        result = _predict_files(run, paths, options)
    else:
        result = _predict_shards(run, str(options.shards), split, options)
    result.seconds = time.perf_counter() - t0
    result.labels = label_names(result.probs, run.classes, threshold, options.top_k)
    source = {"images": len(paths)} if paths else {"shards": str(options.shards), "split": split}
    record = provenance(run, threshold, options, source)
    write_predictions(path, result, run.classes, record)
    result.out = path
    if new is not None:
        store(run, new, result.notes.append)
    return result


def provenance(run: RunNetwork, threshold, options: PredictOptions, source: dict) -> dict:
    """Where the predictions come from: the run (folder, config sha256, checkpoint sha256, a
    sweep's member), the threshold kind and values, the classes, the label separator and the
    wsml version."""
    if options.top_k:
        kind, values = "top-k", options.top_k
    elif options.threshold == VAL_F1:
        kind, values = VAL_F1, dict(zip(run.classes, map(float, threshold), strict=True))
    else:
        kind = "run" if options.threshold is None else "given"
        values = float(threshold)
    return {
        "format": "wsml-predictions",
        "version": 1,
        **run.provenance,
        "method": run.config.method,
        "setting": run.config.setting,
        "features": run.config.features,
        "threshold": {"kind": kind, "values": values},
        "classes": run.classes,
        "label_separator": LABEL_SEPARATOR,
        "preprocessing": run.preset.name,
        "source": source,
    }


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not sys.stderr.isatty(), leave=False)


def _forward(run: RunNetwork, batches: Iterator[dict], total: int) -> Iterator[tuple[dict, Any]]:
    bar = _progress(total)
    with torch.inference_mode():
        for batch in batches:
            x = batch["image"].contiguous(memory_format=torch.channels_last)
            probs = torch.sigmoid(run.net(x).float()).cpu()
            bar.update(len(probs))
            yield batch, probs
    bar.close()


def _predict_files(run: RunNetwork, paths: list[Path], options: PredictOptions):
    from pipelines.folder import FolderBatches
    from pipelines.loader import default_threads

    reader = FolderBatches(
        paths, run.preset, options.batch_size, torch.device(options.device), options.on_bad,
        workers=default_threads(1),
    )  # fmt: skip
    names, probs = [], []
    for batch, p in _forward(run, iter(reader), len(paths)):
        names.extend(shown_name(p) for p in batch["path"])
        probs.append(p)
    skipped = [(shown_name(p), why) for p, why in reader.skipped]
    if not names:
        raise WsmlError(
            f"none of the {len(paths)} images could be read: "
            + "; ".join(f"{p} ({why})" for p, why in skipped[:5])
        )
    return Predictions(names, torch.cat(probs).numpy(), [], skipped=skipped)


def _predict_shards(run: RunNetwork, shards: str, split: str, options: PredictOptions):
    from pipelines.loader import LoaderOptions, create_loader
    from shards.shardset import open_shard_set

    ss = open_shard_set(shards)
    if list(ss.classes) != run.classes:
        raise WsmlError(f"{shards} has other classes than the run ({len(run.classes)} classes)")
    n = int(ss.split(split)["num_samples"])
    reading = LoaderOptions(device=options.device, backend=options.loader or run.config.loader)
    loader = create_loader(
        ss, split, regime="full", batch_size=options.batch_size, preset=run.preset, train=False,
        options=reading,
    )  # fmt: skip
    probs = np.zeros((n, len(run.classes)), dtype=np.float32)
    for batch, p in _forward(run, iter(loader), n):
        keep = batch["valid"].cpu()
        probs[batch["row"].cpu()[keep].numpy()] = p[keep].numpy()
    table = ss.label_table(split)
    keys = table.column("key").to_pylist()
    pos = ss.full_lists(split).positives  # ragged: no (N, L) label matrix
    clean = [
        [run.classes[c] for c in sorted(pos.values[pos.offsets[i] : pos.offsets[i + 1]].tolist())]
        for i in range(n)
    ]
    extra = {"row": list(range(n)), "clean_labels": clean}
    return Predictions(keys, probs, [], extra=extra)


def label_names(
    probs: np.ndarray, classes: list[str], threshold: float | np.ndarray, top_k: int
) -> list[list[str]]:
    """Each row's predicted classes, most probable first: the top ``top_k``, or those at or
    above ``threshold`` (a number or one per class)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    if top_k:
        return [[classes[c] for c in row[:top_k]] for row in order]
    above = probs >= np.asarray(threshold, dtype=np.float32)
    return [[classes[c] for c in row if above[i, c]] for i, row in enumerate(order)]


def write_predictions(path: Path, result: Predictions, classes: list[str], record: dict) -> None:
    """The table, written to a temporary name and renamed: never a half-written file. Parquet
    carries ``record`` in its metadata; a CSV gets it as ``<out>.json``, written first."""
    import pyarrow as pa

    from shards.base.fileio import tmp_path_for, write_bytes_atomic

    name = "key" if "row" in result.extra else "path"
    columns: dict[str, Any] = {name: result.names}
    if "row" in result.extra:
        columns["row"] = pa.array(result.extra["row"], pa.int64())
    for c, cls in enumerate(classes):
        columns[f"p_{cls}"] = pa.array(result.probs[:, c], pa.float32())
    columns["labels"] = result.labels
    if "clean_labels" in result.extra:
        columns["clean_labels"] = result.extra["clean_labels"]
    table = pa.table(columns)
    text = json.dumps(record, indent=1) + "\n"
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as f:  # a Python file: any name the OS takes
            if path.suffix.lower() == ".csv":
                _write_csv(table, f)
            else:
                import pyarrow.parquet as pq

                pq.write_table(table.replace_schema_metadata({METADATA_KEY: text}), f)
        if path.suffix.lower() == ".csv":
            write_bytes_atomic(Path(f"{path}.json"), text.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_csv(table, f) -> None:
    """Label lists joined by the one label separator (``shards.convert.source.LABEL_SEPARATOR``)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    for n in ("labels", "clean_labels"):
        if n in table.column_names:
            joined = [LABEL_SEPARATOR.join(v) for v in table.column(n).to_pylist()]
            table = table.set_column(table.schema.get_field_index(n), n, pa.array(joined))
    pcsv.write_csv(table, f)


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance a predictions file carries (Parquet metadata, or the CSV's sidecar)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return json.loads(Path(f"{path}.json").read_text())
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[METADATA_KEY])


def predict_lines(result: Predictions) -> list[str]:
    """A short table of the first rows (labels joined as in the CSV), then the figures."""
    n = len(result.names)
    width = min(40, max(len(Path(x).name) for x in result.names[:SHOWN_ROWS]))
    lines = []
    for i in range(min(n, SHOWN_ROWS)):
        shown = LABEL_SEPARATOR.join(result.labels[i]) or "-"
        lines.append(f"{Path(result.names[i]).name[-width:]:<{width}}  {shown}")
    if n > SHOWN_ROWS:
        lines.append(f"... {n - SHOWN_ROWS} more")
    rate = n / result.seconds if result.seconds else 0.0
    out = shown_name(result.out) if result.out is not None else "-"
    lines.append(f"{n} images in {result.seconds:.1f}s ({rate:.1f} images/s) -> {out}")
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} that could not be read:")
        lines.extend(f"  {p} ({why})" for p, why in result.skipped)
    return lines + result.notes
