"""wsml command line: each command parses, calls one library function, prints a short summary.

``--help`` imports neither torch nor DALI; expected failures print ``Error: ...`` and exit 1.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time

import click

SIZE_RE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?i?b?)?\s*$", re.I)
SIZE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

# PyTorch reads this once, at its first allocation: transparent huge pages for large tensors
# (batches of images), 4x cheaper to touch than 4 KiB pages. See pipelines/__init__.py.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def expected_errors(fn):
    """Turn the project's expected errors into ``Error: ...`` (exit 1) without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from shards.errors import WsmlError

        try:
            return fn(*args, **kwargs)
        except WsmlError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


class RegistryChoice(click.ParamType):
    """A name from one of the project's registries; an unknown one fails listing the choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = kind

    def registry(self):
        return REGISTRIES[self.kind]()

    def convert(self, value, param, ctx):
        reg = self.registry()
        if value in reg:
            return value
        self.fail(reg.unknown_message(value), param, ctx)


def _converters():
    import shards.converters  # noqa: F401  (registers them)
    from shards.source import CONVERTERS

    return CONVERTERS


def _regimes():
    from shards.regimes import REGIMES

    return REGIMES


def _presets():
    from pipelines.presets import PRESETS

    return PRESETS


def _backends():
    from pipelines.loader import BACKENDS

    return BACKENDS


# Imported only when a value is checked, so --help stays light.
REGISTRIES = {
    "dataset": _converters,
    "label regime": _regimes,
    "preset": _presets,
    "loader": _backends,
}


class ModelName(click.ParamType):
    """A CLIP model (open_clip) or backbone (timm) name, checked when the command runs."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"{kind} name"

    def convert(self, value, param, ctx):
        from models.cache import check_model_name
        from shards.errors import WsmlError

        try:
            check_model_name(self.kind, value)
        except WsmlError as e:
            self.fail(str(e), param, ctx)
        return value


class FeaturePreset(RegistryChoice):
    """A registered preset, or ``backbone``: the backbone's own eval preprocessing."""

    def convert(self, value, param, ctx):
        if value == "backbone" or value in self.registry():
            return value
        self.fail(self.registry().unknown_message(value) + ", or backbone", param, ctx)


class PartType(click.ParamType):
    name = "K/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        k, slash, n = str(value).partition("/")
        if slash and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n):
            return int(k), int(n)
        self.fail(f"{value!r} is not K/N with 0 <= K < N, e.g. 0/4", param, ctx)


class ByteSize(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = SIZE_RE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size like 64MB or 1GB", param, ctx)
        unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
        return int(float(m.group(1)) * SIZE_UNITS[unit])


def parse_kv(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="-o")
        out[key.strip()] = value.strip()
    return out


def progress_factory(enabled: bool):
    """A function (description, total) -> tick(n) showing a tqdm bar; silent when not a TTY."""
    from tqdm import tqdm

    bars = []

    def make(desc: str, total: int):
        bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)
        bars.append(bar)
        return bar.update

    return make


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """wsml: weakly supervised multi-label classification on one fast, reproducible pipeline."""


