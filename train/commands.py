"""The training commands: ``train``, ``eval``, ``leaderboard``, ``methods`` and
``bench train`` (their logic lives in train/run.py and train/bench.py)."""

from __future__ import annotations

import click

from shards.base.clitools import (
    SEED_TYPE,
    DeviceType,
    FloatRange,
    NumberList,
    RegistryChoice,
    choices,
    expected_errors,
    markdown_option,
    parse_kv,
)
from shards.base.errors import WsmlError


@choices("method")
def _methods():
    from train.methods import METHODS

    return METHODS


@click.command("train")
@click.option("--shards", type=click.Path(), help="Shard set folder.")
@click.option("--method", type=RegistryChoice("method"), help="See `cli.py methods`.")
@click.option("--setting", type=click.Choice(["linear", "e2e"]), help="[default: linear]")
@click.option("--regime", help="Observed view [default: single-positive; full for bce].")
@click.option("--features", help="linear: cached features or embeddings tag.")
@click.option("--clip", help="CLIP cache (image + class-text embeddings) for vlpl.")
@click.option("--backbone", help="e2e: timm name or efficientnet-lite0 [default: resnet50].")
@click.option("--weights", help="e2e: a local weights file, or none [default: pretrained].")
@click.option(
    "--head",
    type=click.Choice(["linear", "cam"]),
    help="e2e: cam = CAM head (BoostLU with -o boostlu_alpha=5) [default: linear].",
)
@click.option("--epochs", type=click.IntRange(1, 10_000))
@click.option("--lr", type=FloatRange(0, 1e3, min_open=True))
@click.option(
    "--batch-size", type=click.IntRange(1, 2**20), help="Global batch (split over DDP ranks)."
)
@click.option("--seed", type=SEED_TYPE)
@click.option("--seeds", help="Several seeds, e.g. 0,1,2: one run folder each, OUT-s0, OUT-s1, ….")
@click.option("--view-seeds", help="Several draws of the observed labels, e.g. 0,1 (draw 0: the "
              "view itself): one run folder each, OUT-v0, OUT-v1, ….")  # fmt: skip
@click.option("--out", type=click.Path(), help="Run folder [default: runs/METHOD-SETTING-SEED].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start the run in --out again.")
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@click.option("--sweep", is_flag=True, help="linear: Cole's lr x batch grid as one job.")
@click.option(
    "--keep-members", is_flag=True, help="--sweep: keep every member's weights (predict --member)."
)
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard logs in the run folder.")
@click.option(
    "--stop-after-epochs", type=click.IntRange(0, 10_000), hidden=True
)  # debug: an interruption
@click.option("-o", "opts", multiple=True, metavar="KEY=VALUE", help="Method or run option.")
@expected_errors
def train_command(opts, seeds, view_seeds, **options):
    """Train a method on a shard set (torchrun for DDP); prints the selected epoch's scores.

    -o takes the method's options (`cli.py methods`; lr, batch_size, epochs, schedule, ema,
    stop_patience, … and its own) and run options: head, boostlu_alpha, clip, preset,
    image_size, loader, threshold, eval_batch_size, device, sweep_lrs, sweep_batches.
    """
    from train.run import create_run_config, run_train
    from train.seeds import create_grid_configs, parse_seeds

    grid = {}
    for name, text in (("--seeds", seeds), ("--view-seeds", view_seeds)):
        try:
            grid[name] = parse_seeds(text)
        except WsmlError as e:
            raise click.BadParameter(str(e).replace("--seeds", name), param_hint=name) from None
    if grid["--seeds"] and options.get("seed") is not None:
        raise click.UsageError("give --seed or --seeds, not both")
    if not grid["--seeds"] and not grid["--view-seeds"]:
        configs = [create_run_config(options, parse_kv(opts), progress=True)]
    else:
        configs = create_grid_configs(
            options, parse_kv(opts), grid["--seeds"], grid["--view-seeds"]
        )
    for one in configs:
        run_train(one, echo=click.echo)


