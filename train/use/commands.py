"""The commands that use a trained run: ``predict`` and ``export`` (their logic lives in
train/use/predict.py and train/use/export.py)."""

from __future__ import annotations

import click

from shards.base.clitools import DeviceType, expected_errors

MIN_POSITIVES = click.option(
    "--min-positives",
    type=click.IntRange(1, 10**6),
    default=3,
    show_default=True,
    help="val-f1 thresholds: a class with fewer val positives keeps the global threshold.",
)
MEMBER = click.option(
    "--member", help="A --sweep run's member, e.g. lr=1e-4,batch=8 (train --keep-members)."
)


@click.command("predict")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--run", "run_dir", required=True, type=click.Path(), help="Run folder.")
@click.option(
    "--shards",
    type=click.Path(),
    help="The run's shard set, where it is now; without IMAGES: predict its --split.",
)
@click.option("--split", default="test", show_default=True, help="With --shards, no IMAGES.")
@click.option("--out", default="preds.parquet", show_default=True, help=".parquet or .csv")
@click.option("--threshold", help="A probability, or val-f1 [default: the run's, 0.5].")
@MIN_POSITIVES
@click.option(
    "--top-k",
    type=click.IntRange(0, 10**6),
    default=0,
    help="Label each image with its K most probable classes.",
)
@click.option("--batch-size", type=click.IntRange(1, 2**20), default=32, show_default=True)
@click.option("--device", type=DeviceType(), default="cpu", show_default=True)
@click.option(
    "--on-bad", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
    help="An image that cannot be read: stop, or go on and list it.",
)  # fmt: skip
@click.option("--weights", type=click.Path(), help="Linear runs: the cache encoder's weights file.")
@MEMBER
@expected_errors
def predict_command(images, run_dir, split, out, **options):
    """Label IMAGES (files, folders searched for JPEG/PNG) or a shard set's split with a run
    (a --sweep run: its pick): every class's probability and the predicted labels, in a
    Parquet or CSV table that records where it came from (CSV: OUT.json beside it). Label
    lists are joined by ';' in the CSV and on the terminal."""
    from pipelines.distributed import resolve_device
    from train.runfolder import check_run_data
    from train.use.predict import PredictOptions, predict_lines, run_predict

    options["device"] = str(resolve_device(options["device"]))  # as every command's
    if options["shards"] or not images:  # a shard set's rows: the data the run recorded
        check_run_data(
            run_dir,
            "predict --shards" if options["shards"] else "predict",
            shards=options["shards"],
        )
    result = run_predict(
        run_dir, out, PredictOptions(**options), images=images, split=split, echo=click.echo
    )
    for line in predict_lines(result):
        click.echo(line)


@click.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="Run folder.")
@click.option(
    "--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript",
    show_default=True,
)  # fmt: skip
@click.option("--out", type=click.Path(), help="[default: RUN/model.pt or RUN/model.onnx]")
@click.option(
    "--classes",
    "num_classes",
    type=click.IntRange(1, 10**6),
    help="Fail unless the run has this many.",
)
@click.option("--weights", type=click.Path(), help="Linear runs: the cache encoder's weights file.")
@click.option("--shards", type=click.Path(), help="The run's shard set, where it is now.")
@MEMBER
@MIN_POSITIVES
@expected_errors
def export_command(run_dir, fmt, out, num_classes, **options):
    """Export a run's whole network (normalised float NCHW in, logits out; a --sweep run: its
    pick) with a JSON sidecar (classes, the whole preprocessing, per-class thresholds, where it
    came from) and preprocess.py, the preprocessing in Pillow and numpy for an application."""
    from train.runfolder import check_run_data
    from train.use.export import ExportOptions, export_run

    check_run_data(run_dir, "export", shards=options["shards"])
    options = ExportOptions(num_classes, **options)
    path, sidecar = export_run(run_dir, fmt, out, options, echo=click.echo)
    pre = sidecar["preprocessing"]
    click.echo(f"{fmt} model of {len(sidecar['classes'])} classes: {path} (sidecar {path}.json)")
    click.echo(f"  input {pre['size']}x{pre['size']}: {pre['resize']}")
    click.echo(f"  preprocessing for an application: {path.parent / sidecar['preprocess']}")
