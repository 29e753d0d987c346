"""The commands over raw datasets and shard sets: shard, observe, info, verify, audit and
demo-data (their benchmarks are ``bench/commands.py``'s)."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from shards.base.clitools import (
    SEED_TYPE,
    ByteSize,
    FloatRange,
    PartType,
    RegistryChoice,
    choices,
    expected_errors,
    parse_kv,
    progress_factory,
)


@choices("dataset")
def _converters():
    import shards.converters  # noqa: F401  (registers them)
    from shards.convert.source import CONVERTERS

    return CONVERTERS


@choices("label regime")
def _regimes():
    from shards.regimes import REGIMES

    return REGIMES


def check_regime_specs(ctx, param, specs: tuple[str, ...]) -> tuple[str, ...]:
    """Click callback: every ``--regime`` spec parses (or is ``none``), else a usage error."""
    from shards.base.errors import WsmlError
    from shards.regimes import parse_regime_spec

    for spec in specs:
        if spec != "none":
            try:
                parse_regime_spec(spec)
            except WsmlError as e:
                raise click.BadParameter(str(e), ctx, param) from None
    return specs


@click.command()
@click.option("--dataset", required=True, type=RegistryChoice("dataset"), help="Source format.")
@click.option("--root", required=True, type=click.Path(), help="Raw dataset folder.")
@click.option("--out", required=True, type=click.Path(), help="Shard set folder to write.")
@click.option(
    "--val-frac",
    type=FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Official train -> val fraction.",
)
@click.option("--split-seed", type=SEED_TYPE, default=1200, show_default=True)
@click.option(
    "--shuffle-seed",
    type=SEED_TYPE,
    default=1200,
    show_default=True,
    help="Seed of the written order.",
)
@click.option("--shard-size", default="64MB", type=ByteSize(), show_default=True)
@click.option(
    "--shard-samples",
    type=click.IntRange(1, 10**9),
    default=1000,
    show_default=True,
    help="Samples per shard at most.",
)
@click.option(
    "--max-side",
    type=click.IntRange(1, 65535),
    help="Re-encode images whose longer side exceeds this.",
)
@click.option(
    "--jpeg-quality",
    type=click.IntRange(1, 100),
    default=90,
    show_default=True,
    help="Quality of re-encoded images.",
)
@click.option(
    "--check",
    type=click.Choice(["header", "decode"]),
    default="header",
    show_default=True,
    help="Structural JPEG check, or a full decode of every image.",
)
@click.option("--on-bad", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option(
    "--max-bad",
    type=FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="With --on-bad skip: max fraction.",
)
@click.option(
    "--regime",
    "regimes",
    multiple=True,
    callback=check_regime_specs,
    help="Observed views to make, e.g. single-positive or partial:fraction=0.1, or none "
    "[default: single-positive; none for sources with real unknowns, like Open Images].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=os.cpu_count() or 1,
    show_default=True,
    help="Processes.",
)
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

    from shards.convert.convert import convert

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
    click.echo(class_line(manifest["classes"]))
    skipped = sum(len(v["skipped"]) for v in manifest["official_splits"].values())
    if skipped:
        click.echo(f"skipped {skipped} bad image(s); listed in manifest.json")
    click.echo(f"{manifest['dataset']} -> {out} in {elapsed:.1f}s")


def class_line(classes: list[str], shown: int = 10) -> str:
    """How many classes and the first names, so that a file read wrongly shows at once."""
    more = ", … (all in manifest.json)" if len(classes) > shown else ""
    return f"{len(classes)} classes: {', '.join(classes[:shown])}{more}"


@click.command()
@click.argument("shards_dir", metavar="DIR", type=click.Path())
@click.argument("regime", type=RegistryChoice("label regime"))
@click.option("--seed", type=SEED_TYPE, help="RNG seed (single-positive: 1200, partial: 0).")
@click.option(
    "--fraction",
    type=FloatRange(0, 1, min_open=True),
    help="partial: probability that an entry is observed.",
)
@click.option(
    "--num-pos", type=click.IntRange(1, 10**6), help="single-positive: positives kept per image."
)
@click.option(
    "--num-neg", type=click.IntRange(0, 10**6), help="single-positive: negatives kept per image."
)
@click.option(
    "--bias",
    type=click.Choice(["uniform", "size", "location", "semantic"]),
    help="single-positive: how the kept positive is drawn (Arroyo et al. 2023) [uniform].",
)
@click.option(
    "--class-weights",
    type=click.Path(),
    help="--bias semantic: JSON object of class name -> weight.",
)
@click.option(
    "--flip-pos",
    type=FloatRange(0, 1),
    help="noisy: probability that a positive turns negative.",
)
@click.option(
    "--flip-neg",
    type=FloatRange(0, 1),
    help="noisy: probability that a negative turns positive.",
)
@expected_errors
def observe(shards_dir, regime, seed, fraction, num_pos, num_neg, bias, class_weights, **flips):
    """Add an observed-label view (a label regime) to a shard set; tars are not touched."""
    from shards.base.fileio import folder_lock
    from shards.bias import read_class_weights
    from shards.regimes import create_regime
    from shards.shardset import open_shard_set
    from shards.views import write_regime_view

    ss = open_shard_set(shards_dir)
    weights = read_class_weights(class_weights, ss.classes) if class_weights else None
    given = dict(seed=seed, fraction=fraction, num_pos=num_pos, num_neg=num_neg, bias=bias)
    given.update(class_weights=weights, **flips)
    r = create_regime(regime, **{k: v for k, v in given.items() if v is not None})
    with folder_lock(ss.root):  # one writer of a shard set: shard (--overwrite), observe
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


@click.command()
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


@click.command()
@click.argument("shards_dir", metavar="DIR", type=click.Path())
@click.option(
    "--workers", type=click.IntRange(1, 1024), default=os.cpu_count() or 1, show_default=True
)
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


@click.command()
@click.argument("shards_dir", metavar="DIR", type=click.Path())
@click.option(
    "--workers", type=click.IntRange(1, 1024), default=os.cpu_count() or 1, show_default=True
)
@click.option(
    "--no-decode",
    is_flag=True,
    help="Skip the full decode of every image (tars still checked; uncached hashes still decode "
    "each image once at reduced scale).",
)
@click.option(
    "--near-dup-bits",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="64-bit perceptual hashes at most this many bits apart: a near-duplicate (a warning).",
)
@click.option(
    "--near-dup-fail-bits",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="At most this many bits apart, with 256-bit hashes at most --near-dup-fine-bits "
    "apart: a copy (the audit fails).",
)
@click.option(
    "--near-dup-fine-bits",
    type=click.IntRange(0, 256),
    default=24,
    show_default=True,
    help="See --near-dup-fail-bits (256: the 64-bit hash alone decides).",
)
@expected_errors
def audit(shards_dir, workers, no_decode, near_dup_bits, near_dup_fail_bits, near_dup_fine_bits):
    """Check a shard set for leakage: images shared across splits, views against their clean
    labels, tables against tars, classes without positives; writes audit.json."""
    from shards.audit import AUDIT, AuditOptions, audit_shard_set, console_lines, save_audit
    from shards.shardset import open_shard_set

    if near_dup_fail_bits > near_dup_bits:
        raise click.BadParameter(
            f"{near_dup_fail_bits} is more than --near-dup-bits {near_dup_bits}",
            param_hint="--near-dup-fail-bits",
        )
    ss = open_shard_set(shards_dir)
    total = sum(ss.split(n)["num_samples"] for n in ss.splits)
    tick = progress_factory(sys.stderr.isatty())("auditing", total)
    options = AuditOptions(
        workers, not no_decode, near_dup_bits, near_dup_fail_bits, near_dup_fine_bits
    )
    result = audit_shard_set(ss, options, on_progress=tick)
    report = result.report
    for line in console_lines(report, ss.root):
        click.echo(line)
    unsaved = save_audit(ss, result)  # after every result is printed: storage may be read-only
    for what in unsaved:
        click.echo(f"warning: could not save {what}", err=True)
    where = f"see {ss.root / AUDIT}" if not unsaved else "the report above was not saved"
    if report["failures"]:
        raise click.ClickException(
            f"{len(report['failures'])} hard failure(s) in {shards_dir}; {where}"
        )
    views = ", ".join(report["checks"]["views"]) or "none"
    click.echo(
        f"{shards_dir}: audit OK ({total} samples; views checked: {views}; "
        f"{len(report['warnings'])} warning(s)); "
        + (f"report in {ss.root / AUDIT}" if not unsaved else "report not saved")
    )


@click.command("demo-data")
@click.option("--out", default="data/raw/digits", show_default=True, type=click.Path())
@click.option("--train", "n_train", type=click.IntRange(1, 10**7), default=3000, show_default=True)
@click.option("--val", "n_val", type=click.IntRange(1, 10**7), default=1000, show_default=True)
@click.option("--seed", type=SEED_TYPE, default=0, show_default=True)
@expected_errors
def demo_data(out, n_train, n_val, seed):
    """Write the embedded demo dataset (digit mosaics, COCO layout) from scikit-learn's digits."""
    from shards.synth.digits import write_demo_data

    s = write_demo_data(out, n_train=n_train, n_val=n_val, seed=seed, progress=sys.stderr.isatty())
    click.echo(json.dumps(s))
