"""``torchrun --nproc_per_node=2 cli.py train`` (gloo on the CPU) gives the metrics of one
process on the linear setting: the global batch and its order do not depend on the number of
ranks (train/data.py), DDP averages the gradients, and EM+APL's pseudo-labels (made from an eval
pass each rank runs on its share of the training split) are gathered across ranks. End to end
with DALI, each rank's loader state travels in the checkpoint and a resumed run reads on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.dali_loader import dali_available
from tests.support.train_fixtures import FEAT, get_shards, read_metrics, read_summary
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.run import train

REPO = Path(__file__).resolve().parents[1]
OPTS = {"epochs": "3", "lr": "0.01", "warmup_epoch": "1", "stop_patience": "0"}

pytestmark = pytest.mark.slow


def test_two_ranks_match_one_process(tmp_path_factory, tmp_path):
    shards = get_shards(tmp_path_factory)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["cli.py", "train", "--shards", str(shards), "--method", "em-apl"]
    cmd += ["--features", FEAT, "--out", str(tmp_path / "ddp")]
    cmd += [x for k, v in OPTS.items() for x in ("-o", f"{k}={v}")]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("best epoch") == 1  # rank 0 reports
    one = tmp_path / "one"
    train(RunConfig(str(shards), "em-apl", features=FEAT, out=str(one), method_options=OPTS))

    ddp, single = read_metrics(tmp_path / "ddp"), read_metrics(one)
    assert len(ddp) == len(single) == 3
    for a, b in zip(ddp, single, strict=True):
        assert a["train"].keys() == b["train"].keys()
        for key, value in b["train"].items():  # losses, pseudo-labels made and their truth
            if value is None:  # a precision of no label change
                assert a["train"][key] is None, key
                continue
            assert a["train"][key] == pytest.approx(value, rel=1e-5), key
        for split in ("val", "test"):
            for key, value in b[split].items():
                assert a[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    s_ddp, s_one = read_summary(tmp_path / "ddp"), read_summary(one)
    assert s_ddp["best_epoch"] == s_one["best_epoch"]
    assert s_ddp["test"]["mAP"] == pytest.approx(s_one["test"]["mAP"], abs=1e-6)
    config = (tmp_path / "ddp" / "config.json").read_text()
    assert '"world_size": 2' in config


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
def test_two_ranks_resume_their_dali_loaders(tmp_path_factory, tmp_path):
    """e2e over two ranks with DALI: the checkpoint holds each rank's loader state, and a run
    stopped after epoch 1 and resumed takes on each rank the batches of an uninterrupted run,
    and ends with its metrics (tests/support/ddp_resume_worker.py)."""
    shards = get_shards(tmp_path_factory)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["tests/support/ddp_resume_worker.py", str(shards), str(tmp_path)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rows-{r}.json").read_text()) for r in range(2)]
    for seen in ranks:
        assert [e for e, _ in seen["whole"]] == [1] * 6 + [2] * 6 + [3] * 6  # 80 rows, 12 a step
        assert seen["part"] + seen["resumed"] == seen["whole"]
    for epoch in (1, 2, 3):
        mine = [{r for e, b in seen["whole"] if e == epoch for r in b} for seen in ranks]
        assert not mine[0] & mine[1] and len(mine[0]) == len(mine[1]) == 72
    assert read_metrics(tmp_path / "part") == read_metrics(tmp_path / "whole")
    ckpt = read_checkpoint(tmp_path / "part" / "checkpoint-last.pt")
    assert [(s["rank"], s["epoch"], s["start"]) for s in ckpt["loaders"]] == [(0, 4, 1), (1, 4, 1)]
