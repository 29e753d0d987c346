"""``torchrun --nproc_per_node=2 cli.py train --method pu-mlc --setting e2e`` (gloo on the CPU)
against one process that replays the same global steps.

In the e2e setting a rank reads its own shard of each epoch (pipelines/sharding.py), so the
samples of a step depend on the number of ranks and no single-process run sees the batches of a
two-rank one. What must hold is that a DDP step is the mean of the ranks' steps: one process
that draws each rank's batches with that rank's loader, calls ``training_step`` once per rank's
batch (the mixup draw is a function of the global step, so it is the same on both) and steps on
the mean of their losses must end with the DDP run's weights and metrics. That checks the
single forward on [x, x_mix] under DDP, the per-step draws and the frozen BatchNorm (the ranks'
batches never mix)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.train_fixtures import read_metrics
from tests.test_train_pumlc import VIEW, partial_shards, run_config, weights_file
from train.build import start_run
from train.checkpoints import read_checkpoint
from train.context import Context, cpu_threads
from train.data import ImageData, e2e_preset
from train.evaluate import evaluate_splits
from train.plan import plan_run

REPO = Path(__file__).resolve().parents[1]
OPTS = {"epochs": "2", "batch_size": "16", "lr": "1e-3", "schedule_epochs": "2", "ema": "0.9"}
WORLD = 2

pytestmark = pytest.mark.slow


def launch_ddp(shards: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={WORLD}", "cli.py", "train", "--shards", str(shards)]
    cmd += ["--method", "pu-mlc", "--setting", "e2e", "--regime", VIEW, "--out", str(out)]
    cmd += ["--backbone", "test_resnet", "--weights", weights_file(shards)]
    opts = {**OPTS, "image_size": "32", "loader": "torch"}
    cmd += [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def replay(shards: Path, out: Path) -> tuple[list[dict], dict]:
    """Train as two ranks would, in this process: (per-epoch records, final weights)."""
    ctx = Context()
    run = start_run(plan_run(run_config(shards, out), 1), ctx)
    cfg = run.model.pretrained_cfg
    config = run.plan.config
    preset = e2e_preset(config.preset, config.image_size, cfg)
    ranks = [
        ImageData(
            run.data.ss,
            VIEW,
            Context(rank=r, world_size=WORLD),
            preset=preset,
            seed=0,
            batch_size=run.method.config.batch_size,
            backend="torch",
        )
        for r in range(WORLD)
    ]
    records, opt = [], run.optimizer
    for epoch in (1, 2):
        run.net.train()
        run.method.train()
        batches = [iter(d.train_batches(epoch)) for d in ranks]
        totals: dict[str, float] = {}
        steps = ranks[0].steps_per_epoch
        for _ in range(steps):
            step = run.step
            run.schedule.apply(opt.param_groups, step)
            outs = [
                run.method.training_step(
                    run.net, next(b), epoch=epoch, step=step, autocast=ctx.autocast
                )
                for b in batches
            ]
            opt.zero_grad(set_to_none=True)
            (sum(o["loss"] for o in outs) / WORLD).backward()
            run.method.after_backward()
            opt.step()
            run.ema.update()
            run.method.after_step()
            run.step += 1
            for k in outs[0]:
                mean = sum(float(o[k].detach()) for o in outs) / WORLD
                totals[k] = totals.get(k, 0.0) + mean / steps
        results = evaluate_splits(run.eval_models(), run.data, ctx, ("val", "test"), 0.5)
        scores = {w: {s: r[0][s]["mAP"] for s in ("val", "test")} for w, r in results.items()}
        records.append({"train": totals, **scores})
    return records, run.model.state_dict()


def test_two_ranks_equal_one_process_replaying_their_steps(tmp_path_factory, tmp_path):
    shards = partial_shards(tmp_path_factory)
    launch_ddp(shards, tmp_path / "ddp")
    with cpu_threads(1):
        records, weights = replay(shards, tmp_path / "replay")
    ddp = read_metrics(tmp_path / "ddp")
    assert [r["epoch"] for r in ddp] == [1, 2] and ddp[-1]["step"] == 2 * (80 // 8)
    for got, want in zip(ddp, records, strict=True):
        assert got["train"].keys() == want["train"].keys() == {"loss", "vpu", "mixup"}
        for key, value in want["train"].items():
            assert got["train"][key] == pytest.approx(value, rel=1e-5), key
        for split in ("val", "test"):
            assert got[split]["mAP"] == pytest.approx(want["model"][split], abs=1e-4), split
            assert got["ema"][split]["mAP"] == pytest.approx(want["ema"][split], abs=1e-4)
    ckpt = read_checkpoint(tmp_path / "ddp" / "checkpoint-last.pt")
    assert ckpt["config"]["world_size"] == WORLD
    for key, value in weights.items():
        assert torch.allclose(ckpt["model"][key], value, rtol=1e-5, atol=1e-7), key
