"""Zhou et al., ECCV 2022, "Acknowledging the Unknown for Multi-label Learning with Single
Positive Labels" (METHODS.md §2): the entropy-maximisation loss EM and EM + asymmetric
pseudo-labelling (APL).

EM: observed positives -log(p + eps), unknowns -alpha * H(p) (the loss maximises their entropy),
averaged over all N x L entries. APL, after each epoch e >= warmup_epoch: for every class, among
the training images whose label is still unknown, the ``int(theta * U_c / (epochs - warmup))``
with the lowest predicted probability become soft pseudo-negatives whose target is that
probability s (U_c = unknowns of class c in the observed labels, fixed for the run); they then
get beta * [s(-log p) + (1 - s)(-log(1 - p))] instead of the EM term. Pseudo-labels are never
revised and no positive pseudo-labels are made. Observed negatives (partial regime) get
-log(1 - p + eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pipelines.labels import DeviceLabels
from shards.base.errors import WsmlError
from shards.base.options import NON_NEGATIVE, POSITIVE, UNIT
from train.methods import (
    Method,
    MethodConfig,
    MethodInfo,
    neg_log,
    observed_masks,
    register_method,
)

ZHOU = (
    "Zhou et al., ECCV 2022, Acknowledging the Unknown for Multi-label Learning with "
    "Single Positive Labels"
)
SOURCE = (
    "Zhou main.py:L322-377 (METHODS.md §2.3): per-dataset batch, lr, alpha, beta, theta, "
    "warm-up; 10 epochs, Adam, stop at the first epoch without a better val mAP (main.py:L127-134)"
)
EM_DEFAULTS = {
    "default": {"stop_patience": 1},
    "voc": {"batch_size": 8, "lr": 1e-5, "alpha": 0.2},
    "coco": {"batch_size": 16, "lr": 1e-5, "alpha": 0.1},
    "nus": {"batch_size": 16, "lr": 1e-5, "alpha": 0.1},
    "cub": {"batch_size": 8, "lr": 1e-4, "alpha": 0.01},
}
_APL = {
    "voc": {"beta": 0.02, "warmup_epoch": 5},
    "coco": {"beta": 0.9, "warmup_epoch": 5},
    "nus": {"beta": 0.2, "warmup_epoch": 4},
    "cub": {"beta": 0.4, "warmup_epoch": 3},
}
APL_DEFAULTS = {k: {**v, **_APL.get(k, {})} for k, v in EM_DEFAULTS.items()}
SP = ("single-positive", "partial")
NO_PSEUDO = -1.0  # pseudo buffer value of an entry without a pseudo-label


@dataclass(frozen=True)
class EmConfig(MethodConfig):
    """Dataclass defaults are Zhou's COCO values."""

    batch_size: int = 16
    alpha: float = 0.1  # weight of the entropy term on unknowns

    RANGES: ClassVar = {"alpha": NON_NEGATIVE}


@dataclass(frozen=True)
class EmAplConfig(EmConfig):
    beta: float = 0.9  # weight of the pseudo-negative term
    neg_proportion: float = 0.9  # theta: share of each class's unknowns pseudo-labelled in all
    warmup_epoch: int = 5  # first epoch after which pseudo-labels are made
    memory_budget_gb: float = 8.0  # the most its epoch pass and pseudo-labels may take

    RANGES: ClassVar = {
        "beta": NON_NEGATIVE,
        "neg_proportion": UNIT,
        "warmup_epoch": NON_NEGATIVE,
        "memory_budget_gb": POSITIVE,
    }


# bytes per training entry (row x class) at the epoch pass's peak: the float32 probabilities,
# the masked sort key, the sort's int64 order and the ranks, the row's pseudo targets and the
# masks; and per pseudo-negative kept (theta of the unknowns by the last round): an int64 key
# and a float32 target
PASS_BYTES, PSEUDO_BYTES = 30, 12
LOOKUP_ENTRIES = 1 << 20  # entries a pseudo-label lookup handles at once


def entropy(p: Tensor) -> Tensor:
    return p * neg_log(p) + (1 - p) * neg_log(1 - p)


