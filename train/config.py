"""What a training run is: :class:`RunConfig` (the run's own settings) plus the method's config
dataclass, resolved together before any work and saved with the run and in every checkpoint.

``-o key=value`` options go to the method when the method's config has that field (its protocol
fields lr, batch_size, epochs, … included), else to the run (:data:`RUN_OPTIONS`); anything else
fails listing both sets of valid keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shards.base.clitools import check_device
from shards.base.errors import WsmlError
from shards.base.options import (
    AT_LEAST_ONE,
    EPOCHS,
    POSITIVE,
    SEED,
    UNIT_OPEN,
    Range,
    check_ranges,
    parse_value,
)
from train.setting_names import SETTINGS

HEADS = ("linear", "cam")
GROUPS = ("", "frequency", "none")  # -o groups=…: "" is frequency on OpenImages, else none
# run options that may also come as -o key=value (method fields take precedence)
RUN_OPTIONS = (
    "head",
    "boostlu_alpha",
    "clip",
    "preset",
    "image_size",
    "loader",
    "threshold",
    "eval_batch_size",
    "device",
    "sweep_lrs",
    "sweep_batches",
    "fraction",
    "groups",
)
# fields that say how this invocation runs, not what the run is (free to change on --resume)
INVOCATION_FIELDS = (
    "resume",
    "overwrite",
    "stop_after_epochs",
    "progress",
    "device",
    "out",
    "tensorboard",
    "keep_members",
)


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``batch_size`` (a method field) is the global batch: each of W ranks
    takes batch_size / W samples of every step's batch."""

    shards: str
    method: str
    setting: str = "linear"
    regime: str | None = None  # observed view; None: single-positive, or the method's only one
    features: str | None = None  # linear: embeddings cache tag (the head's inputs)
    clip: str | None = None  # CLIP cache for methods that need one (default: --features)
    backbone: str | None = None  # e2e: bundled or timm name (None: the method's, or resnet50)
    weights: str | None = None  # e2e: None = pretrained (bundled or hub), "none", or a file
    preset: str | None = None  # e2e: augmentation preset (None: the method's, or cole448)
    image_size: int = 0  # e2e: >0 replaces the preset by a centre crop of this size
    loader: str = "auto"  # e2e: dali, torch or auto
    compile: bool = False  # e2e: torch.compile the model
    head: str = "linear"  # e2e: linear on pooled features, or cam (Kim et al. 2023's CAM head)
    boostlu_alpha: float = 1.0  # cam: positive CAM values x alpha before pooling (BoostLU: 5)
    seed: int = 0
    out: str | None = None  # run folder (default runs/<method>-<setting>-<seed>)
    method_options: Mapping[str, str] = field(default_factory=dict)  # key=value strings
    threshold: float = 0.5  # score threshold of CP/CR/CF1/OP/OR/OF1
    eval_batch_size: int = (
        0  # 0: 4096 rows (linear; fewer past 1,024 classes) or the training batch (e2e)
    )
    device: str = "auto"  # auto: cuda:LOCAL_RANK when there is a GPU, else cpu
    resume: bool = False
    overwrite: bool = False
    stop_after_epochs: int = 0  # debug: return after this epoch as if interrupted
    progress: bool = False
    tensorboard: bool = False  # also write TensorBoard event files in the run folder
    sweep: bool = False  # linear: train the hyper-parameter grid at once (train/sweep.py)
    sweep_lrs: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5)  # Cole's grid (METHODS.md §1.3)
    sweep_batches: tuple[int, ...] = (8, 16)
    keep_members: bool = False  # a sweep keeps every member's weights, not only its pick's
    fraction: float = 0.1  # --regime partial: the partial view with this fraction observed
    groups: str = ""  # mAP by class-frequency group: "frequency", "none"; "": on OpenImages

    # every numeric field's range (tests/test_option_ranges.py checks that none is missing)
    RANGES: ClassVar[dict[str, Range]] = {
        "image_size": Range(0, 4096),
        "boostlu_alpha": POSITIVE,
        "seed": SEED,
        "threshold": UNIT_OPEN,
        "eval_batch_size": Range(0, 2**20),
        "stop_after_epochs": Range(0, EPOCHS.hi),
        "sweep_lrs": POSITIVE,
        "sweep_batches": AT_LEAST_ONE,
        "fraction": Range(0, 1, lo_open=True),
    }

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.setting not in SETTINGS:
            raise WsmlError(f"setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}")
        from train.settings import get_setting

        get_setting(self.setting).check_config(self)  # the setting's own rules
        if self.keep_members and not self.sweep:
            raise WsmlError("--keep-members goes with --sweep (a run keeps its own weights)")
        check_device(self.device)
        if self.head not in HEADS:
            raise WsmlError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.boostlu_alpha != 1.0 and self.head != "cam":
            raise WsmlError("boostlu_alpha scales a CAM: use it with --head cam")
        if self.groups not in GROUPS:
            raise WsmlError(f"groups must be one of frequency, none, got {self.groups!r}")

    @property
    def run_dir(self) -> str:
        return self.out or f"runs/{self.method}-{self.setting}-{self.seed}"


def split_options(
    method_fields: list[str], options: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(method options, run options) of ``-o`` pairs; an unknown key fails listing both."""
    method, run, unknown = {}, {}, []
    for key, value in options.items():
        if key in method_fields:
            method[key] = value
        elif key in RUN_OPTIONS:
            run[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise WsmlError(
            f"unknown option(s) {', '.join(sorted(unknown))}; method options: "
            f"{', '.join(sorted(method_fields))}; run options: {', '.join(RUN_OPTIONS)}"
        )
    return method, run


def with_run_options(config: RunConfig, options: Mapping[str, str]) -> RunConfig:
    """``config`` with run options given as strings (from ``-o``) converted to field types."""
    types = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    values = {key: parse_value(text, types[key], key) for key, text in options.items()}
    return dataclasses.replace(config, **values)


def run_dict(config: RunConfig) -> dict[str, Any]:
    """The run's settings as saved (without the invocation-only fields)."""
    out = dataclasses.asdict(config)
    out["method_options"] = dict(config.method_options)
    out.update({k: list(v) for k, v in out.items() if isinstance(v, tuple)})  # as JSON has them
    for key in INVOCATION_FIELDS:
        out.pop(key)
    return out
