"""The training commands: ``train``, ``eval``, ``leaderboard``, ``methods`` and
``bench train`` (their logic lives in train/run.py and bench/train.py)."""

from __future__ import annotations

import click

from shards.base.clitools import (
    SEED_TYPE,
    FloatRange,
    RegistryChoice,
    choices,
    expected_errors,
    parse_kv,
)
from shards.base.errors import WsmlError
from train.setting_names import SETTINGS


@choices("method")
def _methods():
    from train.methods import METHODS

    return METHODS


@click.command("train")
@click.option("--shards", type=click.Path(), help="Shard set folder.")
@click.option("--method", type=RegistryChoice("method"), help="See `cli.py methods`.")
@click.option("--setting", type=click.Choice(SETTINGS), help="[default: linear]")
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
    from train.run import eval_lines, evaluate_run
    from train.runfolder import check_run_data

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