@click.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path())
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best")
@expected_errors
def eval_command(run_dir, split, checkpoint):
    """Score a run's checkpoint on a split (clean labels)."""
    from train.integrity import check_run_data
    from train.run import eval_lines, evaluate_run

    check_run_data(run_dir, "eval")
    result = evaluate_run(run_dir, split, checkpoint)
    for line in eval_lines(result, split, run_dir):
        click.echo(line)


@click.command("leaderboard")
@click.argument("runs_dir", metavar="DIR", type=click.Path())
@expected_errors
def leaderboard_command(runs_dir):
    """Rank the finished runs under DIR by test mAP; writes leaderboard.md and .json there."""
    from train.leaderboard import write_leaderboard

    unsaved: list[str] = []
    _, table = write_leaderboard(runs_dir, unsaved)
    click.echo(table, nl=False)
    for line in unsaved:  # the table is the result: printed, and exit 0
        click.echo(f"Warning: {line}", err=True)


@click.command("report")
@click.argument("runs_dirs", metavar="RUNS_DIR...", nargs=-1, required=True, type=click.Path())
@click.option("--out", default="report", show_default=True, type=click.Path(), help="Folder.")
@click.option("--paper-numbers/--no-paper-numbers", default=True, show_default=True,
              help="The papers' test mAP and the difference, where they match.")  # fmt: skip
@click.option("--overwrite", is_flag=True,
              help="Write into an --out folder that holds no wsml report (its files are kept).")  # fmt: skip
@expected_errors
def report_command(runs_dirs, out, paper_numbers, overwrite):
    """A static page of the runs under RUNS_DIR...: grouped leaderboard with confidence
    intervals and paired comparisons, learning curves, per-class AP, precision-recall curves,
    label state against the truth, seeds against label draws, provenance; writes
    OUT/index.html (figures beside it as PNG, SVG and PDF) and OUT/report.md into a new folder
    swapped in at the end, and prints the page's path."""
    from train.report.write import write_report

    path = write_report(list(runs_dirs), out, paper_numbers, overwrite)
    click.echo(str(path))


@click.command("methods")
def methods_command():
    """The registered methods: regimes they train on, summary, paper."""
    from train.run import methods_lines

    for line in methods_lines():
        click.echo(line)


@click.command("train")
@click.option(
    "--setting", type=click.Choice(["linear", "e2e"]), default="linear", show_default=True
)
@click.option("--method", "methods", default="an", show_default=True, help="Comma-separated.")
@click.option(
    "--rows",
    type=NumberList(int, 1, 10**9, count=3),
    default="65665,16416,40137",
    show_default=True,
    help="linear: train,val,test rows.",
)
@click.option(
    "--dim",
    type=click.IntRange(1, 2**16),
    default=2048,
    show_default=True,
    help="linear: feature dimension.",
)
@click.option(
    "--classes",
    type=click.IntRange(1, 10**6),
    default=80,
    show_default=True,
    help="linear: number of classes; e2e: of the generated photos' labels, with --annotations.",
)
@click.option(
    "--annotations",
    type=FloatRange(0, 1e4),
    default=0.0,
    help="OpenImages-shaped ragged labels, about this many an image (60% positive) over "
    "--classes; linear: features memory-mapped from disk; e2e: the generated photos in Open "
    "Images V3 format.",
)
@click.option(
    "--ways",
    default="papers,runs,sweep",
    show_default=True,
    help="linear: the ways timed (papers, runs, sweep).",
)
@click.option(
    "--lrs",
    type=NumberList(float, 0, 1e3, lo_open=True),
    default="1e-2,1e-3,1e-4,1e-5",
    show_default=True,
    help="linear: grid lrs.",
)
@click.option(
    "--batches",
    type=NumberList(int, 1, 2**20),
    default="8,16",
    show_default=True,
    help="linear: grid batch sizes.",
)
@click.option("--paper-steps", type=click.IntRange(0, 10**9), default=0, help="linear: time this many steps of each papers'-way "
              "epoch and extrapolate (0: whole epochs).")  # fmt: skip
