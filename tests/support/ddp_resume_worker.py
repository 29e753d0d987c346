"""Run by test_train_ddp.py under ``torchrun --nproc_per_node=2`` (gloo on the CPU): in one
process group an e2e run with DALI trains uninterrupted into ``OUT/whole``, then into
``OUT/part`` stops after epoch 1 and is resumed; rank r writes the (epoch, rows) of every
training batch it took to ``OUT/rows-r.json``. Ends with ``os._exit`` (ddp_methods_worker.py).

usage: torchrun --standalone --nproc_per_node=2 tests/support/ddp_resume_worker.py SHARDS OUT
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from tests.support.ddp_methods_worker import end
from tests.support.train_fixtures import dali_config, train_recording


def main() -> None:
    shards, out = sys.argv[1:3]
    dist.init_process_group("gloo", timeout=timedelta(minutes=30))
    legs = [("whole", "whole", {}), ("part", "part", {"stop_after_epochs": 1})]
    legs.append(("resumed", "part", {"resume": True}))
    seen = {}
    try:
        for name, folder, kw in legs:
            _, batches, _ = train_recording(dali_config(shards, Path(out) / folder, **kw))
            seen[name] = [(epoch, rows) for epoch, rows, _ in batches]
        Path(out, f"rows-{dist.get_rank()}.json").write_text(json.dumps(seen))
    except BaseException:  # no barrier: the other rank may be elsewhere; torchrun ends it
        traceback.print_exc()
        end(1)
    dist.barrier()
    dist.destroy_process_group()
    end(0)


if __name__ == "__main__":
    main()
