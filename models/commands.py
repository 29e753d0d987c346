"""The cache commands: ``cache-clip`` and ``cache-features``."""

from __future__ import annotations

import sys
import time

import click

from shards.base.clitools import (
    STARTED,
    DeviceType,
    RegistryChoice,
    expected_errors,
    progress_factory,
)


class ModelName(click.ParamType):
    """A CLIP model (open_clip) or backbone (timm) name, checked when the command runs."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"{kind} name"

    def convert(self, value, param, ctx):
        from models.cache import check_model_name
        from shards.base.errors import WsmlError

        try:
            check_model_name(self.kind, value)
        except WsmlError as e:
            self.fail(str(e), param, ctx)
        return value


class CropsType(click.ParamType):
    """``gridG``: a grid of G x G tiles (a bad value is a usage error, exit 2)."""

    name = "gridG"

    def convert(self, value, param, ctx):
        from models.cache_crops import parse_crops
        from shards.base.errors import WsmlError

        try:
            parse_crops(value)
        except WsmlError as e:
            self.fail(str(e), param, ctx)
        return value


class FeaturePreset(RegistryChoice):
    """A registered preset, or ``backbone``: the backbone's own eval preprocessing."""

    def convert(self, value, param, ctx):
        if value == "backbone" or value in self.registry():
            return value
        self.fail(self.registry().unknown_message(value) + ", or backbone", param, ctx)


def cache_options(fn):
    """Options shared by the cache commands (applied in reverse: listed in this order)."""
    options = [
        click.option("--splits", help="Comma-separated splits [default: every split]."),
        click.option("--batch-size", type=click.IntRange(1, 2**20), default=128, show_default=True),
        click.option(
            "--chunk-size",
            type=click.IntRange(1, 2**24),
            default=4096,
            show_default=True,
            help="Rows per resumable chunk.",
        ),
        click.option(
            "--loader",
            type=click.Choice(["auto", "dali", "torch"]),
            default="auto",
            show_default=True,
        ),
        click.option(
            "--device",
            type=DeviceType(),
            default="auto",
            show_default=True,
            help="auto: the rank's GPU, else cpu.",
        ),
        click.option(
            "--overwrite", is_flag=True, help="Replace a cache of this tag made otherwise."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    shards = click.option(
        "--shards", "shards_dir", required=True, type=click.Path(), help="Shard set."
    )
    return shards(fn)


def run_cache_command(cache, **kwargs) -> None:
    """Call ``cache`` with the shared options translated; rank 0 prints the summary."""
    from models.cache import summary_lines

    splits = kwargs.pop("splits")
    kwargs["splits"] = tuple(s.strip() for s in splits.split(",")) if splits else None
    kwargs["backend"] = kwargs.pop("loader")
    result = cache(
        kwargs.pop("shards_dir"),
        progress=progress_factory(sys.stderr.isatty()),
        log=lambda m: click.echo(m, err=True),
        **kwargs,
    )
    if result["rank"] == 0:
        for line in summary_lines(result):
            click.echo(line)
        seconds = time.perf_counter() - STARTED
        click.echo(f"the command took {seconds:.1f}s in all (with loading the model)")


@click.command("cache-clip")
@cache_options
@click.option("--model", default="ViT-B-32", show_default=True, type=ModelName("clip"))
@click.option(
    "--pretrained",
    help="open_clip tag, a local checkpoint file, or none (random weights) "
    "[default: laion2b_s34b_b79k for ViT-B-32].",
)
@click.option("--file-tag", help="The open_clip tag a --pretrained file was published as.")
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False),
    help="File of prompt templates, one per line, each with one {} for the class name.",
)
@click.option("--template", "templates", multiple=True, help="A prompt template (repeatable).")
@click.option(
    "--crops",
    type=CropsType(),
    help="gridG: also one embedding per tile of a G x G grid of every training image "
    "(AEVLP's pseudo-labels: grid4).",
)
@expected_errors
def cache_clip_command(prompts, templates, **kwargs):
    """CLIP image and class-text embeddings beside the shards (resumable; DDP under torchrun)."""
    from models.cache import cache_clip, read_templates

    if prompts and templates:
        raise click.UsageError("--prompts and --template exclude each other")
    chosen = read_templates(prompts) if prompts else templates or None
    run_cache_command(cache_clip, templates=chosen, **kwargs)


@click.command("cache-features")
@cache_options
@click.option(
    "--backbone",
    required=True,
    type=ModelName("backbone"),
    help="efficientnet-lite0 (ImageNet weights bundled: offline) or any timm model.",
)
@click.option("--weights", help="A local checkpoint file, or none [default: bundled or hub].")
@click.option(
    "--preset",
    default="cole448",
    show_default=True,
    type=FeaturePreset("preset"),
    help="Geometry of a preset (with the backbone's mean/std), or backbone: its own.",
)
@click.option(
    "--image-size",
    type=click.IntRange(1, 8192),
    help="With --preset backbone [default: the backbone's].",
)
@click.option("--normalize", is_flag=True, help="L2-normalise the features (default: raw).")
@expected_errors
def cache_features_command(**kwargs):
    """Pooled timm backbone features beside the shards (Cole et al.'s linear fixed features)."""
    from models.cache import cache_features

    run_cache_command(cache_features, **kwargs)
