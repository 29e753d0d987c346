"""Run by test_train_ddp_methods.py under ``torchrun --nproc_per_node=2`` (gloo on the CPU):
one process group, and in it a short linear run of every method named, into ``OUT/<method>``.

It ends with ``os._exit`` once its runs are written and the group is destroyed: DDP keeps
gloo's run-loop threads alive past ``destroy_process_group`` (shown by their names in
/proc/self/task), so they run on into the interpreter's finalization, where a C++ thread that
still holds a finished collective's tensors needs the interpreter, which CPython 3.11 answers
with ``pthread_exit``; its forced unwind through a ``noexcept`` frame is ``std::terminate``:
"terminate called without an active exception" (SIGABRT) on a rank, the more likely the later
those threads run, i.e. on a loaded machine (issue 23).

usage: torchrun --standalone --nproc_per_node=2 tests/support/ddp_methods_worker.py SHARDS OUT METHOD…
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from tests.support.train_fixtures import CLIP, FEAT
from train.config import RunConfig
from train.run import train

OPTS = {"epochs": "2", "lr": "0.01", "stop_patience": "0", "stop_drop": "0"}


def method_config(shards: str, method: str, out: Path) -> RunConfig:
    """The contract's run of ``method``: 2 epochs on the tiny set (CLIP cache for VLPL; its
    2 x 2 tiles for AEVLP)."""
    from train.methods import get_method

    info = get_method(method)
    names = {f.name for f in dataclasses.fields(info.config)}
    opts = {k: v for k, v in OPTS.items() if k in names}
    clip = CLIP if info.needs_clip else None
    if info.needs_crops:
        opts["grid"] = "2"
    return RunConfig(
        shards, method, features=FEAT, clip=clip, out=str(out / method), method_options=opts
    )


def main() -> None:
    shards, out, *methods = sys.argv[1:]
    # the trainer's timeout: a loaded machine can stall one rank for minutes
    dist.init_process_group("gloo", timeout=timedelta(minutes=30))
    try:
        for method in methods:
            train(method_config(shards, method, Path(out)))
    except BaseException:  # no barrier: the other rank may be elsewhere; torchrun ends it
        traceback.print_exc()
        end(1)
    dist.barrier()  # no rank tears its connections down while the other still communicates
    dist.destroy_process_group()
    end(0)


def end(code: int) -> None:
    """Exit without the interpreter's finalization (the module's docstring)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
