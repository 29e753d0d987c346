"""``make bench-docs`` (``cli.py bench docs``): every table of ``docs/performance.md`` regenerated
by the bench command that measures it, at the docs' sizes, each into its own block
(``bench/markdown.py``); ``TABLES=shard,loader`` regenerates a few. Each command runs as its
own process, as a user runs it, so one bench's threads, caches and memory never weigh on the
next; ``--small`` runs every command at tiny sizes (a check that each still runs and writes its
block, not a measurement)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shards.base.errors import WsmlError
from shards.base.registry import Registry

CLI = Path(__file__).resolve().parents[1] / "cli.py"
DOC = Path("docs/performance.md")


@dataclass(frozen=True)
class BenchRun:
    """One bench command writing one block: its arguments after ``cli.py bench`` at the
    docs' sizes, and at ``small`` sizes."""

    block: str
    args: tuple[str, ...]
    small: tuple[str, ...]


@dataclass(frozen=True)
class DocTables:
    """A name of ``make bench-docs TABLES=…``: the runs that regenerate its blocks."""

    name: str
    summary: str
    runs: tuple[BenchRun, ...]


DOC_TABLES: Registry[DocTables] = Registry("bench-docs table")

E2E_SMALL = ("--setting", "e2e", "--backbone", "test_resnet", "--image-size", "32",
             "--images", "48", "--batch-size", "8", "--steps", "2", "--device", "cpu")  # fmt: skip
SPARSE = ("--classes", "5000", "--annotations", "8", "--dim", "512", "--method", "ll-ct,an",
          "--ways", "runs,sweep", "--lrs", "1e-3", "--batches", "256", "--device", "cpu",
          "--repeats", "1")  # fmt: skip
SPARSE_SMALL = ("--rows", "3000,400,600", "--classes", "50", "--annotations", "4", "--dim",
                "8", "--method", "ll-ct,an", "--ways", "runs,sweep", "--lrs", "1e-3",
                "--batches", "64", "--device", "cpu", "--repeats", "1")  # fmt: skip

