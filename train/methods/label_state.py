"""Label state against the truth: how many entries a method's label changes touched in an epoch
and how many of those were right by the clean training labels (``batch["full"]``).

A diagnostic only. ``Method.forward`` takes ``full`` out of the batch before ``compute`` sees it
(unless the method's ``needs_full`` says it trains on clean labels), the method marks what it
changed with ``note_labels(kind, mask)``, and the counts are made after the loss, under
``no_grad``, in non-persistent state (checkpoints do not carry them; an epoch's counts start at
zero). ``read_label_counts`` sums them over ranks and members stay apart, as in ``reduce``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pipelines.distributed import sum_over_ranks

PREFIX = "labels/"  # key prefix of the scalars in metrics.jsonl's "train"


@dataclass
class LabelAudit:
    """One forward's audit: the batch the loss may see and the clean labels kept back."""

    batch: Mapping[str, Tensor]
    truth: Tensor | None

    @classmethod
    def begin(cls, method, batch: Mapping[str, Tensor]) -> LabelAudit:
        if method.info.needs_full or "full" not in batch:
            method._noted = None
            return cls(batch, None)
        hidden = {k: v for k, v in batch.items() if k != "full"}
        counting = bool(method.label_changes) and method.training and torch.is_grad_enabled()
        method._noted = [] if counting else None
        return cls(hidden, batch["full"] if counting else None)

    def end(self, method) -> None:
        noted, method._noted = method._noted, None
        if not noted or self.truth is None:
            return
        with torch.no_grad():
            counts = method.__dict__.setdefault("_label_counts", {})
            for kind, changed in noted:
                target = method.label_changes[kind]
                truth = self.truth.to(changed.device)
                right = changed & (truth == target)
                wrong = changed & (truth == -target)  # unknown truth (0) counts as neither
                new = torch.stack([_per_member(method, m) for m in (changed, right, wrong)], 1)
                counts[kind] = counts[kind] + new if kind in counts else new  # (M, 3)


def _per_member(method, mask: Tensor) -> Tensor:
    return method.by_member(mask).reshape(method.members, -1).sum(1)


def note_labels(method, kind: str, changed: Tensor) -> None:
    if kind not in method.label_changes:
        raise KeyError(f"method {method.name}: {kind!r} is not in its label_changes")
    noted = method.__dict__.get("_noted")
    if noted is not None:
        noted.append((kind, changed.detach().bool()))


def read_label_counts(method) -> dict[str, Any]:
    kinds = list(method.label_changes)
    if not kinds:
        return {}
    counts = method.__dict__.pop("_label_counts", {})
    m = method.members
    device = next(iter(counts.values())).device if counts else torch.device("cpu")
    table = torch.stack(
        [counts.get(k, torch.zeros(m, 3, dtype=torch.int64)).to(device) for k in kinds]
    )  # (K, M, 3): changed, right, wrong
    table = sum_over_ranks(table)
    out: dict[str, Any] = {}
    for kind, rows in zip(kinds, table.cpu().tolist(), strict=True):
        values = {
            "changed": [r[0] for r in rows],
            "right": [r[1] for r in rows],
            "precision": [100.0 * r[1] / (r[1] + r[2]) if r[1] + r[2] else math.nan for r in rows],
        }
        for name, v in values.items():
            out[f"{PREFIX}{kind}/{name}"] = v if m > 1 else v[0]
    return out
