"""The config every method's dataclass extends: the protocol fields the loop reads (optimiser,
lr, batch, epochs, schedule, EMA, early stopping), checked on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from shards.base.errors import WsmlError
from shards.base.options import (
    AT_LEAST_ONE,
    BELOW_ONE,
    EPOCHS,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    check_ranges,
)

SCHEDULES = ("constant", "onecycle", "poly")
OPTIMIZERS = ("adam", "sgd")


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

    # every numeric field's range (a subclass declares its own fields'); tests/test_option_ranges.py
    # checks that none is missing
    RANGES: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE,
        "batch_size": AT_LEAST_ONE,
        "epochs": EPOCHS,
        "head_lr_mult": NON_NEGATIVE,
        "weight_decay": NON_NEGATIVE,
        "momentum": BELOW_ONE,
        "schedule_epochs": Range(0, EPOCHS.hi),
        "ema": BELOW_ONE,
        "stop_patience": NON_NEGATIVE,
        "stop_drop": Range(0, 100),
    }

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise WsmlError on values no run could use (first each field's range); subclasses
        extend it."""
        check_ranges(self)
        if self.schedule not in SCHEDULES:
            raise WsmlError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise WsmlError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )


def config_dict(config: MethodConfig) -> dict[str, Any]:
    """A resolved config as plain values, for run folders and checkpoints."""
    return dataclasses.asdict(config)
