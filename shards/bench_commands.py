"""The shard-set benchmarks' commands: ``bench shard`` (converting against a plain tar) and
``bench openimages-labels`` (Open Images' CSVs to label tables at scale)."""

from __future__ import annotations

import os

import click

from shards.clitools import NumberList, expected_errors


@click.command("shard")
@click.option(
    "--images",
    type=click.IntRange(1, 10**8),
    default=3000,
    show_default=True,
    help="JPEGs in the generated dataset.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Where to generate (default: a temp folder).",
)
@click.option(
    "--workers", type=click.IntRange(1, 1024), default=os.cpu_count() or 1, show_default=True
)
@click.option(
    "--rss-sizes",
    type=NumberList(int, 0, 10**8, count=2),
    default="2000,20000",
    show_default=True,
    help="Two dataset sizes for the peak-memory comparison (0 to skip).",
)
@expected_errors
def bench_shard(images, workdir, workers, rss_sizes):
    """Shard a generated dataset vs a plain `tar cf` of the same files; peak RSS at two sizes."""
    from shards.bench import run_shard_bench

    sizes = tuple(x for x in rss_sizes if x > 0)
    run_shard_bench(images, workdir, workers, sizes, echo=click.echo)


@click.command("openimages-labels")
@click.option(
    "--sizes",
    type=NumberList(int, 1, 10**9),
    default="100000,1000000",
    show_default=True,
    help="Images in the generated train split, one run each.",
)
@click.option(
    "--labels",
    type=click.IntRange(1, 10**4),
    default=8,
    show_default=True,
    help="Human labels per image.",
)
@click.option("--classes", type=click.IntRange(1, 10**6), default=5000, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the generated files here.")
@click.option(
    "--version",
    type=click.Choice(["3", "6"]),
    default="3",
    show_default=True,
    help="Open Images format: V3 (openimages-v3) or V6/V7 (openimages-v6).",
)
@expected_errors
def bench_openimages(sizes, labels, classes, workdir, version):
    """Open Images annotations -> label tables on one core: time and peak RSS at two sizes."""
    from shards.bench_openimages import run_openimages_bench

    run_openimages_bench(
        sizes,
        labels,
        classes,
        workdir,
        echo=click.echo,
        version=int(version),
    )