for entry in (
    DocTables("shard", "cli.py shard against a plain tar cf; its peak RSS", (
        BenchRun("shard-3000", ("shard", "--images", "3000", "--rss-sizes", "0"),
                 ("shard", "--images", "24", "--rss-sizes", "0", "--repeats", "1")),
        BenchRun("shard-10000", ("shard", "--images", "10000"),
                 ("shard", "--images", "24", "--rss-sizes", "20,40", "--repeats", "1")),
    )),
    DocTables("loader", "DALI, the torch fallback and the papers' loader", (
        BenchRun("loader-cole448", ("loader", "--preset", "cole448"),
                 ("loader", "--preset", "cole448", "--images", "96", "--repeats", "1")),
        BenchRun("loader-clip224", ("loader", "--preset", "clip224", "--no-profile"),
                 ("loader", "--preset", "clip224", "--no-profile", "--images", "96",
                  "--repeats", "1")),
    )),
    DocTables("openimages", "Open Images' CSVs to label tables, 0.1 M and 1 M images", (
        BenchRun("openimages-v3", ("openimages-labels",),
                 ("openimages-labels", "--sizes", "2000,4000", "--classes", "50")),
        BenchRun("openimages-v6", ("openimages-labels", "--version", "6", "--classes", "9605"),
                 ("openimages-labels", "--version", "6", "--sizes", "2000,4000",
                  "--classes", "50")),
    )),
    DocTables("train-linear", "Cole's grid at COCO's size: papers' loop, runs, --sweep", (
        BenchRun("train-linear", ("train", "--method", "an,ll-ct,em-apl", "--profile-steps",
                                  "1000"),
                 ("train", "--method", "an,ll-ct,em-apl", "--rows", "320,40,60", "--dim",
                  "16", "--classes", "5", "--repeats", "1", "--profile-steps", "20")),
    )),
    DocTables("train-sparse", "linear training at Open Images' label shape, 0.5 M and 2 M rows", (
        BenchRun("train-sparse-500000", ("train", "--rows", "500000,41620,125436", *SPARSE),
                 ("train", *SPARSE_SMALL)),
        BenchRun("train-sparse-2000000", ("train", "--rows", "2000000,41620,125436", *SPARSE),
                 ("train", *SPARSE_SMALL)),
    )),
    DocTables("train-e2e", "end-to-end training steps on CPU, random weights", (
        BenchRun("train-e2e", ("train", "--setting", "e2e", "--method", "an,oass,hspnet",
                               "--image-size", "224", "--batch-size", "16", "--steps", "5",
                               "--device", "cpu"),
                 ("train", "--method", "an,oass", *E2E_SMALL)),
        BenchRun("train-e2e-resnet101", ("train", "--setting", "e2e", "--method", "an,pu-mlc",
                                         "--backbone", "resnet101", "--image-size", "224",
                                         "--batch-size", "16", "--steps", "5", "--device", "cpu"),
                 ("train", "--method", "an,pu-mlc", *E2E_SMALL)),
        BenchRun("train-e2e-cole448", ("train", "--setting", "e2e", "--method", "an",
                                       "--batch-size", "16", "--steps", "5", "--device", "cpu"),
                 ("train", "--method", "an", *E2E_SMALL)),
        BenchRun("train-e2e-openimages", ("train", "--setting", "e2e", "--method", "an,ll-ct",
                                          "--classes", "5000", "--annotations", "8",
                                          "--image-size", "224", "--batch-size", "16",
                                          "--steps", "5", "--device", "cpu"),
                 ("train", "--method", "an,ll-ct", "--classes", "300", "--annotations", "6",
                  *E2E_SMALL)),
    )),
    DocTables("cache-clip", "CLIP image embedding: loader, model, whole cache run", (
        BenchRun("cache-clip", ("cache-clip",),
                 ("cache-clip", "--model", "wsml-tiny-clip", "--images", "80")),
        BenchRun("cache-clip-1000", ("cache-clip", "--model", "wsml-tiny-clip", "--images",
                                     "1000"),
                 ("cache-clip", "--model", "wsml-tiny-clip", "--images", "80")),
    )),
    DocTables("predict", "predict and its ONNX export against cache-features", (
        BenchRun("predict", ("predict",),
                 ("predict", "--backbone", "test_resnet", "--weights", "none", "--image-size",
                  "32", "--images", "64", "--batch-size", "8", "--repeats", "1")),
    )),
):  # fmt: skip
    DOC_TABLES.register(entry)


def list_runs(names: str) -> list[BenchRun]:
    """The runs of ``names`` (comma-separated names of DOC_TABLES, or ``all``), in order."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen or "all" in chosen:
        chosen = [t.name for t in DOC_TABLES]
    return [run for name in chosen for run in DOC_TABLES.get(name).runs]


def bench_command(run: BenchRun, doc: Path, small: bool) -> list[str]:
    """The command line of ``run`` writing into ``doc`` (as a user would run it)."""
    args = run.small if small else run.args
    return [sys.executable, str(CLI), "bench", *args, "--markdown", f"{doc}#{run.block}"]


def run_bench_docs(
    names: str,
    doc: Path = DOC,
    *,
    small: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """Run the bench commands of ``names`` one after another, each writing its block of
    ``doc``; stop at the first that fails (the blocks written before it stay, each whole).
    Returns each run's block and seconds."""
    from bench.markdown import find_block

    runs = list_runs(names)
    text = Path(doc).read_text(encoding="utf-8") if Path(doc).is_file() else None
    if text is None:
        raise WsmlError(f"{doc} does not exist (--doc names the doc to regenerate)")
    for run in runs:  # every block is there before the first bench starts
        find_block(text, run.block, Path(doc))
    done = []
    for run in runs:
        cmd = bench_command(run, doc, small)
        shown = " ".join(["python", "cli.py", *cmd[2:]])
        echo(f"== {run.block}: {shown}")
        if dry_run:
            continue
        t0 = time.perf_counter()
        code = subprocess.run(cmd).returncode
        if code:
            raise WsmlError(f"bench docs: `{shown}` failed (exit {code}); block {run.block} "
                            "and the ones after it were not regenerated")  # fmt: skip
        done.append({"block": run.block, "seconds": time.perf_counter() - t0})
        echo(f"== {run.block}: {done[-1]['seconds']:.0f} s")
    return done
