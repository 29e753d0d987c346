"""The shard-set benchmarks' commands: ``bench shard`` (converting against a plain tar) and
``bench openimages-labels`` (Open Images' CSVs to label tables at scale)."""

from __future__ import annotations

import os

import click

from shards.base.clitools import NumberList, expected_errors, markdown_option


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
    type=NumberList(int, 0, 10**8),
    default="2000,20000",
    show_default=True,
    help="Dataset sizes for the peak-memory comparison (0: skip it).",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Alternating rounds (tar, tar + fsync, shard, shard --no-fsync each once a round).",
)
@markdown_option("shard")
@expected_errors
def bench_shard(images, workdir, workers, rss_sizes, repeats, markdown):
    """Shard a generated dataset vs a plain `tar cf` of the same files; peak RSS at two sizes."""
    from shards.bench import run_shard_bench, shard_tables

    sizes = tuple(x for x in rss_sizes if x > 0)
    result = run_shard_bench(images, workdir, workers, sizes, echo=click.echo, repeats=repeats)
    if markdown is not None:
        markdown.write(shard_tables(result))


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
@markdown_option("openimages")
@expected_errors
def bench_openimages(sizes, labels, classes, workdir, version, markdown):
    """Open Images annotations -> label tables on one core: time and peak RSS at two sizes."""
    from shards.bench_openimages import openimages_tables, run_openimages_bench

    result = run_openimages_bench(
        sizes,
        labels,
        classes,
        workdir,
        echo=click.echo,
        version=int(version),
    )
    if markdown is not None:
        markdown.write(openimages_tables(result))


@click.command("docs")
@click.option(
    "--tables",
    default="all",
    show_default=True,
    help="Comma-separated: shard, loader, openimages, train-linear, train-sparse, train-e2e, "
    "cache-clip (or all).",
)
@click.option(
    "--doc",
    type=click.Path(dir_okay=False),
    default="docs/performance.md",
    show_default=True,
    help="The doc whose blocks the benches rewrite.",
)
@click.option("--small", is_flag=True, help="Tiny sizes: checks that each bench still runs.")
@click.option("--dry-run", is_flag=True, help="Print the commands, run nothing.")
@expected_errors
def bench_docs(tables, doc, small, dry_run):
    """Regenerate the tables of docs/performance.md, each by the bench that measures it."""
    from pathlib import Path

    from shards.bench_docs import run_bench_docs

    done = run_bench_docs(tables, Path(doc), small=small, dry_run=dry_run, echo=click.echo)
    if done:
        total = sum(d["seconds"] for d in done)
        click.echo(f"{len(done)} block(s) of {doc} regenerated in {total / 60:.1f} min")
