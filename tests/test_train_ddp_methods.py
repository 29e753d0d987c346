"""The DDP contract over every stackable method: two gloo ranks under torchrun give one
process's losses and metrics in the linear setting (batch-wide selections and regularisers,
such as LL's top-k and EPR's expected positives, are over the global batch; sums such as ASL's
loss are the global batch's). All methods train in one torchrun launch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shards.regimes import Partial
from shards.shardset import open_shard_set
from shards.views import write_regime_view
from tests.support.ddp_methods_worker import method_config
from tests.support.train_fixtures import get_shards, read_metrics, read_summary
from train.methods import METHODS
from train.run import train

REPO = Path(__file__).resolve().parents[1]
STACKABLE = [m.name for m in METHODS if m.method_class.stackable and "linear" in m.settings]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Every stackable method trained on two ranks, in one launch, on the tiny set with a
    partial view added (for the methods of partial labels)."""
    shards = tmp_path_factory.mktemp("ddp-shards") / "shards"
    shutil.copytree(get_shards(tmp_path_factory), shards)
    ss = open_shard_set(shards)
    write_regime_view(shards, Partial(fraction=0.1), len(ss.classes), durable=False)
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["tests/support/ddp_methods_worker.py", str(shards), str(out), *STACKABLE]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    # 30 minutes: a CI machine with load 8 on 2 cores took several times its quiet 2 minutes
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return shards, out


def test_the_contract_covers_every_stackable_method():
    assert {"an", "asl", "epr", "ll-r", "ll-ct", "ll-cp", "em-apl", "vlpl"} <= set(STACKABLE)


@pytest.mark.parametrize("method", STACKABLE)
def test_two_ranks_match_one_process(ddp_runs, tmp_path, method):
    shards, out = ddp_runs
    train(method_config(str(shards), method, tmp_path))
    ddp, single = read_metrics(out / method), read_metrics(tmp_path / method)
    assert len(ddp) == len(single) == 2
    for a, b in zip(ddp, single, strict=True):
        assert a["train"].keys() == b["train"].keys()
        for key, value in b["train"].items():  # losses and what the method logs
            if value is None:  # a label-state precision of no change: null on both sides
                assert a["train"][key] is None, key
                continue
            assert a["train"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        for split in ("val", "test"):
            for key, value in b[split].items():
                assert a[split][key] == pytest.approx(value, abs=1e-5), (split, key)
    assert read_summary(out / method)["best_epoch"] == read_summary(tmp_path / method)["best_epoch"]