class EntropyMax(Method):
    def em_entries(self, p: Tensor, batch) -> Tensor:
        pos, unk, neg = (m.float() for m in observed_masks(batch, p))
        return pos * neg_log(p) + neg * neg_log(1 - p) - self.config.alpha * unk * entropy(p)

    def compute(self, logits, batch, *, epoch, step):
        p = torch.sigmoid(logits)
        return {"loss": self.reduce(self.em_entries(p, batch))}


class EntropyMaxApl(EntropyMax):
    uses_rows = True
    label_changes = {"pseudo_negative": -1}  # every pseudo-negative held so far

    def __init__(self, info, config, num_rows, num_classes, *, observed=None, **kw):
        super().__init__(info, config, num_rows, num_classes)
        # The observed labels are an input (the loop passes them at every creation), not state.
        self.observed = observed  # ragged (LabelLists); unknown entries are the candidates
        self._observed_rows: DeviceLabels | None = None  # on the state's device, made once
        annotated = observed.class_counts()[1]
        self.unlabel_num = (len(observed) - annotated).tolist()  # U_c, fixed for the run
        # Pseudo-labels as entries (row x L + class, sorted; their targets), not (rows, L):
        # a round labels a fraction of the unknowns, so the state grows with what it changes.
        self.register_buffer("pseudo_keys", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("pseudo_values", torch.zeros(0))

    @classmethod
    def check_size(cls, num_rows, num_classes, config) -> None:
        entries = num_rows * num_classes
        need = (PASS_BYTES + PSEUDO_BYTES * config.neg_proportion) * entries / 1e9
        if need > config.memory_budget_gb:
            raise WsmlError(
                f"method em-apl needs {need:.3g} GB: its epoch pass ranks all {num_rows:,} x "
                f"{num_classes:,} entries of the training split ({PASS_BYTES} bytes an entry) and "
                f"it keeps theta = {config.neg_proportion:g} of the unknown ones as "
                f"pseudo-negatives ({PSEUDO_BYTES} bytes each); the budget is "
                f"{config.memory_budget_gb:g} GB (-o memory_budget_gb=GB to allow more, or a "
                "method that scales to large label spaces: see cli.py methods)"
            )

    def stack_state(self, members: int) -> None:
        # member m's rows are m x rows + row: its keys shift by m x rows x L
        keys = self.pseudo_keys
        shift = torch.arange(members, device=keys.device).repeat_interleave(len(keys))
        span = self.num_rows // members * self.num_classes  # num_rows already counts all
        self.pseudo_keys = keys.repeat(members) + shift * span
        self.pseudo_values = self.pseudo_values.repeat(members)

    def pseudo_rows(self, rows: Tensor) -> Tensor:
        """(R, L) pseudo-label targets of ``rows``, NO_PSEUDO where an entry has none: each
        entry's key looked up in the sorted keys (no host sync: the sizes are known; a chunk of
        rows at a time, so the epoch pass's lookup of every row stays small)."""
        keys, n_cls = self.pseudo_keys, self.num_classes
        rows = rows.to(keys.device)
        if len(keys) == 0:
            return torch.full((len(rows), n_cls), NO_PSEUDO, device=keys.device)
        classes = torch.arange(n_cls, device=keys.device)
        chunk = max(1, LOOKUP_ENTRIES // n_cls)
        parts = []
        for part in rows.split(chunk):
            wanted = part.unsqueeze(1) * n_cls + classes  # (r, L) keys
            at = torch.searchsorted(keys, wanted).clamp_(max=len(keys) - 1)
            found = keys[at] == wanted
            parts.append(torch.where(found, self.pseudo_values[at], NO_PSEUDO))
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    def add_pseudo(self, rows: Tensor, classes: Tensor, values: Tensor) -> None:
        """New pseudo-labels (entries that have none yet), kept sorted by key."""
        keys = torch.cat([self.pseudo_keys, rows * self.num_classes + classes])
        order = torch.argsort(keys)
        self.pseudo_keys = keys[order]
        self.pseudo_values = torch.cat([self.pseudo_values, values.float()])[order]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("pseudo_keys", "pseudo_values"):  # the entries grow: take their size
            if prefix + name in state_dict:
                old = getattr(self, name)
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=old.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def compute(self, logits, batch, *, epoch, step):
        p = torch.sigmoid(logits)
        s = self.pseudo_rows(batch["row"]).to(p.device)  # (N, L)
        labelled = (s >= 0) & observed_masks(batch, p)[1]
        self.note_labels("pseudo_negative", labelled)
        s = s.clamp(min=0)
        soft = self.config.beta * (s * neg_log(p) + (1 - s) * neg_log(1 - p))
        loss = self.reduce(torch.where(labelled, soft, self.em_entries(p, batch)))
        return {"loss": loss, "pseudo_negatives": self.reduce(labelled.float().sum(1))}

    def round_size(self, c: int) -> int:
        cfg = self.config
        rounds = max(1, cfg.epochs - cfg.warmup_epoch)
        return int(cfg.neg_proportion * self.unlabel_num[c] / rounds)  # Zhou's expression order

    def wants_epoch_pass(self, epoch: int) -> bool:
        # Zhou also labels after the last epoch, which changes nothing; skip that pass.
        return self.config.warmup_epoch <= epoch < self.config.epochs

    def end_epoch(self, epoch, predictions=None):
        if not self.wants_epoch_pass(epoch):
            return {}
        if predictions is None:
            raise WsmlError(f"method {self.name} needs predictions over the training split")
        with torch.no_grad():
            rows, probs = self.gather(*predictions)
            rows, probs = rows.to(self.pseudo_keys.device), probs.to(self.pseudo_keys.device)
            n = len(self.observed)  # one member's rows; stacked members' rows are offset by n
            member = rows // n
            added = [self.select(rows[member == m], probs[member == m], m * n)
                     for m in range(self.members)]  # fmt: skip
        return {"pseudo_negatives_added": added if self.members > 1 else float(added[0])}

    def select(self, rows: Tensor, probs: Tensor, offset: int = 0) -> int:
        """Make this round's pseudo-negatives from probabilities of training rows (of the member
        whose rows start at ``offset``); the quotas count that member's rows alone."""
        dev = self.pseudo_keys.device
        rows, probs = rows.to(dev), probs.to(dev, torch.float32)
        rows, first = _first_occurrence(rows)  # sorted unique rows (DDP samplers pad with repeats)
        probs = probs[first]
        if self._observed_rows is None or self._observed_rows.device != dev:
            self._observed_rows = DeviceLabels(self.observed, dev)
        candidate = (self._observed_rows.dense(rows - offset) == 0) & (self.pseudo_rows(rows) < 0)
        key = torch.where(candidate, probs, torch.full_like(probs, float("inf")))
        order = torch.sort(key, dim=0, stable=True).indices  # ascending; ties by row
        quota = torch.tensor([self.round_size(c) for c in range(self.num_classes)], device=dev)
        rank = torch.empty_like(order)
        rank.scatter_(0, order, torch.arange(len(rows), device=dev).unsqueeze(1).expand_as(order))
        chosen = candidate & (rank < quota)
        r, c = chosen.nonzero(as_tuple=True)
        self.add_pseudo(rows[r], c, probs[r, c])
        return int(chosen.sum())


def _first_occurrence(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique rows and the index of each one's first occurrence in ``rows``."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    pos = torch.arange(len(rows), device=rows.device)
    first = torch.full((len(unique),), len(rows), device=rows.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, pos, reduce="amin")
    return unique, first


for _entry in (
    MethodInfo(
        name="em",
        paper=ZHOU,
        summary="observed positives + entropy maximisation on unknowns",
        regimes=SP,
        config=EmConfig,
        method_class=EntropyMax,
        defaults=EM_DEFAULTS,
        defaults_source=SOURCE,
    ),
    MethodInfo(
        name="em-apl",
        paper=ZHOU,
        summary="EM + asymmetric soft pseudo-negatives after each epoch from warm-up on",
        regimes=SP,
        config=EmAplConfig,
        method_class=EntropyMaxApl,
        defaults=APL_DEFAULTS,
        defaults_source=SOURCE,
        needs_observed=True,
        per_sample_state=True,
        epoch_pass=True,
        dense_state=True,  # its epoch pass ranks every unknown entry of the training split
    ),
):
    register_method(_entry)
