"""The loader benchmark, ``bench loader``; the registries of presets and loader backends."""

from __future__ import annotations

import click

from shards.base.clitools import (
    DeviceType,
    NumberList,
    RegistryChoice,
    choices,
    expected_errors,
    markdown_option,
)


@choices("preset")
def _presets():
    from pipelines.presets import PRESETS

    return PRESETS


@choices("loader")
def _backends():
    from pipelines.loader import BACKENDS

    return BACKENDS


@click.command("loader")
@click.option("--shards", "shards_dir", type=click.Path(), help="Shard set (default: generated).")
@click.option("--preset", default="cole448", show_default=True, type=RegistryChoice("preset"))
@click.option("--batch-size", type=click.IntRange(1, 2**20), default=32, show_default=True)
@click.option(
    "--threads", type=click.IntRange(1, 1024), help="CPU threads (DataLoader workers) per loader."
)
@click.option(
    "--images",
    type=click.IntRange(1, 10**8),
    default=2000,
    show_default=True,
    help="Generated VOC-sized photos.",
)
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep generated files here.")
@click.option(
    "--repeats",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Alternating rounds: epochs timed per loader (3 or more give a median and range).",
)
@click.option("--no-profile", is_flag=True, help="Skip the DALI per-stage profile.")
@click.option(
    "--device", type=DeviceType(), help="cpu or cuda[:N] (default: cuda when there is one)."
)
@click.option(
    "--hw-decoder-load",
    type=NumberList(float, 0, 1),
    default="0.65",
    show_default=True,
    help="GPU only: comma-separated shares of the hardware JPEG decoder to compare.",
)
@markdown_option("loader")
@expected_errors
def bench_loader(
    shards_dir, preset, batch_size, threads, images, workdir, repeats, no_profile, device,
    hw_decoder_load, markdown,
):  # fmt: skip
    """DALI vs the torch fallback vs the papers' folder+PIL loader on the same images,
    alternating (each round runs every loader once): median images/s, each loader's ratio to
    the papers' (median of the rounds' ratios, and their range)."""
    from pipelines.bench import LoaderBenchOptions, loader_tables, run_loader_bench

    options = LoaderBenchOptions(
        preset=preset,
        batch_size=batch_size,
        threads=threads,
        images=images,
        repeats=repeats,
        profile=not no_profile,
        device=device,
        hw_loads=hw_decoder_load,
    )
    result = run_loader_bench(shards_dir, options, workdir=workdir, echo=click.echo)
    if markdown is not None:
        markdown.write(loader_tables(result), gpu=result["gpu"])
