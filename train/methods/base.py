"""The base of every method (:class:`Method`: loss plus label state behind one call), the
stacking of sweep members, and the small helpers losses share."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from shards.errors import WsmlError
from train.methods.config import MethodConfig
from train.methods.registry import MethodInfo

LOG_EPSILON = 1e-5  # Cole's neg_log(x) = -log(x + 1e-5), shared by Cole, Zhou and VLPL


def neg_log(x: Tensor) -> Tensor:
    return -torch.log(x + LOG_EPSILON)


def gather_cat(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor along dim 0 over all ranks (first dims may differ between ranks,
    equal across the tensors of one call); returns the tensors unchanged without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    # NCCL gathers CUDA tensors only; results go back to each tensor's own device.
    nccl = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if nccl else tensors[0].device
    n = torch.tensor([tensors[0].shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    biggest = max(counts)
    out = []
    for t in tensors:
        padded = torch.zeros((biggest, *t.shape[1:]), dtype=t.dtype, device=dev)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device))
    return tuple(out)


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
    members: int = 1

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
    ):
        super().__init__()
        self.info, self.config = info, config
        self.num_rows, self.num_classes = num_rows, num_classes
        self.gather: Callable[..., tuple[Tensor, ...]] = gather_cat

    @property
    def name(self) -> str:
        return self.info.name

    def forward(
        self, logits: Tensor, batch: Mapping[str, Tensor], *, epoch: int, step: int
    ) -> dict[str, Tensor]:
        self._check_batch(logits, batch)
        out = self.compute(logits.float(), batch, epoch=epoch, step=step)
        pending = {k: out.pop(k) for k in [k for k in out if k.startswith("_")]}
        # Logits too: LL-R would reject a NaN entry (topk ranks NaN first) and hide it.
        self.check_finite(out["loss"], logits, epoch=epoch, step=step)
        if self.training and torch.is_grad_enabled() and pending:
            with torch.no_grad():
                self.commit(pending, batch, epoch=epoch)
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    def check_finite(self, loss: Tensor, *logits: Tensor, epoch: int, step: int) -> None:
        """Raise, naming method, epoch and step, when the loss (one value, or one per member) or
        any of ``logits`` is not finite."""
        finite = torch.isfinite(loss).all()
        for z in logits:
            finite = finite & torch.isfinite(z).all()
        if not bool(finite):
            bad = not bool(torch.isfinite(loss).all())
            what = "loss" if bad else "loss (non-finite logits)"
            value = loss.detach().flatten().tolist()
            raise WsmlError(
                f"method {self.name}: non-finite {what} "
                f"({value[0] if len(value) == 1 else value}) at epoch {epoch}, step {step}"
            )

    def by_member(self, x: Tensor) -> Tensor:
        """``x`` (M x B, ...) as (M, B, ...) when stacked; unchanged for a plain run."""
        return x if self.members == 1 else x.view(self.members, -1, *x.shape[1:])

    def reduce(self, x: Tensor, how: str = "mean") -> Tensor:
        """Mean (or sum) over a batch's entries: a scalar, or one value per member (M,)."""
        if self.members == 1:
            return x.mean() if how == "mean" else x.sum()
        flat = x.reshape(self.members, -1)
        return flat.mean(1) if how == "mean" else flat.sum(1)

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

    def _check_batch(self, logits: Tensor, batch: Mapping[str, Tensor]) -> None:
        shape = (len(logits), self.num_classes)
        if logits.dim() != 2 or tuple(logits.shape) != shape:
            raise WsmlError(f"method {self.name}: logits {tuple(logits.shape)}, expected {shape}")
        if tuple(batch["observed"].shape) != shape:
            raise WsmlError(f"method {self.name}: observed {tuple(batch['observed'].shape)}")
        if self.uses_rows:
            row = batch["row"]
            if row.shape != (len(logits),) or bool(((row < 0) | (row >= self.num_rows)).any()):
                raise WsmlError(
                    f"method {self.name}: batch rows must index the training split "
                    f"(0..{self.num_rows - 1})"
                )

    def compute(
        self, logits: Tensor, batch: Mapping[str, Tensor], *, epoch: int, step: int
    ) -> dict[str, Tensor]:
        """``{"loss": …, scalars…}``; keys starting with ``_`` are handed to ``commit``."""
        raise NotImplementedError

    def commit(self, pending: dict[str, Tensor], batch: Mapping[str, Tensor], *, epoch: int):
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

    def extra_repr(self) -> str:
        return f"{self.name}, rows={self.num_rows}, classes={self.num_classes}"


def observed_masks(batch: Mapping[str, Tensor], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(positive, unknown, negative) boolean masks of batch["observed"]."""
    y = batch["observed"].to(like.device)
    return y == 1, y == 0, y == -1


def expected_positive_reg(p: Tensor, k: float) -> Tensor:
    """Cole's EPR: (mean over images of the summed probabilities - k)^2 / L^2; ``p`` (N, L),
    or (M, N, L) for stacked members (one value each)."""
    return (p.sum(-1).mean(-1) - k) ** 2 / p.shape[-1] ** 2


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
