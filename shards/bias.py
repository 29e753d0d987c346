"""Biased single positives: the protocols of Arroyo, Perona and Cole, "Understanding Label Bias in
Single Positive Multi-Label Learning" (arXiv 2305.15584), where the kept positive of an image is
not drawn uniformly but with a probability that depends on its objects or its class.

As the paper's release (``observe_bias``) defines them, per image and positive class c:
- ``size``: P(c) proportional to the summed area of c's instances (COCO's ``area``; VOC: box area);
- ``location``: P(c) proportional to the sum over c's instances of 1/d, d the distance in pixels
  from the box centre to the image centre (d = 0 counts as 0.0005);
- ``semantic``: P(c) proportional to a per-class weight (the paper's come from COCO's
  crowdsourced "name what you see first" data, which wsml does not ship: pass them with
  ``--class-weights``); an image whose positives all weigh 0 gets a uniform draw.
Draws are Python's ``random.Random(seed).choices`` over the positives, one per formatted row,
with a fresh generator per official split, as the release seeds once per split. The converters
store the per-(image, class) weights as the ``size_weight`` and ``location_weight`` columns of
the official tables, aligned with ``positives`` (a ``table`` source may give them as columns of
its own); sources without boxes have neither.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

from shards.base.errors import WsmlError
from shards.lists import Lists, ListsBuilder

BIASES = ("uniform", "size", "location", "semantic")
BOX_COLUMNS = {"size": "size_weight", "location": "location_weight"}
NEAR_CENTRE = 0.0005  # the release's distance for a box centred exactly on the image centre


def generate_biased(regime, labels) -> tuple[Lists, Lists]:
    """One positive per row drawn with the bias's weights; no negatives kept."""
    if regime.bias not in BIASES:
        raise WsmlError(f"unknown bias {regime.bias!r}; choose one of {', '.join(BIASES)}")
    if (regime.num_pos, regime.num_neg) != (1, 0):
        raise WsmlError(
            f"--bias {regime.bias} keeps one positive and no negatives, as the paper does; "
            "drop --num-pos/--num-neg"
        )
    weights = _weights(regime, labels)
    rng, pos = random.Random(regime.seed), labels.positives
    out = ListsBuilder()
    for i in range(len(pos)):
        lo, hi = int(pos.offsets[i]), int(pos.offsets[i + 1])
        if lo == hi:
            out.append(pos.values[lo:hi])
            continue
        classes, w = pos.values[lo:hi].tolist(), weights[lo:hi]
        if (w > 0).any():
            pick = rng.choices(classes, weights=w.tolist())[0]
        else:
            pick = rng.choice(classes)
        out.append(np.array([pick], dtype=np.int64))
    n = len(pos)
    return out.build(), Lists(np.zeros(n + 1, np.int64), np.zeros(0, np.int64))


def _weights(regime, labels) -> np.ndarray:
    """float64 weight of every positive entry (aligned with ``labels.positives.values``)."""
    if regime.bias == "semantic":
        if len(regime.class_weights) != labels.num_classes:
            raise WsmlError(
                "--bias semantic needs one weight per class: pass --class-weights FILE, a JSON "
                "object of class name -> weight (the paper's come from COCO's crowdsourced "
                f"annotations, which wsml does not ship); got {len(regime.class_weights)} "
                f"weights for {labels.num_classes} classes"
            )
        return np.asarray(regime.class_weights, dtype=np.float64)[labels.positives.values]
    column = BOX_COLUMNS[regime.bias]
    if column not in labels.columns:
        raise WsmlError(
            f"--bias {regime.bias} needs per-object boxes, and this shard set's official tables "
            f"have no {column} column: only sources with boxes (coco, coco2014, voc*, a table "
            f"with a {column} column: docs/own-data.md) give one; re-shard such a source with "
            "this wsml version, or use --bias semantic/uniform"
        )
    return labels.columns[column]


def read_class_weights(path: str | Path, classes: list[str]) -> tuple[float, ...]:
    """Class weights for ``--bias semantic`` from a JSON object name -> weight (every class)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise WsmlError(f"cannot read class weights from {path}: {e}") from None
    if not isinstance(data, dict):
        raise WsmlError(f"{path}: expected a JSON object of class name -> weight")
    missing = [c for c in classes if c not in data]
    if missing:
        raise WsmlError(f"{path} gives no weight for {len(missing)} class(es): {missing[:10]}")
    weights = []
    for c in classes:
        w = data[c]
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf:
            raise WsmlError(f"{path}: the weight of {c!r} must be a finite number >= 0, got {w!r}")
        weights.append(float(w))
    return tuple(weights)


def object_weights(boxes, width: int, height: int) -> tuple[float, float]:
    """(size, location) weight of one class in one image from its instances, each given as
    ``(area, (x, y, w, h))``: area fraction of the image, and the sum of 1/d (pixels)."""
    size = sum(a for a, _ in boxes) / float(width * height)
    location = 0.0
    for inv in inverse_distances(
        [b for _, b in boxes], [width] * len(boxes), [height] * len(boxes)
    ):
        location += inv
    return size, location


def inverse_distances(boxes, widths, heights) -> list[float]:
    """1/d of every box ``(x, y, w, h)`` in an image of ``widths[k] x heights[k]``, d the
    distance in pixels from the box centre to the image centre (d = 0 counts as
    ``NEAR_CENTRE``). One array expression for all boxes; each value is the scalar formula's
    to the bit (the same float64 operations in the same order)."""
    if not len(boxes):
        return []
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = np.asarray(widths, dtype=np.float64), np.asarray(heights, dtype=np.float64)
    d = np.hypot(b[:, 0] + b[:, 2] / 2 - w / 2, b[:, 1] + b[:, 3] / 2 - h / 2)
    return (1.0 / np.where(d > 0, d, NEAR_CENTRE)).tolist()
