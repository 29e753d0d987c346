"""``create_loader`` under torchrun: two gloo processes on the CPU read the tiny shard set with
both backends in one launch (tests/support/ddp_loader_worker.py); the ranks stay in lockstep, training
ranks read disjoint rows, eval scores every row once, and each rank sees exactly what the same
loader built in this process for that rank sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ddp_loader_worker import CONFIGS, create_rank_loader
from tests.support.pipelines_data import (
    BACKENDS,
    N_TEST,
    check_eval_epoch,
    check_train_epoch,
    get_shard_set,
    stored_rows,
)

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "support" / "ddp_loader_worker.py"
WORLD = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return get_shard_set(tmp_path_factory)


@pytest.fixture(scope="module")
def ddp(root, tmp_path_factory) -> dict:
    """One torchrun launch (10-15 s here): {"world", "runs": {"backend/config/i": [per rank]}}."""
    out = tmp_path_factory.mktemp("ddp") / "ranks.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={WORLD}", str(WORKER), str(root), str(out)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    data = json.loads(out.read_text())
    assert data["world"] == WORLD
    return data["runs"]


def epochs(ddp: dict, backend: str, name: str):
    """(epoch, per-rank records) in the order the worker called set_epoch."""
    for i, epoch in enumerate(CONFIGS[name][2]):
        ranks = ddp[f"{backend}/{name}/{i}"]
        assert [r["epoch"] for r in ranks] == [epoch] * WORLD
        yield epoch, ranks


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_stay_in_lockstep(ddp, backend):
    """Every rank yields len(loader) batches in every epoch, the same number on every rank."""
    for name in CONFIGS:
        for epoch, ranks in epochs(ddp, backend, name):
            assert not any(r["uneven"] for r in ranks), (name, epoch)
            assert len({r["len"] for r in ranks}) == 1
            assert all(len(r["rows"]) == r["len"] for r in ranks), (name, epoch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_under_torchrun(ddp, root, backend):
    split, batch, _ = CONFIGS["train"]
    stored = stored_rows(root, split)
    seen = {}
    for epoch, ranks in epochs(ddp, backend, "train"):
        check_train_epoch(ranks, stored, epoch, batch)  # full batches, disjoint ranks
        orders = [r["rows"] for r in ranks]
        if epoch in seen:  # set_epoch(0) again, as a resumed run does: the same batches
            assert orders == seen[epoch]
        seen[epoch] = orders
    assert seen[0] != seen[1] and seen[0] != seen[2] and seen[1] != seen[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_under_torchrun(ddp, root, backend):
    split, batch, _ = CONFIGS["eval"]
    stored = stored_rows(root, split)
    orders = []
    for _, ranks in epochs(ddp, backend, "eval"):
        check_eval_epoch(ranks, stored, batch)  # every row once, padding marked invalid
        assert [r["scored"] for r in ranks] == [N_TEST] * WORLD
        orders.append([r["rows"] for r in ranks])
    assert orders[0] == orders[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchrun_ranks_match_in_process_loaders(ddp, root, backend):
    """A rank under torchrun reads what create_loader(rank=r, world_size=2) reads here: the
    order depends only on (seed, epoch, rank), not on the process or its environment."""
    for name, (split, batch, _) in CONFIGS.items():
        for rank in range(WORLD):
            loader = create_rank_loader(root, split, batch, rank, WORLD, backend)
            done = set()
            for epoch, ranks in epochs(ddp, backend, name):
                if epoch in done or epoch > 1:  # (2 reads epoch 0's shard again)
                    continue
                done.add(epoch)
                loader.set_epoch(epoch)
                rows = [b["row"].tolist() for b in loader]
                assert rows == ranks[rank]["rows"], (name, rank, epoch)
