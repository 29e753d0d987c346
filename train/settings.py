"""The two settings a run trains in, each one object with its checks, model and data, so nothing
else branches on the setting: ``linear`` (a linear head on a cache of features, Cole et al.'s
fixed-feature setting) and ``e2e`` (a backbone and head, or a method's own model, on images
streamed through ``pipelines``)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from shards.base.errors import WsmlError
from shards.base.registry import Registry
from train.data import FeatureData, ImageData, cache_dim, e2e_preset
from train.runfolder import selected_weights

if TYPE_CHECKING:
    from pipelines.presets import Preset
    from shards.shardset import ShardSet
    from train.config import RunConfig
    from train.context import Context
    from train.methods import MethodInfo
    from train.plan import RunPlan
    from train.use.inference import TrainedRun


DEFAULT_BACKBONE = "resnet50"  # e2e, unless the method's protocol names another
DEFAULT_PRESET = "cole448"


@dataclasses.dataclass(frozen=True)
class Setting:
    """Base: ``check_config`` holds the setting's rules on a config's options (``RunConfig``
    applies them as it is made), ``complete`` fills the setting's defaults into a config,
    ``check`` checks it against the shard set before any work (returning the feature dimension
    where the data fixes it), ``create_model`` and ``create_data`` build the run's model and
    batches, ``place`` puts the model on the device, ``autocast`` is the precision of the
    model's forward passes; ``create_trained_model`` (``eval``) and ``create_network``
    (``predict``, ``export``) rebuild a finished run."""

    name: str
    summary: str

    def check_config(self, config: RunConfig) -> None:
        """The options this setting refuses, each with what to do instead."""

    def complete(self, config: RunConfig, info: MethodInfo) -> RunConfig:
        return config

    def check(self, config: RunConfig, ss: ShardSet) -> int | None:
        raise NotImplementedError

    def create_model(self, plan: RunPlan, weights: str | None = None) -> tuple[nn.Module, dict]:
        """The model and what to record of it in config.json."""
        raise NotImplementedError

    def create_data(self, plan: RunPlan, ctx: Context, model: nn.Module):
        raise NotImplementedError

    def create_trained_model(self, plan: RunPlan, saved: dict, ckpt: dict) -> nn.Module:
        """The run's model as its plan and this setting build it, with the checkpoint's
        selected weights (its EMA's when those were selected)."""
        model, _ = self.create_model(plan, weights="none")
        try:
            model.load_state_dict(selected_weights(ckpt))
        except RuntimeError as e:  # shapes that differ: another number of classes, another model
            raise WsmlError(
                f"the checkpoint does not fit the model of the run's config.json "
                f"({len(saved['classes'])} classes): {' '.join(str(e).split())[:300]}"
            ) from e
        return model

    def create_network(self, run: TrainedRun) -> tuple[nn.Module, Preset]:
        """A finished run as one network on images (normalised NCHW batch -> (N, L) logits)
        and its evaluation preprocessing."""
        raise NotImplementedError

    def place(self, model: nn.Module, ctx: Context) -> nn.Module:
        return model.to(ctx.device)

    def autocast(self, ctx: Context) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def step_threads(self, ctx: Context) -> int:
        """Intra-op threads while training (0: unchanged)."""
        return 0


@dataclasses.dataclass(frozen=True)
class LinearSetting(Setting):
    def check_config(self, config: RunConfig) -> None:
        if not config.features:
            from pathlib import Path

            from shards.caches import list_caches

            have = ", ".join(list_caches(Path(config.shards))) if config.shards else ""
            raise WsmlError(
                "the linear setting trains on cached features: pass --features TAG "
                f"(caches of {config.shards}: {have or 'none'}; make them with cli.py "
                "cache-features or cache-clip)"
            )
        if config.head == "cam":
            raise WsmlError(
                "--head cam needs the backbone's feature map: use it with --setting e2e "
                "(cached features are already pooled)"
            )

    def check(self, config: RunConfig, ss: ShardSet) -> int:
        return cache_dim(ss, config.features, "features")

    def create_model(self, plan: RunPlan, weights: str | None = None) -> tuple[nn.Module, dict]:
        from models.heads import create_classifier

        return create_classifier(plan.feature_dim, plan.num_classes, plan.config.seed), {}

    def create_data(self, plan: RunPlan, ctx: Context, model: nn.Module) -> FeatureData:
        config = plan.config
        data = FeatureData.read(
            plan.shard_set,
            config.features,
            config.regime,
            ctx,
            seed=config.seed,
            batch_size=plan.method.batch_size,
            clip=config.clip,
            crops=plan.info.needs_crops,
            eval_rows=config.eval_batch_size,
        )
        return with_groups(data, plan)

    def create_network(self, run: TrainedRun) -> tuple[nn.Module, Preset]:
        """The encoder that made the run's feature cache, rebuilt from its recipe, then the
        trained head: no shard set needed (but for an old run's recipe)."""
        from models.heads import EncoderHead, create_classifier
        from models.rebuild import create_cache_encoder

        config = run.config
        meta = run.encoder_recipe()
        encoder, preset = create_cache_encoder(meta, config.features, run.options.weights)
        state = {k: v for k, v in selected_weights(run.ckpt).items() if k.startswith("head.")}
        rows, dim = state["head.weight"].shape
        if dim != int(meta["dim"]):
            raise WsmlError(
                f"the run's head takes {dim} features, cache {config.features!r} gives "
                f"{meta['dim']}"
            )
        classifier = create_classifier(dim, rows, config.seed)
        classifier.load_state_dict(state)
        return EncoderHead(encoder, classifier), preset

    def step_threads(self, ctx: Context) -> int:
        # a step is a few small ops, where OpenMP's synchronisation costs more than it gains
        return 1 if ctx.device.type == "cpu" else 0


@dataclasses.dataclass(frozen=True)
class E2ESetting(Setting):
    def check_config(self, config: RunConfig) -> None:
        if config.features:
            raise WsmlError("--features goes with --setting linear (e2e reads the images)")
        if config.sweep:
            raise WsmlError("--sweep is for the linear setting")

    def complete(self, config: RunConfig, info: MethodInfo) -> RunConfig:
        """The method's protocol picks backbone and preset when they are not given."""
        return dataclasses.replace(
            config,
            backbone=config.backbone or info.run_defaults.get("backbone", DEFAULT_BACKBONE),
            preset=config.preset or info.run_defaults.get("preset", DEFAULT_PRESET),
        )

    def check(self, config: RunConfig, ss: ShardSet) -> None:
        from pipelines.loader import BACKENDS
        from pipelines.presets import get_preset

        if not config.image_size:
            get_preset(config.preset)
        if config.loader != "auto":
            BACKENDS.get(config.loader)
        return None

    def create_model(self, plan: RunPlan, weights: str | None = None) -> tuple[nn.Module, dict]:
        """The method's own model (``info.create_model``) or a backbone with the run's head, and
        the weights' provenance (with the feature dimension for backbone + head). ``weights``
        overrides the run's (``"none"`` to load a checkpoint into)."""
        config, info = plan.config, plan.info
        weights = config.weights if weights is None else weights
        if info.create_model is not None:
            return _own_model(plan, weights)
        from models.backbones import create_backbone
        from models.heads import create_classifier

        backbone, binfo = create_backbone(config.backbone, weights=weights)
        model = create_classifier(
            binfo.feature_dim,
            plan.num_classes,
            config.seed,
            backbone,
            config.head,
            config.boostlu_alpha,
        )
        record = {"weights": binfo.weights, "sha256": binfo.weights_sha256}
        return model, {"feature_dim": binfo.feature_dim, "backbone": record}

    def create_data(self, plan: RunPlan, ctx: Context, model: nn.Module) -> ImageData:
        config = plan.config
        preset = e2e_preset(config.preset, config.image_size, model.pretrained_cfg)
        data = ImageData(
            plan.shard_set,
            config.regime,
            ctx,
            preset=preset,
            seed=config.seed,
            batch_size=plan.method.batch_size,
            clip=config.clip,
            crops=plan.info.needs_crops,
            backend=config.loader,
            eval_batch=config.eval_batch_size,
        )
        return with_groups(data, plan)

    def create_network(self, run: TrainedRun) -> tuple[nn.Module, Preset]:
        """The trained model, planned against the run's shard set (where it is now), as
        ``eval`` loads it."""
        model = self.create_trained_model(run.plan, run.saved, run.ckpt)
        preset = e2e_preset(run.config.preset, run.config.image_size, model.pretrained_cfg)
        return model, preset

    def place(self, model: nn.Module, ctx: Context) -> nn.Module:
        model.to(ctx.device)
        if ctx.device.type == "cuda":  # with channels_last batches
            model.to(memory_format=torch.channels_last)
        return model

    def autocast(self, ctx: Context) -> contextlib.AbstractContextManager:
        return ctx.autocast()


def with_groups(data, plan: RunPlan):
    """The data with the classes of the frequency groups G1..G5 its scores report (Open
    Images, or ``-o groups=frequency``), or None."""
    from train.entry_metrics import create_class_groups

    data.groups = create_class_groups(plan.shard_set, plan.config.groups)
    return data


def _own_model(plan: RunPlan, weights: str | None) -> tuple[nn.Module, dict]:
    from train.methods import ModelSpec

    config, info = plan.config, plan.info
    if config.head != "linear":
        raise WsmlError(f"method {info.name} brings its own model; --head does not apply")
    spec = ModelSpec(
        plan.shard_set, plan.classes, plan.method, config.backbone, weights, config.seed
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = info.create_model(spec)
    provenance = getattr(model, "weights_info", None) or {"backbone": config.backbone}
    return model, {"backbone": dict(provenance)}


SETTINGS: Registry[Setting] = Registry("setting")
SETTINGS.register(LinearSetting("linear", "a linear head on cached features"))
SETTINGS.register(E2ESetting("e2e", "a backbone and head (or a method's own model) on images"))


def get_setting(name: str) -> Setting:
    return SETTINGS.get(name)
