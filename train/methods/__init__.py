"""The method registry: every loss-based method as a task, loss plus label state behind one call.

Interface (what a generic loop uses; it never branches on a method's name):

``info = get_method(name)``, a frozen :class:`MethodInfo`: ``regimes`` it trains on, flags
(``needs_full``, ``needs_clip``, ``needs_observed``, ``per_sample_state``, ``epoch_pass``,
``trainable_state``) and ``defaults`` per dataset family.
``config = resolve_config(name, dataset, overrides)``: the method's config dataclass with the
paper's defaults for the dataset's family, then ``key=value`` overrides (unknown keys fail listing
the valid ones). Every config carries the protocol fields of :class:`MethodConfig` for the loop.
``method = info.create(num_rows, num_classes, config, observed=…, text_embeddings=…)``, or
``create_method(...)`` which also resolves and checks the regime, is a ``torch.nn.Module``:

- ``method(logits, batch, epoch=e, step=s) -> {"loss": scalar, other 0-d detached scalars}``;
  ``logits`` (N, L); ``batch["row"]`` int64 (N,) index into the training split (0..num_rows-1),
  ``batch["observed"]`` int8 (N, L): 1 positive, 0 unknown, -1 negative; ``batch["full"]`` the
  clean labels (1 positive, anything else negative) when ``info.needs_full``;
  ``batch["embedding"]`` (N, D) CLIP image embeddings when ``info.needs_clip``. Epochs count from
  1. A non-finite loss raises :class:`~shards.errors.WsmlError` naming method, epoch and step.
  Label state changes only in train mode with grad enabled, under ``no_grad``, after that check.
- ``extra_parameters()`` -> optimiser param groups the method owns (``params``, ``lr_mult``,
  ``lr`` = config.lr x lr_mult, ``weight_decay``, ``name``); the loop adds them to its optimiser.
- ``after_backward()`` after ``loss.backward()`` and before the step (DDP averages only the model's
  gradients; ROLE averages its estimator's here).
- ``start_epoch(epoch)``; ``wants_epoch_pass(epoch)``; ``end_epoch(epoch, predictions)`` where
  ``predictions = (rows, probabilities)`` from an eval-mode pass over the training split, given
  when ``wants_epoch_pass(epoch)`` is true (EM+APL). Returns scalars to log (stacked members:
  a list, one value per member, where they differ).
- ``state_dict()`` / ``load_state_dict()``: label state lives in buffers and parameters.
- Methods with their own model or more than one forward (HSPNet, PU-MLC, OASS) use three more
  hooks, whose defaults are what every other method does: ``info.build_model(spec)`` builds the
  method's model (:class:`ModelSpec`; end to end only, ``info.settings``) in place of backbone +
  head; ``training_step(net, batch, epoch=, step=, autocast=)`` is one step's forward and loss
  (default: ``self(net(batch["input"]), batch, …)``); ``bind_model(model)`` is called once with
  the plain model before a checkpoint is restored (e.g. to build an EMA teacher, which, as a
  submodule of the method, travels in its state) and ``after_step()`` after every optimiser step.
  Under DDP ``net`` is the wrapped model: a second forward must be the same call (concatenate
  the inputs, or give the model's forward a second argument), never a second DDP call per step.
- ``method.gather``: ``gather_cat`` (all-gather along dim 0 across ranks, identity without a
  process group); every state update goes through it, so ranks hold the same state.

Forward is for training-split batches only (``row`` indexes the training split).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from shards.errors import WsmlError
from shards.registry import Registry

__all__ = [
    "FAMILIES",
    "LOG_EPSILON",
    "METHODS",
    "Method",
    "MethodConfig",
    "MethodInfo",
    "ModelSpec",
    "REGIMES",
    "config_dict",
    "create_method",
    "dataset_family",
    "gather_cat",
    "get_method",
    "list_methods",
    "register_method",
    "resolve_config",
    "stack_members",
]

LOG_EPSILON = 1e-5  # Cole's neg_log(x) = -log(x + 1e-5), shared by Cole, Zhou and VLPL
FAMILIES = ("voc", "coco", "nus", "cub", "openimages")
REGIMES = ("full", "single-positive", "partial")
_DATASET_FAMILY = {
    "voc2007": "voc",
    "voc2012": "voc",
    "coco2014": "coco",
    "nuswide": "nus",
    "cub": "cub",
    "openimages-v3": "openimages",
}
SCHEDULES = ("constant", "onecycle", "poly")
OPTIMIZERS = ("adam", "sgd")
SETTINGS = ("linear", "e2e")


def dataset_family(dataset: str | None) -> str:
    """Family of a dataset name (``voc2012`` -> ``voc``); a family name maps to itself and any
    other dataset (own data) to ``default``."""
    if dataset in FAMILIES:
        return dataset
    return _DATASET_FAMILY.get(dataset or "", "default")


def neg_log(x: Tensor) -> Tensor:
    return -torch.log(x + LOG_EPSILON)


@dataclass(frozen=True)
class MethodConfig:
    """Protocol fields every method's config carries, for the loop: Adam (or ``optimizer=sgd``
    with ``momentum``) at ``lr`` (the head at ``lr * head_lr_mult``), ``weight_decay`` (coupled
    L2, as torch's Adam and SGD apply it), a ``constant``, ``onecycle`` (over
    ``schedule_epochs``, pct_start 0.2, as in the ASL skeleton) or ``poly`` ((1 - t/T)^0.9 over
    ``schedule_epochs``, Puzzle-CAM's) schedule, model EMA decay ``ema``
    (0 = off), early stopping after ``stop_patience`` epochs without a better val mAP (0 = off)
    or when val mAP falls more than ``stop_drop`` points below the best (0 = off)."""

    lr: float = 1e-5
    batch_size: int = 8
    epochs: int = 10
    head_lr_mult: float = 1.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "constant"
    schedule_epochs: int = 0
    ema: float = 0.0
    stop_patience: int = 0
    stop_drop: float = 0.0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise WsmlError on values no run could use; subclasses extend it."""
        if not self.lr > 0 or self.batch_size < 1 or self.epochs < 1:
            raise WsmlError(f"lr, batch_size and epochs must be positive, got {self}")
        if self.schedule not in SCHEDULES:
            raise WsmlError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise WsmlError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not 0.0 <= self.ema < 1.0:
            raise WsmlError(f"ema must be in [0, 1), got {self.ema}")


def _parse_value(text: str, annotation: str, key: str) -> Any:
    """One ``key=value`` override as its field's annotated type (annotations are strings)."""
    kind = annotation.split("|")[0].strip()
    if "None" in annotation and text.strip().lower() == "none":
        return None
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise WsmlError(f"option {key} expects true/false, got {text!r}")
    for name, cast, what in (("int", int, "an integer"), ("float", float, "a number")):
        if kind == name:
            try:
                return cast(text)
            except ValueError:
                raise WsmlError(f"option {key} expects {what}, got {text!r}") from None
    return text


@dataclass(frozen=True)
class ModelSpec:
    """What a method's own model is built from (``MethodInfo.build_model``): the shard set (its
    classes, class groups and training labels), the method's resolved config, the run's
    ``--backbone`` (or the method's default) and ``--weights`` (None: pretrained; "none": random;
    or a local file), and the seed (the global RNG is seeded with it around the call). The model
    maps an image batch to (N, L) logits and has timm's ``pretrained_cfg`` (at least ``mean``
    and ``std``, which the run's preset normalises with); it may define ``param_groups(config)``
    (optimiser groups, each with ``lr`` and ``name``) and ``weights_info`` (provenance, saved in
    the run's config)."""

    shards: Any  # shards.shardset.ShardSet
    classes: tuple[str, ...]
    config: MethodConfig
    backbone: str
    weights: str | None
    seed: int


@dataclass(frozen=True)
class MethodInfo:
    """Registry entry of a method. ``defaults`` maps a dataset family (or ``default``, applied
    first) to values that replace the config dataclass's own; ``defaults_source`` cites them."""

    name: str
    paper: str
    summary: str
    regimes: tuple[str, ...]
    config: type[MethodConfig]
    factory: Callable[..., Method]
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    defaults_source: str = ""
    needs_full: bool = False  # reads batch["full"] (clean labels)
    needs_clip: bool = False  # reads batch["embedding"]; create() needs text_embeddings
    needs_observed: bool = False  # create() needs the training split's observed matrix
    per_sample_state: bool = False  # label state indexed by batch["row"]
    epoch_pass: bool = False  # end_epoch wants predictions over the training split
    trainable_state: bool = False  # extra_parameters() is not empty
    settings: tuple[str, ...] = SETTINGS  # linear (cached features) and/or e2e (images)
    build_model: Callable[[ModelSpec], nn.Module] | None = None  # the method's own model
    run_defaults: Mapping[str, Any] = field(default_factory=dict)  # e.g. backbone, preset

    def resolve(self, dataset: str | None = None, overrides: Mapping[str, str] | None = None):
        """The config for ``dataset`` (a name or family) with string overrides applied."""
        fields = {f.name: f for f in dataclasses.fields(self.config)}
        unknown = sorted(set(overrides or {}) - set(fields))
        if unknown:
            raise WsmlError(
                f"unknown option(s) {', '.join(unknown)} for method {self.name}; "
                f"valid: {', '.join(sorted(fields))}"
            )
        values: dict[str, Any] = dict(self.defaults.get("default", {}))
        values.update(self.defaults.get(dataset_family(dataset), {}))
        for key, text in (overrides or {}).items():
            values[key] = _parse_value(text, str(fields[key].type), key)
        return self.config(**values)

    def check_setting(self, setting: str) -> None:
        if setting not in self.settings:
            raise WsmlError(
                f"method {self.name} trains in the {' and '.join(self.settings)} setting only "
                f"(its own model on images): use --setting {self.settings[0]}"
            )

    def check_regime(self, regime: str) -> None:
        if regime not in self.regimes:
            raise WsmlError(
                f"method {self.name} does not train on {regime!r} labels; "
                f"it takes: {', '.join(self.regimes)}"
            )

    def create(
        self,
        num_rows: int,
        num_classes: int,
        config: MethodConfig | None = None,
        *,
        observed: Tensor | None = None,
        text_embeddings: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Method:
        """Build the method for a training split of ``num_rows`` images and ``num_classes``."""
        config = self.resolve() if config is None else config
        if not isinstance(config, self.config):
            raise WsmlError(f"method {self.name} takes a {self.config.__name__}, got {config!r}")
        if self.needs_observed:
            if observed is None or tuple(observed.shape) != (num_rows, num_classes):
                raise WsmlError(
                    f"method {self.name} needs the training split's observed labels "
                    f"({num_rows} x {num_classes}) at creation"
                )
        if self.needs_clip and (text_embeddings is None or len(text_embeddings) != num_classes):
            raise WsmlError(
                f"method {self.name} needs CLIP class-text embeddings ({num_classes} x D); "
                "cache them with `cli.py cache-clip`"
            )
        return self.factory(
            self,
            config,
            num_rows,
            num_classes,
            observed=observed,
            text_embeddings=text_embeddings,
            generator=generator,
        )


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


METHODS: Registry[MethodInfo] = Registry("method")


def register_method(info: MethodInfo) -> MethodInfo:
    bad = sorted(set(info.regimes) - set(REGIMES))
    if bad or not info.regimes:
        raise ValueError(f"method {info.name}: unknown regimes {bad}; choose from {REGIMES}")
    return METHODS.register(info)


def get_method(name: str) -> MethodInfo:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def resolve_config(
    name: str, dataset: str | None = None, overrides: Mapping[str, str] | None = None
) -> MethodConfig:
    """The config of method ``name`` for ``dataset`` with ``key=value`` overrides."""
    return get_method(name).resolve(dataset, overrides)


def create_method(
    name: str,
    *,
    num_rows: int,
    num_classes: int,
    dataset: str | None = None,
    regime: str | None = None,
    overrides: Mapping[str, str] | None = None,
    observed: Tensor | None = None,
    text_embeddings: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Method:
    """Resolve, check the regime and create in one call (what the loop does before any work)."""
    info = get_method(name)
    config = info.resolve(dataset, overrides)
    if regime is not None:
        info.check_regime(regime)
    return info.create(
        num_rows,
        num_classes,
        config,
        observed=observed,
        text_embeddings=text_embeddings,
        generator=generator,
    )


def config_dict(config: MethodConfig) -> dict[str, Any]:
    """A resolved config as plain values, for run folders and checkpoints."""
    return dataclasses.asdict(config)


_FIRST = ("cole", "zhou", "vlpl", "kim", "asl", "zhang")  # `cli.py methods` lists in this order


def _register_all() -> None:
    """Import every module of this package (each registers its methods): the papers of the
    SPML line first, then the others by name."""
    import importlib
    import pkgutil

    found = {m.name for m in pkgutil.iter_modules(__path__)}
    for module in [*_FIRST, *sorted(found - set(_FIRST))]:
        importlib.import_module(f"{__name__}.{module}")


_register_all()
