"""``cli.py bench shard``: shard a generated COCO-layout dataset vs a plain ``tar cf`` of the same
files (throughput, same run, page cache warm), and the conversion's peak RSS at two sizes."""

from __future__ import annotations

import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import (
    format_ratio,
    machine_info,
    peak_rss,
    summarize_ratios,
    warm_page_cache,
)
from bench.markdown import Table
from shards.base.errors import WsmlError
from shards.synth.photos import jpeg_pool, write_coco_dataset

CLI = Path(__file__).resolve().parents[1] / "cli.py"
GOAL_RATIO = 0.55  # shard throughput / tar throughput, default options (issue #24)
GOAL_RATIO_NOFSYNC = 0.7  # the same with --no-fsync
RSS_LIMIT_MB = 50.0  # allowed peak-RSS difference between the two sizes
POOL = 64  # distinct JPEG byte strings; files repeat them under distinct names
# Our own names inside the work folder (only these are ever removed from a given workdir).
DATA = "bench-data"
RSS_DATA = "bench-rss-{n}"
TAR_OUT = "bench-plain.tar"
SHARD_OUT = "bench-shards"


def run_shard_bench(
    images: int,
    workdir: str | None,
    workers: int,
    rss_sizes: tuple[int, ...],
    echo: Callable[[str], None] = print,
    *,
    repeats: int = 3,
    baseline: str | None = None,
) -> dict:
    """Run the benchmark, print its figures and return them as a dict.

    Generated datasets stay in ``workdir`` when it is given (a temporary folder is removed);
    the tar copy and every shard output are removed after each repetition either way.
    ``baseline``: another wsml checkout whose ``cli.py shard`` runs in the same rounds (with
    this interpreter), so two versions are compared on one machine in one run.
    """
    if images < 2 or repeats < 1 or workers < 1:
        raise WsmlError("bench shard needs --images >= 2, --workers >= 1 and repeats >= 1")
    base_cli = _baseline_cli(baseline)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="wsml-bench-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    _remove_ours(work, rss_sizes)
    try:
        result = {"machine": machine_info(), "workdir": str(work), "kept": not own}
        echo(_machine_line(result["machine"], workers))
        result["throughput"] = _throughput(work, images, workers, repeats, echo, base_cli)
        result["rss"] = _rss(work, rss_sizes, workers, echo) if rss_sizes else None
        return result
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _baseline_cli(checkout: str | None) -> Path | None:
    if checkout is None:
        return None
    cli = Path(checkout).resolve() / "cli.py"
    if not cli.is_file() or not (cli.parent / "shards").is_dir():
        raise WsmlError(
            f"--baseline {checkout} is not a wsml checkout (expected cli.py and shards/ in it), "
            "e.g. one made with: git worktree add /tmp/wsml-base <commit>"
        )
    return cli


def _remove_ours(work: Path, rss_sizes: Sequence[int]) -> None:
    names = [DATA, TAR_OUT, SHARD_OUT, *(RSS_DATA.format(n=n) for n in rss_sizes)]
    for p in (work / n for n in names):
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


# ---------------------------------------------------------------- dataset generation


# ---------------------------------------------------------------- throughput


def shard_command(root: Path, out: Path, workers: int, *extra: str, cli: Path = CLI) -> list[str]:
    """What a user runs: ``python cli.py shard`` with default options (plus ``extra``)."""
    args = ["shard", "--dataset", "coco", "--root", str(root), "--out", str(out)]
    return [sys.executable, str(cli), *args, "--workers", str(workers), *extra]


