"""The method registry: :class:`MethodInfo` entries (regimes, settings, capability flags and
the papers' defaults per dataset family), looked up by name; a method's own model is built from
a :class:`ModelSpec`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from shards.base.errors import WsmlError
from shards.base.options import parse_value
from shards.base.registry import Registry
from shards.convert.source import dataset_family
from shards.lists import LabelLists
from train.methods.config import MethodConfig
from train.setting_names import SETTINGS

if TYPE_CHECKING:
    from train.methods.base import Method

REGIMES = ("full", "single-positive", "partial")


@dataclass(frozen=True)
class ModelSpec:
    """What a method's own model is built from (``MethodInfo.create_model``): the shard set (its
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
    method_class: type[Method]  # created as method_class(info, config, rows, classes, …)
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    defaults_source: str = ""
    needs_full: bool = False  # reads batch["full"] (clean labels)
    needs_clip: bool = False  # reads batch["embedding"]; create() needs text_embeddings
    needs_crops: bool = False  # reads batch["crops"] (N, K, D): the CLIP cache's tiles (--crops)
    needs_observed: bool = False  # create() needs the training split's observed labels (ragged)
    dense_state: bool = False  # rows x classes memory (state, epoch pass): not for large L
    per_sample_state: bool = False  # label state indexed by batch["row"]
    epoch_pass: bool = False  # end_epoch wants predictions over the training split
    trainable_state: bool = False  # extra_parameters() is not empty
    trains: bool = True  # False: no epochs; the loop scores the run once (clip-zeroshot)
    settings: tuple[str, ...] = SETTINGS  # linear (cached features) and/or e2e (images)
    create_model: Callable[[ModelSpec], nn.Module] | None = None  # the method's own model
    run_defaults: Mapping[str, Any] = field(default_factory=dict)  # e.g. backbone, preset
    instead: str = ""  # what trains this method's loss on labels it does not take (said then)
    release_notes: str = ""  # where wsml and the release differ (``-o released=true`` switches)

    def create_config(self, dataset: str | None = None, overrides: Mapping[str, str] | None = None):
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
            values[key] = parse_value(text, fields[key].type, key)
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
                + (f". {self.instead}" if self.instead else "")
            )

    def create(
        self,
        num_rows: int,
        num_classes: int,
        config: MethodConfig | None = None,
        *,
        observed: LabelLists | None = None,
        text_embeddings: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps_per_epoch: int = 0,
    ) -> Method:
        """Build the method for a training split of ``num_rows`` images and ``num_classes``,
        trained ``steps_per_epoch`` optimiser steps an epoch (0: not known, e.g. in tests)."""
        config = self.create_config() if config is None else config
        if not isinstance(config, self.config):
            raise WsmlError(f"method {self.name} takes a {self.config.__name__}, got {config!r}")
        self.method_class.check_size(num_rows, num_classes, config)
        if self.needs_observed:
            if not isinstance(observed, LabelLists) or (len(observed), observed.num_classes) != (
                num_rows,
                num_classes,
            ):
                raise WsmlError(
                    f"method {self.name} needs the training split's observed labels "
                    f"(ragged, {num_rows} rows of {num_classes} classes) at creation"
                )
        if self.needs_clip and (text_embeddings is None or len(text_embeddings) != num_classes):
            raise WsmlError(
                f"method {self.name} needs CLIP class-text embeddings ({num_classes} x D); "
                "cache them with `cli.py cache-clip`"
            )
        return self.method_class(
            self,
            config,
            num_rows,
            num_classes,
            observed=observed,
            text_embeddings=text_embeddings,
            generator=generator,
            steps_per_epoch=steps_per_epoch,
        )


METHODS: Registry[MethodInfo] = Registry("method")


def register_method(info: MethodInfo) -> MethodInfo:
    bad = sorted(set(info.regimes) - set(REGIMES))
    if bad or not info.regimes:
        raise ValueError(f"method {info.name}: unknown regimes {bad}; choose from {REGIMES}")
    return METHODS.register(info)


def get_method(name: str) -> MethodInfo:
    return METHODS.get(name)


def create_config(
    name: str, dataset: str | None = None, overrides: Mapping[str, str] | None = None
) -> MethodConfig:
    """The config of method ``name`` for ``dataset`` with ``key=value`` overrides."""
    return get_method(name).create_config(dataset, overrides)
