"""The one writer of generated datasets in COCO layout (``annotations/instances_<split>.json``
beside ``<split>/`` image folders): the demo, the benchmarks and the tests build their images
and annotations, and write them here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shards.base.fileio import write_bytes_atomic


def write_coco_split(
    root: Path,
    split: str,
    files: dict[str, bytes],
    document: dict[str, Any],
) -> Path:
    """Write ``files`` (name -> JPEG bytes) into ``root/split/`` and ``document`` (``images``,
    ``annotations``, ``categories`` and anything else a COCO file holds) as
    ``root/annotations/instances_<split>.json``, compact, sorted and atomically (a killed
    writer leaves no half-written annotation file). Returns the annotation file."""
    (root / split).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / split / name).write_bytes(data)
    return write_coco_json(root / "annotations" / f"instances_{split}.json", document)


def write_coco_json(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"  # C encoder
    write_bytes_atomic(path, text.encode())
    return path