@main.command()
@click.option("--dataset", required=True, type=RegistryChoice("dataset"), help="Source format.")
@click.option("--root", required=True, type=click.Path(), help="Raw dataset folder.")
@click.option("--out", required=True, type=click.Path(), help="Shard set folder to write.")
@click.option("--val-frac", default=0.2, show_default=True, help="Official train -> val fraction.")
@click.option("--split-seed", default=1200, show_default=True)
@click.option("--shuffle-seed", default=1200, show_default=True, help="Seed of the written order.")
@click.option("--shard-size", default="64MB", type=ByteSize(), show_default=True)
@click.option("--shard-samples", default=1000, show_default=True, help="Samples per shard at most.")
@click.option("--max-side", type=int, help="Re-encode images whose longer side exceeds this.")
@click.option("--jpeg-quality", default=90, show_default=True, help="Quality of re-encoded images.")
@click.option(
    "--check",
    type=click.Choice(["header", "decode"]),
    default="header",
    show_default=True,
    help="Structural JPEG check, or a full decode of every image.",
)
@click.option("--on-bad", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option(
    "--max-bad", default=0.01, show_default=True, help="With --on-bad skip: max fraction."
)
@click.option(
    "--regime",
    "regimes",
    multiple=True,
    help="Observed views to make, e.g. single-positive or partial:fraction=0.1, or none "
    "[default: single-positive; none for sources with real unknowns, like Open Images].",
)
@click.option("--workers", default=os.cpu_count() or 1, show_default=True, help="Processes.")
@click.option(
    "--fsync/--no-fsync",
    default=True,
    show_default=True,
    help="Flush each shard to disk before publishing it (--no-fsync: faster, for "
    "scratch disks; a power loss may then damage shards, which verify finds).",
)
@click.option(
    "--part",
    type=PartType(),
    help="K/N: write every N-th shard from the K-th (0-based) "
    "of one machine out of N; then run the same command with --finalize.",
)
@click.option("--finalize", is_flag=True, help="Write tables and manifest once every part is done.")
@click.option("--resume", is_flag=True, help="Require an interrupted conversion to resume.")
@click.option("--overwrite", is_flag=True, help="Replace a shard set already in --out.")
@click.option("-o", "opts", multiple=True, metavar="KEY=VALUE", help="Converter option.")
@expected_errors
def shard(dataset, root, out, workers, fsync, part, finalize, resume, overwrite, opts, **options):
    """Convert a raw dataset into a shard set (tars + DALI indexes + Parquet labels + manifest)."""
    from pathlib import Path

    from shards.convert import convert

    if part and finalize:
        raise click.UsageError("--part and --finalize go in separate runs")
    options["shard_bytes"] = options.pop("shard_size")
    t0 = time.perf_counter()
    manifest = convert(
        dataset,
        Path(root),
        Path(out),
        parse_kv(opts),
        options,
        workers=workers,
        fsync=fsync,
        part=part,
        finalize=finalize,
        resume=resume or None,
        overwrite=overwrite,
        progress=progress_factory(sys.stderr.isatty()),
        log=click.echo,
    )
    elapsed = time.perf_counter() - t0
    if "part" in manifest:  # (a part of a set already complete gets the set's summary)
        click.echo(
            f"part {part[0]}/{part[1]}: {manifest['written']} of its {manifest['shards']} shards "
            f"written ({manifest['total_shards']} in all) in {elapsed:.1f}s; when every part "
            "is done, run the same command with --finalize instead of --part"
        )
        return
    for name, split in manifest["splits"].items():
        nbytes = sum(s["bytes"] for s in split["shards"])
        click.echo(
            f"{name:>6}: {split['num_samples']:>8} images  {len(split['shards']):>4} shards"
            f"  {nbytes / 1e6:9.1f} MB"
        )
    skipped = sum(len(v["skipped"]) for v in manifest["official_splits"].values())
    if skipped:
        click.echo(f"skipped {skipped} bad image(s); listed in manifest.json")
    click.echo(f"{manifest['dataset']} -> {out} in {elapsed:.1f}s")


@main.command()
@click.argument("shards_dir", metavar="DIR", type=click.Path())
@click.argument("regime", type=RegistryChoice("label regime"))
@click.option("--seed", type=int, help="RNG seed (single-positive: 1200, partial: 0).")
@click.option("--fraction", type=float, help="partial: probability that an entry is observed.")
@click.option("--num-pos", type=int, help="single-positive: positives kept per image.")
@click.option("--num-neg", type=int, help="single-positive: negatives kept per image.")
@expected_errors
def observe(shards_dir, regime, seed, fraction, num_pos, num_neg):
    """Add an observed-label view (a label regime) to a shard set; tars are not touched."""
    from shards.regimes import create_regime
    from shards.shardset import open_shard_set
    from shards.views import write_regime_view

    ss = open_shard_set(shards_dir)
    given = dict(seed=seed, fraction=fraction, num_pos=num_pos, num_neg=num_neg)
    r = create_regime(regime, **{k: v for k, v in given.items() if v is not None})
    meta = write_regime_view(ss.root, r, len(ss.classes))
    rows = ", ".join(f"{k} {v['rows']}" for k, v in meta["splits"].items())
    click.echo(f"wrote observed/{meta['view']} ({rows})")


INFO_CLASSES = 40  # a class table longer than this shows the most and least frequent


def _classes_to_show(summary: dict, splits: list[str]) -> list[int]:
    n = len(summary["classes"])
    if n <= INFO_CLASSES:
        return list(range(n))
    total = [sum(summary["splits"][s]["class_frequency"][k] for s in splits) for k in range(n)]
    order = sorted(range(n), key=lambda k: (-total[k], k))
    return order[: INFO_CLASSES // 2] + order[-(INFO_CLASSES // 2) :]


@main.command()
@click.argument("shards_dir", metavar="DIR", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@expected_errors
def info(shards_dir, as_json):
    """Counts per split, classes, positives per image, class frequencies, regimes present."""
    from shards.shardset import open_shard_set, summarize

    s = summarize(open_shard_set(shards_dir))
    if as_json:
        click.echo(json.dumps(s, indent=1))
        return
    groups = s["groups"]
    grouped = f" in {len(set(groups))} groups" if groups else ""
    click.echo(f"{s['dataset']} at {s['root']}: {len(s['classes'])} classes{grouped}")
    for name, sp in s["splits"].items():
        p = sp["positives_per_image"]
        click.echo(
            f"  {name:>5}: {sp['images']:>8} images in {sp['shards']} shards "
            f"({sp['bytes'] / 1e6:.1f} MB); positives/image mean {p['mean']:.2f} "
            f"[{p['min']}, {p['max']}]"
            + (f"; {sp['unknown_entries']} unknown entries" if sp["unknown_entries"] else "")
        )
    names = list(s["splits"])
    shown = _classes_to_show(s, names)
    width = max(len(s["classes"][k]) for k in shown)
    click.echo(f"  {'class':<{width}}  " + "  ".join(f"{n:>7}" for n in names))
    for k in shown:
        counts = "  ".join(f"{s['splits'][n]['class_frequency'][k]:>7}" for n in names)
        click.echo(f"  {s['classes'][k]:<{width}}  {counts}")
    if len(shown) < len(s["classes"]):
        click.echo(
            f"  ... the {INFO_CLASSES // 2} most and least frequent of "
            f"{len(s['classes'])} classes (all with --json)"
        )
    regimes = "".join(f", {k} {v}" for k, v in s["regimes"].items())
    click.echo(f"  regimes: full{regimes}")
    official = ", ".join(
        f"{k} {v['present']} of {v['listed']} present"
        if v["present"] < v["listed"]
        else f"{k} {v['listed']}"
        for k, v in s["official"].items()
    )
    click.echo(f"  official splits: {official}")
    for what in ("skipped", "missing"):
        if any(s[what].values()):
            click.echo(f"  {what}: " + ", ".join(f"{k} {v}" for k, v in s[what].items()))


@main.command()
@click.argument("shards_dir", metavar="DIR", type=click.Path())
@click.option("--workers", default=os.cpu_count() or 1, show_default=True)
@click.option("--no-decode", is_flag=True, help="Skip decoding the images.")
@expected_errors
def verify(shards_dir, workers, no_decode):
    """Re-hash every shard against the manifest, match tar members to label rows, decode images."""
    from shards.shardset import open_shard_set
    from shards.verify import verify_shard_set

    ss = open_shard_set(shards_dir)
    total = sum(ss.split(n)["num_samples"] for n in ss.splits)
    tick = progress_factory(sys.stderr.isatty())("verifying", total)
    problems = verify_shard_set(ss, workers=workers, decode=not no_decode, on_progress=tick)
    if problems:
        for p in problems[:50]:
            click.echo(p, err=True)
        more = " (first 50 shown)" if len(problems) > 50 else ""
        raise click.ClickException(f"{len(problems)} problem(s) in {shards_dir}{more}")
    click.echo(
        f"{shards_dir}: OK ({total} samples, {sum(len(ss.split(n)['shards']) for n in ss.splits)} shards)"
    )


@main.command("demo-data")
@click.option("--out", default="data/raw/digits", show_default=True, type=click.Path())
@click.option("--train", "n_train", default=3000, show_default=True)
@click.option("--val", "n_val", default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@expected_errors
def demo_data(out, n_train, n_val, seed):
    """Write the embedded demo dataset (digit mosaics, COCO layout) from scikit-learn's digits."""
    from shards.demo import write_demo_data

    s = write_demo_data(out, n_train=n_train, n_val=n_val, seed=seed, progress=sys.stderr.isatty())
    click.echo(json.dumps(s))


def cache_options(fn):
    """Options shared by the cache commands (applied in reverse: listed in this order)."""
    options = [
        click.option("--splits", help="Comma-separated splits [default: every split]."),
        click.option("--batch-size", default=128, show_default=True),
        click.option(
            "--chunk-size", default=4096, show_default=True, help="Rows per resumable chunk."
        ),
        click.option(
            "--loader",
            type=click.Choice(["auto", "dali", "torch"]),
            default="auto",
            show_default=True,
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto: the rank's GPU, else cpu."
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


@main.command("cache-clip")
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
@expected_errors
def cache_clip_command(prompts, templates, **kwargs):
    """CLIP image and class-text embeddings beside the shards (resumable; DDP under torchrun)."""
    from models.cache import cache_clip, read_templates

    if prompts and templates:
        raise click.UsageError("--prompts and --template exclude each other")
    chosen = read_templates(prompts) if prompts else templates or None
    run_cache_command(cache_clip, templates=chosen, **kwargs)


@main.command("cache-features")
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
@click.option("--image-size", type=int, help="With --preset backbone [default: the backbone's].")
@click.option("--normalize", is_flag=True, help="L2-normalise the features (default: raw).")
@expected_errors
def cache_features_command(**kwargs):
    """Pooled timm backbone features beside the shards (Cole et al.'s linear fixed features)."""
    from models.cache import cache_features

    run_cache_command(cache_features, **kwargs)


# ---- training (logic in train/cli_support.py) ----


def _methods():
    from train.methods import METHODS

    return METHODS


REGISTRIES["method"] = _methods


@main.command("train")
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
@click.option("--epochs", type=int)
@click.option("--lr", type=float)
@click.option("--batch-size", type=int, help="Global batch (split over DDP ranks).")
@click.option("--seed", type=int)
@click.option("--out", type=click.Path(), help="Run folder [default: runs/METHOD-SETTING-SEED].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start the run in --out again.")
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@click.option("--sweep", is_flag=True, help="linear: Cole's lr x batch grid as one job.")
@click.option("--stop-after-epochs", type=int, hidden=True)  # debug: an interruption
@click.option("-o", "opts", multiple=True, metavar="KEY=VALUE", help="Method or run option.")
@expected_errors
def train_command(opts, **options):
    """Train a method on a shard set (torchrun for DDP); prints the selected epoch's scores.

    -o takes the method's options (`cli.py methods`; lr, batch_size, epochs, schedule, ema,
    stop_patience, … and its own) and run options: head, boostlu_alpha, clip, preset,
    image_size, loader, threshold, eval_batch_size, device, sweep_lrs, sweep_batches.
    """
    from train.cli_support import build_run_config, run_train

    run_train(build_run_config(options, parse_kv(opts), progress=True), echo=click.echo)


@main.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path())
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best")
@expected_errors
def eval_command(run_dir, split, checkpoint):
    """Score a run's checkpoint on a split (clean labels)."""
    from train.cli_support import eval_lines, evaluate_run

    result = evaluate_run(run_dir, split, checkpoint)
    for line in eval_lines(result, split, run_dir):
        click.echo(line)


@main.command("leaderboard")
@click.argument("runs_dir", metavar="DIR", type=click.Path())
@expected_errors
def leaderboard_command(runs_dir):
    """Rank the finished runs under DIR by test mAP; writes leaderboard.md and .json there."""
    from train.leaderboard import write_leaderboard

    _, table = write_leaderboard(runs_dir)
    click.echo(table, nl=False)


@main.command("methods")
def methods_command():
    """The registered methods: regimes they train on, summary, paper."""
    from train.cli_support import methods_lines

    for line in methods_lines():
        click.echo(line)


@main.group()
def bench():
    """Benchmarks (figures printed side by side; not tests)."""


@bench.command("shard")
@click.option("--images", default=3000, show_default=True, help="JPEGs in the generated dataset.")
@click.option("--workdir", type=click.Path(), help="Where to generate (default: a temp folder).")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True)
@click.option(
    "--rss-sizes",
    default="2000,20000",
    show_default=True,
    help="Two dataset sizes for the peak-memory comparison (0 to skip).",
)
@expected_errors
def bench_shard(images, workdir, workers, rss_sizes):
    """Shard a generated dataset vs a plain `tar cf` of the same files; peak RSS at two sizes."""
    from shards.bench import run_shard_bench

    sizes = tuple(int(x) for x in rss_sizes.split(",") if int(x) > 0)
    run_shard_bench(images, workdir, workers, sizes, echo=click.echo)


@bench.command("loader")
@click.option("--shards", "shards_dir", type=click.Path(), help="Shard set (default: generated).")
@click.option("--preset", default="cole448", show_default=True, type=RegistryChoice("preset"))
@click.option("--batch-size", default=32, show_default=True)
@click.option("--threads", type=int, help="CPU threads (DataLoader workers) per loader.")
@click.option("--images", default=2000, show_default=True, help="Generated VOC-sized photos.")
@click.option("--workdir", type=click.Path(), help="Keep generated files here.")
@click.option("--repeats", default=3, show_default=True, help="Epochs timed per loader.")
@click.option("--no-profile", is_flag=True, help="Skip the DALI per-stage profile.")
@click.option("--device", help="cpu or cuda[:N] (default: cuda when there is one).")
@click.option(
    "--hw-decoder-load",
    default="0.65",
    show_default=True,
    help="GPU only: comma-separated shares of the hardware JPEG decoder to compare.",
)
@expected_errors
def bench_loader(
    shards_dir, preset, batch_size, threads, images, workdir, repeats, no_profile, device,
    hw_decoder_load,
):  # fmt: skip
    """DALI vs the torch fallback vs the papers' folder+PIL loader on the same images."""
    from pipelines.bench import run_loader_bench

    run_loader_bench(
        shards_dir,
        preset=preset,
        batch_size=batch_size,
        threads=threads,
        images=images,
        workdir=workdir,
        repeats=repeats,
        profile=not no_profile,
        device=device,
        hw_loads=tuple(float(x) for x in hw_decoder_load.split(",")),
        echo=click.echo,
    )


@bench.command("cache-clip")
@click.option("--shards", "shards_dir", type=click.Path(), help="Shard set (default: generated).")
@click.option("--images", default=128, show_default=True, help="Generated VOC-sized photos.")
@click.option("--model", "models", multiple=True, help="[default: wsml-tiny-clip, ViT-B-32]")
@click.option("--pretrained", default="none", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), default="auto")
@click.option("--device", default="auto", show_default=True)
@click.option("--workdir", type=click.Path(), help="Keep generated files here.")
@expected_errors
def bench_cache_clip(shards_dir, models, loader, **kwargs):
    """Image embedding: loader alone, model alone on a fixed batch, and the whole cache run."""
    from models.cache_bench import run_cache_clip_bench

    models = models or ("wsml-tiny-clip", "ViT-B-32")
    run_cache_clip_bench(shards_dir, models=models, backend=loader, echo=click.echo, **kwargs)


@bench.command("openimages-labels")
@click.option(
    "--sizes",
    default="100000,1000000",
    show_default=True,
    help="Images in the generated train split, one run each.",
)
@click.option("--labels", default=8, show_default=True, help="Human labels per image.")
@click.option("--classes", default=5000, show_default=True)
@click.option("--workdir", type=click.Path(), help="Keep the generated files here.")
@expected_errors
def bench_openimages(sizes, labels, classes, workdir):
    """Open Images annotations -> label tables on one core: time and peak RSS at two sizes."""
    from shards.bench_openimages import run_openimages_bench

    run_openimages_bench(
        tuple(int(x) for x in sizes.split(",")), labels, classes, workdir, echo=click.echo
    )


@bench.command("train-linear")
@click.option("--method", default="an", show_default=True, type=RegistryChoice("method"))
@click.option("--rows", default="65665,16416,40137", show_default=True, help="train,val,test")
@click.option("--dim", default=2048, show_default=True, help="Feature dimension.")
@click.option("--classes", default=80, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@expected_errors
def bench_train_linear(method, rows, dim, classes, batch_size):
    """One linear-setting epoch at COCO's size on synthetic features: train, end, scoring."""
    from train.bench import run_linear_bench

    n = dict(zip(("train", "val", "test"), (int(x) for x in rows.split(",")), strict=True))
    run_linear_bench(
        method, rows=n, dim=dim, classes=classes, batch_size=batch_size, echo=click.echo
    )


if __name__ == "__main__":
    main()