def _run_timed(cmd: list[str], what: str, fsync: Path | None = None) -> float:
    """Seconds to run ``cmd`` (and to fsync its output ``fsync``, like ``tar cf && sync F``).
    It runs in the folder of its script (a checkout's ``cli.py`` imports that checkout)."""
    os.sync()  # start each repetition with no dirty pages of the previous one
    t0 = time.perf_counter()
    cwd = Path(cmd[1]).parent if cmd[0] == sys.executable else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if fsync is not None and not proc.returncode:
        fd = os.open(fsync, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise WsmlError(f"{what} failed (exit {proc.returncode}): {tail}")
    return elapsed


def _compile(checkout: Path) -> None:
    """Byte-compile a checkout's packages, as a user's first run (or pip) does: where
    PYTHONDONTWRITEBYTECODE is set, every timed run would otherwise compile them again."""
    for pkg in sorted(p.parent for p in checkout.glob("*/__init__.py")):
        compileall.compile_dir(pkg, quiet=1)


def _tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _throughput(
    work: Path, images: int, workers: int, repeats: int, echo, base_cli: Path | None = None
) -> dict:
    root, tar_out, out = work / DATA, work / TAR_OUT, work / SHARD_OUT
    t0 = time.perf_counter()
    src_bytes = write_coco_dataset(root, images, jpeg_pool(0, POOL, (440, 520), (330, 400)))
    warm_page_cache(root)
    echo(
        f"generated {images} JPEGs ({src_bytes / 1e6:.1f} MB, mean {src_bytes / images / 1e3:.0f}"
        f" KB) in {root} in {time.perf_counter() - t0:.1f}s; page cache warmed"
    )
    tar_cmd = ["tar", "cf", str(tar_out), "-C", str(root), "train", "val"]
    shards = {"shard": shard_command(root, out, workers)}
    shards["shard_nofsync"] = shard_command(root, out, workers, "--no-fsync")
    if base_cli is not None:
        shards["baseline"] = shard_command(root, out, workers, cli=base_cli)
    for key, cmd in shards.items():  # untimed: each command's modules read (and compiled) once
        if key != "shard_nofsync":
            _compile(Path(cmd[1]).parent)
            _run_timed(cmd, f"{key} (warm-up)")
            shutil.rmtree(out)
    secs: dict[str, list[float]] = {k: [] for k in ("tar", "tar_fsync", *shards)}
    produced = (0, 0)
    for _ in range(repeats):  # alternate, so drifts of the machine hit all alike
        secs["tar"].append(_run_timed(tar_cmd, "tar cf"))
        tar_out.unlink()
        secs["tar_fsync"].append(_run_timed(tar_cmd, "tar cf", fsync=tar_out))
        tar_out.unlink()
        for key, cmd in shards.items():
            secs[key].append(_run_timed(cmd, f"cli.py shard ({key})"))
            if key == "shard":
                produced = _tree_size(out)
            shutil.rmtree(out)
    res = {"images": images, "source_bytes": src_bytes, "workers": workers, "repeats": repeats}
    res.update({k: _figures(v, images, src_bytes) for k, v in secs.items()})
    res["baseline_checkout"] = None if base_cli is None else str(base_cli.parent)
    # images/s against tar's, per round (each round alternates all four): median and range
    res["ratios"] = {
        name: summarize_ratios([t / s for t, s in zip(secs[base], secs[key], strict=True)])
        for name, (key, base) in RATIOS.items()
        if key in secs and base in secs
    }
    res["ratio"] = res["ratios"]["shard"]["median"]
    res["ratio_vs_tar_fsync"] = res["ratios"]["shard_vs_tar_fsync"]["median"]
    res["ratio_nofsync"] = res["ratios"]["shard_nofsync"]["median"]
    res.update(goal_ratio=GOAL_RATIO, meets_goal=res["ratio"] >= GOAL_RATIO)
    res.update(
        goal_ratio_nofsync=GOAL_RATIO_NOFSYNC,
        meets_goal_nofsync=res["ratio_nofsync"] >= GOAL_RATIO_NOFSYNC,
    )
    res["shard_output"] = {"files": produced[0], "bytes": produced[1], "removed": not out.exists()}
    _print_throughput(res, echo)
    return res


def _figures(seconds: list[float], images: int, nbytes: int) -> dict:
    med = statistics.median(seconds)
    return {
        "seconds": seconds,
        "median_s": med,
        "images_per_s": images / med,
        "mb_per_s": nbytes / 1e6 / med,
    }


def _print_throughput(r: dict, echo) -> None:
    echo(
        f"median of {r['repeats']} alternating runs, {r['images']} images, "
        f"{r['source_bytes'] / 1e6:.1f} MB (MB/s of the source JPEG bytes):"
    )
    echo(f"  {'':<26} {'seconds':>8} {'images/s':>9} {'MB/s':>7}   runs (s)")
    rows = (
        ("tar cf (plain copy)", "tar"),
        ("tar cf + fsync (reference)", "tar_fsync"),
        (f"cli.py shard --workers {r['workers']}", "shard"),
        ("  ... --no-fsync", "shard_nofsync"),
        ("  ... of --baseline", "baseline"),
    )
    for name, key in [row for row in rows if row[1] in r]:
        f = r[key]
        runs = " ".join(f"{s:.2f}" for s in f["seconds"])
        echo(
            f"  {name:<26} {f['median_s']:>8.2f} {f['images_per_s']:>9.0f} "
            f"{f['mb_per_s']:>7.1f}   {runs}"
        )
    verdict = "meets" if r["meets_goal"] else "BELOW"
    verdict_nofsync = "meets" if r["meets_goal_nofsync"] else "BELOW"
    ratio = {k: format_ratio(v, "") for k, v in r["ratios"].items()}
    echo(
        f"  ratio shard/tar (median of the rounds, range): {ratio['shard']} ({verdict} the goal "
        f">= {r['goal_ratio']}); shard/(tar + fsync): {ratio['shard_vs_tar_fsync']}; "
        f"shard --no-fsync/tar: {ratio['shard_nofsync']} ({verdict_nofsync} the goal >= "
        f"{r['goal_ratio_nofsync']})"
    )
    if "baseline" in r:
        echo(
            f"  baseline: {r['baseline_checkout']}; its shard/tar: {ratio['baseline']}; "
            f"this checkout's speed over the baseline's: {ratio['shard_vs_baseline']}"
        )


ROWS = (
    ("`tar cf` (plain copy, not flushed to disk)", "tar"),
    ("`tar cf` + fsync", "tar_fsync"),
    ("`cli.py shard` (default: every shard fsynced)", "shard"),
    ("`cli.py shard --no-fsync`", "shard_nofsync"),
    ("`cli.py shard` of the `--baseline` checkout", "baseline"),
)
# ratio -> (contender, base): the base's time over the contender's, its images/s over the base's
RATIOS = {
    "tar_fsync": ("tar_fsync", "tar"),
    "shard": ("shard", "tar"),
    "shard_nofsync": ("shard_nofsync", "tar"),
    "shard_vs_tar_fsync": ("shard", "tar_fsync"),
    "baseline": ("baseline", "tar"),
    "shard_vs_baseline": ("shard", "baseline"),
}


def shard_tables(r: dict) -> list[Table]:
    """The bench's figures as the docs' tables: throughput against tar, peak RSS."""
    t = r["throughput"]
    head = f"{t['images']:,} JPEGs, {t['source_bytes'] / 1e6:.0f} MB"
    rows = []
    for name, key in [row for row in ROWS if row[1] in t]:
        f = t[key]
        ratio = "1.00" if key == "tar" else format_ratio(t["ratios"][key], "")
        if key == "shard":
            first, _, rest = ratio.partition(" ")
            ratio = f"**{first}** {rest}".strip()
        rows.append((name, f"{f['median_s']:.2f}", f"{f['images_per_s']:,.0f}",
                     f"{f['mb_per_s']:,.0f}", ratio))  # fmt: skip
    caption = (
        f"Median of {t['repeats']} alternating rounds, `--workers {t['workers']}`; the ratio "
        "is the median of each round's ratio (range in brackets)."
    )
    tables = [Table((head, "seconds", "images/s", "MB/s", "vs plain tar"), tuple(rows), caption)]
    m = r.get("rss")
    if m:
        lo, hi = m["sizes"]
        rows = []
        for w, d in m["diff_mb"].items():
            a, b = (next(x for x in m["runs"] if x["images"] == n and x["workers"] == w)
                    for n in (lo, hi))  # fmt: skip
            rows.append((f"`--workers {w}`, largest process", f"{a['process_mb']:.0f}",
                         f"{b['process_mb']:.0f}", f"{d['process_mb']:+.0f}"))  # fmt: skip
            if d["tree_mb"] is not None:
                rows.append((f"`--workers {w}`, process tree (PSS)", f"{a['tree_mb']:.0f}",
                             f"{b['tree_mb']:.0f}", f"{d['tree_mb']:+.0f}"))  # fmt: skip
        head = ("peak RSS of `cli.py shard` (48-80 px JPEGs), MB", f"{lo:,} images",
                f"{hi:,} images", "growth")  # fmt: skip
        tables.append(Table(head, tuple(rows)))
    return tables


# ---------------------------------------------------------------- peak memory


# A child's ru_maxrss starts at its parent's RSS when it was forked (Linux keeps the high-water
# mark across exec), so the command is started from this small launcher, not from the bench's
# own (large) process: what it reports is the command's peak, give or take the launcher's ~10 MB.
def _rss(work: Path, sizes: Sequence[int], workers: int, echo) -> dict:
    pool = jpeg_pool(1, POOL, (48, 80), (48, 80))
    runs = []
    for n in sizes:
        root = work / RSS_DATA.format(n=n) / "raw"
        write_coco_dataset(root, n, pool, seed=n)
        for w in sorted({1, workers}):
            out = root.parent / "shards"
            runs.append({"images": n, "workers": w, **peak_rss(shard_command(root, out, w))})
            shutil.rmtree(out)
    lo, hi = min(sizes), max(sizes)
    diffs = {}
    for w in sorted({1, workers}):
        a, b = (next(r for r in runs if r["images"] == n and r["workers"] == w) for n in (lo, hi))
        tree = None if a["tree_mb"] is None else b["tree_mb"] - a["tree_mb"]
        diffs[w] = {"process_mb": b["process_mb"] - a["process_mb"], "tree_mb": tree}
    ok = all(
        d["process_mb"] < RSS_LIMIT_MB and (d["tree_mb"] or 0) < RSS_LIMIT_MB
        for d in diffs.values()
    )
    res = {
        "sizes": [lo, hi],
        "runs": runs,
        "diff_mb": diffs,
        "limit_mb": RSS_LIMIT_MB,
        "meets_goal": ok,
    }
    _print_rss(res, echo)
    return res


def _print_rss(r: dict, echo) -> None:
    echo("peak RSS of `cli.py shard` (48-80 px JPEGs), MB: largest process / tree (PSS)")
    for x in r["runs"]:
        tree = "n/a" if x["tree_mb"] is None else f"{x['tree_mb']:.1f}"
        echo(
            f"  {x['images']:>8} images  --workers {x['workers']:<3} {x['process_mb']:>7.1f} /"
            f" {tree:>7}   ({x['seconds']:.1f}s)"
        )
    lo, hi = r["sizes"]
    for w, d in r["diff_mb"].items():
        tree = "n/a" if d["tree_mb"] is None else f"{d['tree_mb']:+.1f}"
        echo(f"  growth {lo} -> {hi}, --workers {w}: {d['process_mb']:+.1f} / {tree} MB")
    verdict = "under" if r["meets_goal"] else "NOT under"
    echo(f"  {verdict} the {r['limit_mb']:.0f} MB limit")


# ---------------------------------------------------------------- machine


def _machine_line(m: dict, workers: int) -> str:
    return (
        f"machine: {m['cpu']}, nproc {m['nproc']} (cpu_count {m['cpu_count']}), "
        f"{m['ram_gb']:.1f} GB RAM, Python {m['python']}, {m['tar']}; workers {workers}"
    )
