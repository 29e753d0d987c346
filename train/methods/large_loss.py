"""Kim et al., CVPR 2022, "Large Loss Matters in Weakly Supervised Multi-Label Classification"
(METHODS.md §4): LL-R, LL-Ct and LL-Cp.

On logits: B = BCE(z, observed positive), C = BCE(z, 1). In epoch t (1-based) the k largest
losses among a batch's *unknown* entries are rejected (LL-R: loss 0) or corrected (LL-Ct,
LL-Cp: loss C), with k = ceil(N L (t - 1) Delta_rel) for LL-R / LL-Ct and k = ceil(N L Delta_rel)
from epoch 2 on for LL-Cp; the loss is the mean over all N x L entries. LL-Cp's corrections are
permanent: those entries are observed positives in every later step (state: sorted flat indices
row * L + class, all-gathered across ranks). Delta_rel is in percent per epoch, as on LL's CLI.

This is the paper. The released LL code tests ``mod_scheme is 'LL-Cp'`` (identity), so it runs
LL-Cp as LL-Ct with LL-Cp's Delta_rel and never corrects permanently (§12.5): reproduce those
numbers with ``ll-ct -o delta_rel=<LL-Cp's value>``. ``released=True`` reproduces the rest of the
released selection (LL and BoostLU's copy): every entry with U >= lambda (the k-th largest of U
over the batch, observed entries counting U = 0) is modified, so ties are all taken and, when k
exceeds the unknowns with non-zero loss, observed entries too; BoostLU's permanent LL-Cp update
takes U >= lambda; clean_rate is accumulated in floating point (§12.6). The paper mode takes
exactly min(k, unknowns) entries and computes k exactly from the decimal Delta_rel.

BoostLU (Kim et al., CVPR 2023, §5) is a CAM head on the model side (alpha * CAM where CAM > 0
before the spatial mean, in training and evaluation), combined with these losses; it is not a
method here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.distributed import gather_batch, training_world
from shards.base.options import Range
from train.methods import Method, MethodConfig, MethodInfo, register_method

LL = "Kim et al., CVPR 2022, Large Loss Matters in Weakly Supervised Multi-Label Classification"
SOURCE = (
    "LL config.py/train.py (METHODS.md §4.2-4.3): Adam lr 1e-5, head lr x10, batch 16, "
    "10 epochs, early stop when val mAP drops > 3 points below the best; Delta_rel (percent) "
    "from BoostLU config.py:L22-26 (LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1; LL README: 0.1-0.5)"
)


@dataclass(frozen=True)
class LargeLossConfig(MethodConfig):
    batch_size: int = 16
    head_lr_mult: float = 10.0
    stop_drop: float = 3.0
    delta_rel: float = 0.2  # percent of a batch's entries per epoch
    released: bool = False  # the released code's selection and schedule (see module docstring)

    RANGES: ClassVar = {"delta_rel": Range(0, 100)}  # a percentage


@functools.lru_cache(maxsize=256)  # called every step with the same few arguments
def modified_count(
    scheme: str, epoch: int, entries: int, delta_rel: float, released: bool = False
) -> int:
    """k for a batch of ``entries`` = N * L in epoch ``epoch`` (1-based); ``scheme`` is
    ``reject``, ``temporary`` or ``permanent``."""
    if epoch <= 1:
        return 0
    if released:
        step = delta_rel / 100  # LL config.py divides the CLI value by 100
        if scheme == "permanent":
            return min(entries, math.ceil(entries * step))
        clean_rate = 1.0
        for _ in range(epoch - 1):  # train.py: clean_rate -= delta_rel after every epoch
            clean_rate -= step
        return min(entries, math.ceil(entries * (1 - clean_rate)))
    step = Fraction(repr(delta_rel)) / 100
    rate = step if scheme == "permanent" else step * (epoch - 1)
    return min(entries, math.ceil(entries * rate))


class LargeLoss(Method):
    scheme: ClassVar[str] = "reject"
    label_changes = {"rejected": 1}  # the large-loss assumption: a rejected entry is positive

    def __init__(self, info, config, num_rows, num_classes, **kw):
        super().__init__(info, config, num_rows, num_classes)
        if self.scheme == "permanent":
            self.register_buffer("corrected", torch.zeros(0, dtype=torch.int64))

    def compute(self, logits, batch, *, epoch, step):
        cfg = self.config
        y = batch["observed"].to(logits.device)
        held = None
        if self.scheme == "permanent":
            held = self.corrected_mask(batch["row"]) & (y == 0)
            y = torch.where(held, torch.ones_like(y), y)
        pos, unk = y == 1, y == 0
        base = F.binary_cross_entropy_with_logits(logits, pos.float(), reduction="none")
        world = training_world()  # the top-k is over the global batch (all ranks)
        entries = base.numel() // self.members * world  # one member's batch
        k = modified_count(self.scheme, epoch, entries, cfg.delta_rel, cfg.released)
        if k == 0:
            if held is not None:
                self.note_labels("corrected", held)
            return {"loss": self.reduce(base), "modified": self.reduce(base.new_zeros(base.shape))}
        every, mine = gather_batch(base.detach() * unk, self.members)
        every_unk, _ = gather_batch(unk.to(torch.uint8), self.members)
        chosen = self.select(every, every_unk.bool(), k)
        chosen = chosen.view(self.members, -1, base.shape[1])[:, mine].reshape(base.shape)
        changed = chosen & unk if held is None else held | (chosen & unk)
        self.note_labels(next(iter(self.label_changes)), changed)
        if self.scheme == "reject":
            other = torch.zeros_like(base)
        else:
            other = F.binary_cross_entropy_with_logits(logits, (~pos).float(), reduction="none")
        loss = self.reduce(torch.where(chosen, other, base))
        out = {"loss": loss, "modified": self.reduce(chosen.float(), "sum")}
        if self.scheme == "permanent":  # the entries corrected, row x L + class
            n, c = (chosen & ~pos).nonzero(as_tuple=True)
            return out, batch["row"].to(n.device)[n] * self.num_classes + c
        return out

    def select(self, unknown_loss: Tensor, unk: Tensor, k: int) -> Tensor:
        """Boolean (N, L) of the entries to reject or correct: each member's k largest."""
        flat = unknown_loss.reshape(self.members, -1)
        if self.config.released:
            lam = flat.topk(k, dim=1).values[:, -1:]
            return (flat >= lam).view_as(unknown_loss)
        unk = unk.reshape(self.members, -1)
        masked = torch.where(unk, flat, torch.full_like(flat, -math.inf))
        top = masked.topk(min(k, flat.shape[1]), dim=1).indices
        keep = unk.sum(1, keepdim=True).clamp(max=k)  # k, or every unknown entry if fewer
        rank = torch.arange(top.shape[1], device=top.device).expand_as(top)
        chosen = torch.zeros_like(unk)
        chosen.scatter_(1, top, rank < keep)
        return chosen.view_as(unknown_loss)

    # LL-Cp's permanent corrections
    def corrected_mask(self, rows: Tensor) -> Tensor:
        """(N, L) True where an entry of these rows has been corrected to positive."""
        flat = self.corrected
        rows = rows.to(flat.device)
        wanted = rows.unsqueeze(1) * self.num_classes + torch.arange(
            self.num_classes, device=flat.device
        )
        if flat.numel() == 0:
            return torch.zeros_like(wanted, dtype=torch.bool)
        at = torch.searchsorted(flat, wanted).clamp(max=flat.numel() - 1)
        return flat[at] == wanted

    def corrected_entries(self) -> tuple[Tensor, Tensor]:
        """(rows, classes) of every permanent correction."""
        return self.corrected // self.num_classes, self.corrected % self.num_classes

    def commit(self, update, batch, *, epoch):
        (new,) = self.gather(update.to(self.corrected.device))
        self.corrected = torch.unique(torch.cat([self.corrected, new]))  # sorted

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "corrected"
        if self.scheme == "permanent" and key in state_dict:  # the set grows: take its size
            self.corrected = torch.empty_like(state_dict[key], device=self.corrected.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LargeLossCorrectTemporary(LargeLoss):
    scheme = "temporary"
    label_changes = {"corrected": 1}


class LargeLossCorrectPermanent(LargeLoss):
    scheme = "permanent"
    uses_rows = True
    label_changes = {"corrected": 1}  # every correction held so far (permanent) and new ones


for _name, _factory, _delta, _summary, _flags in (
    ("ll-r", LargeLoss, 0.5, "reject the largest unknown losses", {}),
    ("ll-ct", LargeLossCorrectTemporary, 0.2, "correct them to positive for the step", {}),
    (
        "ll-cp",
        LargeLossCorrectPermanent,
        0.1,
        "correct them to positive for good",
        {"per_sample_state": True},
    ),
):
    register_method(
        MethodInfo(
            name=_name,
            paper=LL,
            summary=f"{_summary} (schedule Delta_rel per epoch)",
            regimes=("single-positive", "partial"),
            config=LargeLossConfig,
            method_class=_factory,
            defaults={"default": {"delta_rel": _delta}},
            defaults_source=SOURCE,
            **_flags,
        )
    )
