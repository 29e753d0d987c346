"""Label state against the truth: how many entries a method's label changes touched in an epoch
and how many of those were right by the clean training labels (``batch["full"]``).

A diagnostic only. ``Method.forward`` takes ``full`` out of the batch before ``compute`` sees it
(unless the method's ``needs_full`` says it trains on clean labels), the method marks what it
changed with ``note_labels(kind, mask)`` (with ``among=``, the entries it could have changed,
its recall too: right / those of them the clean labels give that label, e.g. AEVLP's
pseudo-positives against every unknown clean positive), and the counts are made after the loss,
under ``no_grad``, in non-persistent state (checkpoints do not carry them; an epoch's counts
start at zero). ``read_label_counts`` sums them over ranks and members stay apart, as in ``reduce``.
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
            for kind, changed, among in noted:
                target = method.label_changes[kind]
                truth = self.truth.to(changed.device)
                right = changed & (truth == target)
                wrong = changed & (truth == -target)  # unknown truth (0) counts as neither
                # the entries it could have got right: recall's denominator, where noted
                found = right if among is None else among & (truth == target)
                masks = (changed, right, wrong, found)
                new = torch.stack([_per_member(method, m) for m in masks], 1)  # (M, 4)
                counts[kind] = counts[kind] + new if kind in counts else new


def _per_member(method, mask: Tensor) -> Tensor:
    return method.by_member(mask).reshape(method.members, -1).sum(1)


def note_labels(method, kind: str, changed: Tensor, among: Tensor | None = None) -> None:
    if kind not in method.label_changes:
        raise KeyError(f"method {method.name}: {kind!r} is not in its label_changes")
    noted = method.__dict__.get("_noted")
    if noted is not None:
        if among is not None:  # this kind reports its recall from now on
            method.__dict__.setdefault("_label_recall", set()).add(kind)
            among = among.detach().bool()
        noted.append((kind, changed.detach().bool(), among))


def read_label_counts(method) -> dict[str, Any]:
    kinds = list(method.label_changes)
    if not kinds:
        return {}
    counts = method.__dict__.pop("_label_counts", {})
    m = method.members
    device = next(iter(counts.values())).device if counts else torch.device("cpu")
    table = torch.stack(
        [counts.get(k, torch.zeros(m, 4, dtype=torch.int64)).to(device) for k in kinds]
    )  # (K, M, 4): changed, right, wrong, could have been right
    table = sum_over_ranks(table)
    out: dict[str, Any] = {}
    for kind, rows in zip(kinds, table.cpu().tolist(), strict=True):
        values = {
            "changed": [r[0] for r in rows],
            "right": [r[1] for r in rows],
            "precision": [100.0 * r[1] / (r[1] + r[2]) if r[1] + r[2] else math.nan for r in rows],
        }
        if kind in method.__dict__.get("_label_recall", ()):
            values["recall"] = [100.0 * r[1] / r[3] if r[3] else math.nan for r in rows]
        for name, v in values.items():
            out[f"{PREFIX}{kind}/{name}"] = v if m > 1 else v[0]
    return out