@click.option("--shards", type=click.Path(), help="e2e: a shard set [default: generated photos].")
@click.option(
    "--images",
    type=click.IntRange(1, 10**8),
    default=256,
    show_default=True,
    help="e2e: photos to generate.",
)
@click.option("--backbone", help="e2e: [default: the method's, else resnet50].")
@click.option("--preset", help="e2e: [default: the method's, else cole448].")
@click.option(
    "--image-size",
    type=click.IntRange(0, 8192),
    default=0,
    help="e2e: centre crop of this size instead of a preset.",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 2**20), default=32, show_default=True, help="e2e."
)
@click.option(
    "--steps",
    type=click.IntRange(1, 10**9),
    default=20,
    show_default=True,
    help="e2e: timed steps per method.",
)
@click.option("--regime", help="e2e: observed view [default: the method's].")
@click.option("--loader", default="auto", show_default=True, help="e2e: dali, torch or auto.")
@click.option("--device", type=DeviceType(), default="auto", show_default=True)
@click.option("--compile", is_flag=True, help="e2e: torch.compile the model.")
@click.option("-o", "opts", multiple=True, metavar="KEY=VALUE", help="e2e: method options.")
@click.option(
    "--repeats",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="linear: alternating rounds of the ways (3 or more give a median and range).",
)
@click.option(
    "--profile-steps",
    type=click.IntRange(0, 10**6),
    default=0,
    help="linear: then time the parts of this many steps of each sweep group (0: no profile).",
)
@markdown_option("train")
@expected_errors
def bench_train(
    setting, methods, rows, dim, classes, paper_steps, opts, repeats, profile_steps, markdown, **e2e
):
    """Trainer figures side by side. linear: one epoch of Cole's lr x batch grid three ways
    (papers' per-sample loop one by one, wsml runs one by one, --sweep), alternating, each
    way's median and its ratio to the sweep (median of the rounds, range). e2e: images/s, ms
    per step and data-wait share of each method's training steps (random weights)."""
    from train.bench_tables import e2e_tables, linear_tables
    from train.methods import get_method

    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    for name in names:
        get_method(name)  # unknown names fail here, listing the methods
    grid = {k: e2e.pop(k) for k in ("annotations", "ways", "lrs", "batches")}
    if setting == "linear":
        from train.bench import LinearBenchOptions, run_linear_bench

        ways = tuple(w.strip() for w in grid["ways"].split(",") if w.strip())
        if not ways or set(ways) - {"papers", "runs", "sweep"}:
            raise click.BadParameter(
                f"{grid['ways']!r}: choose from papers, runs, sweep", param_hint="--ways"
            )
        options = LinearBenchOptions(
            names, rows=dict(zip(("train", "val", "test"), rows, strict=True)), dim=dim, classes=classes, paper_steps=paper_steps,
            device=e2e["device"], annotations=grid["annotations"], ways=ways,
            lrs=tuple(grid["lrs"]), batches=tuple(grid["batches"]), repeats=repeats,
            profile_steps=profile_steps,
        )  # fmt: skip
        result = run_linear_bench(options, echo=click.echo)
        if markdown is not None:
            markdown.write(linear_tables(result), gpu=result["gpu"])
        return
    from train.bench import E2EBenchOptions, run_e2e_bench

    shards = e2e.pop("shards")
    shape = {"classes": classes, "annotations": grid["annotations"]}
    options = E2EBenchOptions(methods=names, method_options=parse_kv(opts), **shape, **e2e)
    result = run_e2e_bench(shards, options, echo=click.echo)
    if markdown is not None:
        markdown.write(e2e_tables(result), gpu=result["gpu"])
