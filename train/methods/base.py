"""The base of every method (:class:`Method`: loss plus label state behind one call), the
stacking of sweep members, and the small helpers losses share."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pipelines.distributed import all_sum, ddp_scaled, gather_cat, global_sum, training_world
from shards.base.errors import WsmlError
from train.methods.config import MethodConfig
from train.methods.label_state import LabelAudit, note_labels, read_label_counts
from train.methods.registry import MethodInfo

LOG_EPSILON = 1e-5  # Cole's neg_log(x) = -log(x + 1e-5), shared by Cole, Zhou and VLPL


def neg_log(x: Tensor) -> Tensor:
    return -torch.log(x + LOG_EPSILON)


class Method(nn.Module):
    """Base of every method: subclasses implement ``compute`` and, for label state, ``commit``.

    **Members** (``--sweep``): a method whose class sets ``stackable`` may stand for ``members``
    = M independent copies of itself trained at once (:func:`stack_members`), each with its own
    model. Their batches are laid out member-major: logits (M x B, L), batch tensors likewise,
    ``row`` offset by ``member x num_rows`` (so per-entry state indexed by row stays apart). Every
    reduction over a batch goes through :meth:`reduce` (or :meth:`by_member`), which gives the
    scalar of a plain run and an (M,) vector of the members' values: each member's loss is
    exactly its own run's.
    """

    uses_rows: ClassVar[bool] = False  # validate batch["row"] against num_rows
    stackable: ClassVar[bool] = True  # may run as stacked members (see above)
    # Label changes the method reports (kind -> the label it gives: 1 positive, -1 negative),
    # checked against the clean labels for diagnostics only (train/methods/audit.py).
    label_changes: ClassVar[dict[str, int]] = {}
    members: int = 1
    check_every: int | None = None  # steps between finiteness checks (None: 1 on CPU, else 50)

    def __init__(
        self,
        info: MethodInfo,
        config: MethodConfig,
        num_rows: int,
        num_classes: int,
        *,
        observed: Tensor | None = None,
        text_embeddings: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps_per_epoch: int = 0,
    ):
        super().__init__()
        self.info, self.config = info, config
        self.num_rows, self.num_classes = num_rows, num_classes
        self.steps_per_epoch = steps_per_epoch  # optimiser steps an epoch (0: not known)
        self.gather: Callable[..., tuple[Tensor, ...]] = gather_cat
        self.checks = DeferredChecks()

    @property
    def name(self) -> str:
        return self.info.name

    def forward(
        self, logits: Tensor, batch: Mapping[str, Tensor], *, epoch: int, step: int
    ) -> dict[str, Tensor]:
        if self.members > 1:
            batch = self.stack_batch(batch)
        self._check_batch(logits, batch, epoch, step)
        audit = LabelAudit.begin(self, batch)  # takes batch["full"] out of the loss's reach
        out = self.compute(logits.float(), audit.batch, epoch=epoch, step=step)
        out, update = out if isinstance(out, tuple) else (out, None)
        # Logits too: LL-R would reject a NaN entry (topk ranks NaN first) and hide it.
        self.check_finite(out["loss"], logits, epoch=epoch, step=step)
        if self.training and torch.is_grad_enabled() and update is not None:
            with torch.no_grad():
                self.commit(update, audit.batch, epoch=epoch)
        audit.end(self)
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    def note_labels(self, kind: str, changed: Tensor, among: Tensor | None = None) -> None:
        """Diagnostics: ``changed`` (N, L) bool marks the entries whose label this step set to
        ``label_changes[kind]``; counted against the clean labels after the loss is computed.
        ``among`` (N, L) bool, the entries the change could have touched, adds its recall."""
        note_labels(self, kind, changed, among)

    def read_label_counts(self) -> dict[str, Any]:
        """The epoch's label-change counts (summed over ranks) as scalars, then reset: per kind
        ``labels/KIND/changed``, ``…/right``, ``…/precision`` (and ``…/recall`` where noted
        ``among``); a list per member when stacked."""
        return read_label_counts(self)

    def check_finite(self, loss: Tensor, *logits: Tensor, epoch: int, step: int) -> None:
        """Raise, naming method, epoch and step, when the loss (one value, or one per member) or
        any of ``logits`` is not finite: at once on the CPU; on a GPU every ``check_every``
        steps and at the end of each epoch (:meth:`flush_checks`), so no step waits on the host."""
        finite = torch.isfinite(loss).all()
        for z in logits:
            finite = finite & torch.isfinite(z).all()
        self.checks.add(finite, ("loss", loss.detach(), epoch, step))
        self._flush_every(loss.device)

    def flush_checks(self) -> None:
        """Raise for the first failed check still pending (the loop calls it after each epoch)."""
        failed = self.checks.first_failed()
        if failed is None:
            return
        _, loss, epoch, step = failed
        what = "loss" if not bool(torch.isfinite(loss).all()) else "loss (non-finite logits)"
        value = loss.flatten().tolist()
        raise WsmlError(
            f"method {self.name}: non-finite {what} "
            f"({value[0] if len(value) == 1 else value}) at epoch {epoch}, step {step}"
        )

    def _flush_every(self, device: torch.device) -> None:
        every = self.check_every or (1 if device.type == "cpu" else 50)
        if len(self.checks) >= every:
            self.flush_checks()

    def stack_batch(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A batch of B training rows as the stacked members see it: every member's copy of
        the labels (and embeddings), member-major (M B, ...), rows offset by ``member x rows``.
        What the loss never reads is not copied: the model's input, the CLIP tiles of a method
        that does not read them, and the clean labels of a method that neither trains on them
        nor counts its label changes against them."""
        m = self.members
        n = self.num_rows // m  # one member's training rows
        unread = {"row", "input"}
        if not (self.info.needs_full or self.label_changes):
            unread.add("full")
        if not self.info.needs_crops:
            unread.add("crops")  # (B, K, D) tiles: only a method that reads them gets copies
        out = {k: v.repeat(m, *([1] * (v.dim() - 1))) for k, v in batch.items() if k not in unread}
        offsets = torch.arange(m, device=batch["row"].device).unsqueeze(1) * n
        out["row"] = (offsets + batch["row"]).reshape(-1)
        return out

    def by_member(self, x: Tensor) -> Tensor:
        """``x`` (M x B, ...) as (M, B, ...) when stacked; unchanged for a plain run."""
        return x if self.members == 1 else x.view(self.members, -1, *x.shape[1:])

    def reduce(self, x: Tensor, how: str = "mean") -> Tensor:
        """Mean (or sum) over a batch's entries: a scalar, or one value per member (M,). Under
        DDP a sum is the global batch's (a mean of equal shares needs nothing: DDP averages)."""
        if self.members == 1:
            return x.mean() if how == "mean" else global_sum(x.sum())
        flat = x.reshape(self.members, -1)
        return flat.mean(1) if how == "mean" else global_sum(flat.sum(1))

    def training_step(
        self,
        net: nn.Module,
        batch: Mapping[str, Tensor],
        *,
        epoch: int,
        step: int,
        autocast: Callable[[], Any],
    ) -> dict[str, Tensor]:
        """One training step's forward and loss: ``{"loss": …, scalars…}`` as ``forward``.
        ``net`` is the (maybe DDP-wrapped, compiled) model, ``autocast()`` the run's precision
        context for model forwards. Methods with a second forward override this."""
        with autocast():
            logits = net(batch["input"])
        return self(logits, batch, epoch=epoch, step=step)

    def bind_model(self, model: nn.Module) -> None:
        """Called once with the run's plain model, before a checkpoint is restored."""

    def after_step(self) -> None:
        """Called after every optimiser step (and the model EMA's update)."""

    def _check_batch(
        self, logits: Tensor, batch: Mapping[str, Tensor], epoch: int = 0, step: int = 0
    ) -> None:
        shape = (len(logits), self.num_classes)
        if logits.dim() != 2 or tuple(logits.shape) != shape:
            raise WsmlError(f"method {self.name}: logits {tuple(logits.shape)}, expected {shape}")
        if tuple(batch["observed"].shape) != shape:
            raise WsmlError(f"method {self.name}: observed {tuple(batch['observed'].shape)}")
        if self.uses_rows:
            row = batch["row"]
            if row.shape != (len(logits),):
                raise WsmlError(f"method {self.name}: batch rows {tuple(row.shape)}")
            # On a device the loader checked the rows on the host (pipelines/labels.py): a
            # check here would be read only after the state's index had asserted on the GPU.
            if row.device.type == "cpu" and not ((row >= 0) & (row < self.num_rows)).all():
                raise WsmlError(
                    f"method {self.name}: batch rows must index the training split "
                    f"(0..{self.num_rows - 1}); epoch {epoch}, step {step} had others"
                )

    def compute(
        self, logits: Tensor, batch: Mapping[str, Tensor], *, epoch: int, step: int
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Any]:
        """``{"loss": …, scalars…}``; or that and a label-state update, which ``commit``
        applies once the loss is known to be finite (train mode, grad enabled)."""
        raise NotImplementedError

    def commit(self, update: Any, batch: Mapping[str, Tensor], *, epoch: int) -> None:
        """Apply a training step's label-state update (no_grad, train mode, finite loss)."""

    def extra_parameters(self) -> list[dict[str, Any]]:
        return []

    @classmethod
    def check_size(cls, num_rows: int, num_classes: int, config: MethodConfig) -> None:
        """Refuse a training split too large for the method's state, before any work (a
        method whose state is dense in rows x classes overrides this)."""

    def stack_state(self, members: int) -> None:
        """Called once on a stacked copy (:func:`stack_members`): give every member its own copy
        of dense per-row state (rows are offset by ``member x rows``). Sparse state keyed by row
        needs nothing."""

    def after_backward(self) -> None:
        """Average the gradients of ``extra_parameters`` over ranks (no-op by default)."""

    def start_epoch(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (1-based) trains."""

    def wants_epoch_pass(self, epoch: int) -> bool:
        return False

    def end_epoch(
        self, epoch: int, predictions: tuple[Tensor, Tensor] | None = None
    ) -> dict[str, float]:
        return {}

    def untrained_report(self, data) -> dict[str, Any]:
        """What a method that trains nothing (``info.trains`` False) adds to its run's
        summary, from the run's data (e.g. clip-zeroshot's pseudo-label quality)."""
        return {}

    def extra_repr(self) -> str:
        return f"{self.name}, rows={self.num_rows}, classes={self.num_classes}"


class DeferredChecks:
    """Checks recorded as device booleans and read in one host sync: (ok, what) pairs."""

    def __init__(self) -> None:
        self.pending: list[tuple[Tensor, Any]] = []

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, ok: Tensor, what: Any) -> None:
        self.pending.append((ok, what))

    def first_failed(self) -> Any:
        """The ``what`` of the first failed check (None if all passed); clears the record."""
        pending, self.pending = self.pending, []
        if not pending:
            return None
        oks = torch.stack([ok.to(pending[0][0].device) for ok, _ in pending]).cpu()
        bad = (~oks).nonzero()
        return pending[int(bad[0])][1] if len(bad) else None


def observed_masks(batch: Mapping[str, Tensor], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(positive, unknown, negative) boolean masks of batch["observed"]."""
    y = batch["observed"].to(like.device)
    return y == 1, y == 0, y == -1


