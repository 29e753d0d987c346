"""wsml command line: each command parses, calls one library function, prints a short summary.

The commands live beside what they drive (``shards/commands.py``, ``models/commands.py``,
``train/commands.py``, ``train/use/commands.py``; the benchmarks' in ``bench/commands.py``);
this file gathers them. ``--help`` imports neither torch nor DALI; expected failures print
``Error: ...`` and exit 1.
"""

from __future__ import annotations

import os
import sys

# PyTorch reads this once, at its first allocation: transparent huge pages for large tensors
# (batches of images), 4x cheaper to touch than 4 KiB pages. See pipelines/__init__.py.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import click  # noqa: E402

import pipelines.commands  # noqa: E402, F401  (registers the preset and loader choices)
from bench import commands as bench_commands  # noqa: E402
from models import commands as models_commands  # noqa: E402
from shards import commands as shards_commands  # noqa: E402
from shards.base.clitools import check_text_args  # noqa: E402
from train import commands as train_commands  # noqa: E402
from train.use import commands as use_commands  # noqa: E402


class Main(click.Group):
    """The command group: every argument is checked to be valid UTF-8 before any command
    parses it (``shards.base.clitools.check_text_args``)."""

    def parse_args(self, ctx, args):
        check_text_args(args)
        return super().parse_args(ctx, args)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """wsml: weakly supervised multi-label classification on one fast, reproducible pipeline."""


@main.group()
def bench():
    """Benchmarks (figures printed side by side; not tests)."""


for command in (
    shards_commands.shard,
    shards_commands.observe,
    shards_commands.info,
    shards_commands.verify,
    shards_commands.audit,
    shards_commands.demo_data,
    models_commands.cache_clip_command,
    models_commands.cache_features_command,
    train_commands.train_command,
    train_commands.eval_command,
    train_commands.leaderboard_command,
    train_commands.report_command,
    train_commands.methods_command,
    use_commands.predict_command,
    use_commands.export_command,
):
    main.add_command(command)
for command in bench_commands.COMMANDS:
    bench.add_command(command)


def end_rank(code) -> None:
    """A torchrun rank exits without the interpreter's finalization: gloo keeps its run-loop
    threads alive past ``destroy_process_group``, and one that runs into finalization ends the
    process with ``std::terminate`` (SIGABRT, "terminate called without an active exception"),
    so a finished DDP run could exit non-zero (tests/support/ddp_methods_worker.py says how)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):  # a torchrun rank
        try:
            main()
        except SystemExit as e:  # click's standalone mode always ends here
            if e.code not in (None, 0) and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
            end_rank(e.code)
    else:
        main()
