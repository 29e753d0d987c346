"""The method registry: every loss-based method as a task, loss plus label state behind one call.

Interface (what a generic loop uses; it never branches on a method's name):

``info = get_method(name)``, a frozen :class:`MethodInfo`: ``regimes`` it trains on, flags
(``needs_full``, ``needs_clip``, ``needs_observed``, ``per_sample_state``, ``epoch_pass``,
``trainable_state``) and ``defaults`` per dataset family.
``config = create_config(name, dataset, overrides)``: the method's config dataclass with the
paper's defaults for the dataset's family, then ``key=value`` overrides (unknown keys fail listing
the valid ones). Every config carries the protocol fields of :class:`MethodConfig` for the loop.
``method = info.create(num_rows, num_classes, config, observed=…, text_embeddings=…)`` is a
``torch.nn.Module``:

- ``method(logits, batch, epoch=e, step=s) -> {"loss": scalar, other 0-d detached scalars}``;
  ``logits`` (N, L); ``batch["row"]`` int64 (N,) index into the training split (0..num_rows-1),
  ``batch["observed"]`` int8 (N, L): 1 positive, 0 unknown, -1 negative; ``batch["full"]`` the
  clean labels (1 positive, anything else negative) when ``info.needs_full``;
  ``batch["embedding"]`` (N, D) CLIP image embeddings when ``info.needs_clip``. Epochs count from
  1. A non-finite loss raises :class:`~shards.base.errors.WsmlError` naming method, epoch and step.
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
  hooks, whose defaults are what every other method does: ``info.create_model(spec)`` builds the
  method's model (:class:`ModelSpec`; end to end only, ``info.settings``) in place of backbone +
  head; ``training_step(net, batch, epoch=, step=, autocast=)`` is one step's forward and loss
  (default: ``self(net(batch["input"]), batch, …)``); ``bind_model(model)`` is called once with
  the plain model before a checkpoint is restored (e.g. to build an EMA teacher, which, as a
  submodule of the method, travels in its state) and ``after_step()`` after every optimiser step.
  Under DDP ``net`` is the wrapped model: a second forward must be the same call (concatenate
  the inputs, or give the model's forward a second argument), never a second DDP call per step.
- ``method.gather``: ``pipelines.distributed.gather_cat`` (all-gather along dim 0 across ranks, identity without a
  process group); every state update goes through it, so ranks hold the same state.

Forward is for training-split batches only (``row`` indexes the training split).
"""

from __future__ import annotations

from shards.base.registry import import_modules
from shards.convert.source import FAMILIES, dataset_family
from train.methods.base import (
    LOG_EPSILON,
    Method,
    expected_positive_reg,
    neg_log,
    observed_masks,
    stack_members,
)
from train.methods.config import MethodConfig, config_dict
from train.methods.registry import (
    METHODS,
    REGIMES,
    MethodInfo,
    ModelSpec,
    create_config,
    get_method,
    register_method,
)

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
    "dataset_family",
    "expected_positive_reg",
    "get_method",
    "neg_log",
    "observed_masks",
    "register_method",
    "create_config",
    "stack_members",
]

import_modules(__name__, __path__)  # every module of the package: each registers its methods