def expected_positive_reg(p: Tensor, k: float) -> Tensor:
    """Cole's EPR: (mean over images of the summed probabilities - k)^2 / L^2; ``p`` (N, L),
    or (M, N, L) for stacked members (one value each). Under DDP the mean is the global batch's."""
    world = training_world()
    if world == 1:
        return (p.sum(-1).mean(-1) - k) ** 2 / p.shape[-1] ** 2
    mean = all_sum(p.sum(-1).sum(-1)) / (p.shape[-2] * world)
    return ddp_scaled((mean - k) ** 2 / p.shape[-1] ** 2)


def stack_members(methods: Sequence[Method]) -> Method:
    """One method standing for ``methods`` (same class and config but for lr, freshly created
    for the same training split) as stacked members; a single method is returned as it is."""
    first = methods[0]
    if len(methods) == 1:
        return first
    if not first.stackable or any(type(m) is not type(first) for m in methods):
        raise WsmlError(f"method {first.name} cannot train stacked members")
    states = [m.state_dict(keep_vars=True) for m in methods]
    for key, value in states[0].items():
        if any(not torch.equal(value, s[key]) for s in states[1:]):
            raise WsmlError(f"method {first.name}: members differ in state {key!r}")
    out = copy.deepcopy(first)
    out.members = len(methods)
    out.num_rows = first.num_rows * len(methods)
    out.stack_state(len(methods))
    return out
