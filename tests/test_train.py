"""The trainer's linear setting on the tiny shard set: smoke runs over methods of every kind
(label state, trainable state, epoch passes, CLIP, EMA, schedules), the run folder, selection on
validation, exact resume, early stopping and the schedule's formula."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from shards.shardset import open_shard_set
from tests.support.train_fixtures import CLIP, FEAT, get_shards, read_metrics, read_summary
from train import metrics
from train.build import LoopState
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.methods import create_config
from train.optim import create_schedule
from train.run import evaluate_run, train

FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint-last.pt", "checkpoint-best.pt")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


def run(shards, out, method, epochs=3, opts=None, **kw) -> dict:
    options = {"epochs": str(epochs), "lr": "0.01", **(opts or {})}
    config = RunConfig(
        shards=str(shards),
        method=method,
        features=kw.pop("features", FEAT),
        out=str(out),
        method_options=options,
        **kw,
    )
    return train(config)


SMOKE = {
    "an": {},
    "bce": {},  # full labels: the regime defaults to "full"
    "role": {},  # trainable per-image estimator in the optimiser
    "em-apl": {"warmup_epoch": "1"},  # eval pass over the training split, pseudo-labels
    "ll-cp": {"delta_rel": "5"},  # permanent corrections
    "epr": {},
    "asl": {"ema": "0.8", "lr": "1e-3", "schedule_epochs": "3"},  # EMA, OneCycle
    "vlpl": {},  # CLIP pseudo-labels
}


@pytest.mark.parametrize("method", list(SMOKE))
def test_linear_smoke(shards, tmp_path, method):
    extra = {"clip": CLIP} if method == "vlpl" else {}
    summary = run(shards, tmp_path / "run", method, opts=SMOKE[method], **extra)
    out = tmp_path / "run"
    for name in FILES:
        assert (out / name).is_file(), name
    lines = read_metrics(out)
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all(math.isfinite(r["train"]["loss"]) for r in lines)
    # selection on validation: the best val mAP of either set of weights, first on ties
    scored = [(r["val"]["mAP"], r["epoch"], "model", r) for r in lines]
    scored += [(r["ema"]["val"]["mAP"], r["epoch"], "ema", r) for r in lines if "ema" in r]
    best = max(scored, key=lambda s: (s[0], -s[1], s[2] == "model"))
    assert (summary["best_epoch"], summary["weights"]) == (best[1], best[2])
    chosen = best[3] if best[2] == "model" else best[3]["ema"]
    assert summary["test"] == chosen["test"] and summary["val"] == chosen["val"]
    assert summary["finished"] and summary["epochs_trained"] == 3
    # the reported mAP is train.metrics on the saved predictions
    ss = open_shard_set(shards)
    for split in ("val", "test"):
        probs = np.load(out / "predictions" / f"{split}.npy")
        assert probs.shape == (len(ss.full_labels(split)), len(ss.classes))
        assert metrics.mean_average_precision(probs, ss.full_labels(split)) == pytest.approx(
            summary[split]["mAP"], abs=1e-9
        )
    assert set(summary["test_ap"]) == set(ss.classes)
    ckpt = read_checkpoint(out / "checkpoint-last.pt")
    assert ckpt["config"]["method"]["epochs"] == 3 and ckpt["epoch"] == 3
    assert ckpt["config"]["regime"]["view"] == ("full" if method == "bce" else "single-positive")


def test_label_state_is_used(shards, tmp_path):
    """APL makes pseudo-negatives from epoch 1 on; LL-Cp corrects entries for good."""
    run(shards, tmp_path / "apl", "em-apl", opts={"warmup_epoch": "1"})
    lines = read_metrics(tmp_path / "apl")
    assert lines[0]["train"]["pseudo_negatives_added"] > 0
    ckpt = read_checkpoint(tmp_path / "apl" / "checkpoint-last.pt")
    assert len(ckpt["method"]["pseudo_keys"]) > 0  # pseudo-negatives, kept as entries
    assert (ckpt["method"]["pseudo_values"] >= 0).all()
    run(shards, tmp_path / "llcp", "ll-cp", opts={"delta_rel": "5"})
    ckpt = read_checkpoint(tmp_path / "llcp" / "checkpoint-last.pt")
    assert ckpt["method"]["corrected"].numel() > 0


@pytest.mark.parametrize(
    "method,opts",
    [("role", {}), ("em-apl", {"warmup_epoch": "1", "ema": "0.9", "schedule": "onecycle"})],
)
def test_resume_is_exact(shards, tmp_path, method, opts):
    """Interrupted after epoch 2 (and a line of epoch 3 written before the 'crash'), then
    resumed: the same metrics, summary and final weights as one uninterrupted run."""
    opts = {**opts, "stop_patience": "0"}
    whole = run(shards, tmp_path / "whole", method, epochs=4, opts=opts)
    part = tmp_path / "part"
    out = run(shards, part, method, epochs=4, opts=opts, stop_after_epochs=2)
    assert out["interrupted_after_epoch"] == 2
    assert len(read_metrics(part)) == 2
    with open(part / "metrics.jsonl", "a") as f:  # written before a checkpoint that never came
        f.write('{"epoch": 3, "time": {}, "bogus": true}\n')
    resumed = run(shards, part, method, epochs=4, opts=opts, resume=True)
    assert read_metrics(part) == read_metrics(tmp_path / "whole")
    assert resumed == whole == read_summary(part)
    a = read_checkpoint(part / "checkpoint-last.pt")
    b = read_checkpoint(tmp_path / "whole" / "checkpoint-last.pt")
    for key in ("model", "method", "ema"):
        for name, value in (b[key] or {}).items():
            assert torch.equal(a[key][name], value), (key, name)


def test_resume_of_a_finished_run_returns_its_summary(shards, tmp_path):
    first = run(shards, tmp_path / "r", "an", epochs=2)
    assert run(shards, tmp_path / "r", "an", epochs=2, resume=True) == first


def test_eval_matches_the_summary(shards, tmp_path):
    summary = run(shards, tmp_path / "r", "an-ls", epochs=3)
    for split in ("val", "test"):
        result = evaluate_run(str(tmp_path / "r"), split)
        assert result["epoch"] == summary["best_epoch"]
        assert result["mAP"] == pytest.approx(summary[split]["mAP"], abs=1e-9)


def test_zhou_stops_at_the_first_epoch_without_a_better_val_map(shards, tmp_path):
    run(shards, tmp_path / "r", "em", epochs=6, opts={"lr": "0.05"})  # em: stop_patience 1
    vals = [r["val"]["mAP"] for r in read_metrics(tmp_path / "r")]
    if read_summary(tmp_path / "r")["stopped"]:
        *before, last = vals
        assert all(b > a for a, b in pairwise(before)) and last <= max(before)
    else:
        assert len(vals) == 6 and all(b > a for a, b in pairwise(vals))


def test_loop_state_rules():
    zhou = create_config("em", "coco")  # stop_patience 1
    s = LoopState()
    assert s.update(1, {"model": 50.0}, zhou) and s.stopped is None
    assert not s.update(2, {"model": 50.0}, zhou)  # a tie is no improvement
    assert s.stopped and s.best_epoch == 1
    kim = create_config("ll-r", "coco")  # stop_drop 3
    s = LoopState()
    for epoch, val in enumerate([50.0, 52.0, 49.5, 51.0], start=1):
        s.update(epoch, {"model": val}, kim)
        assert s.stopped is None
    s.update(5, {"model": 48.9}, kim)  # 3.1 below the best
    assert s.stopped and s.best_epoch == 2
    s = LoopState()
    s.update(1, {"model": 50.0, "ema": 51.0}, kim)
    assert (s.best_weights, s.best_val) == ("ema", 51.0)


def test_onecycle_is_torchs():
    cfg = create_config("asl", None, {"epochs": "3", "schedule_epochs": "4", "lr": "0.1"})
    steps = 7
    sched = create_schedule(cfg, steps)
    assert len(sched.lr) == 3 * steps
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4 * steps, pct_start=0.2)
    for i in range(3 * steps):
        group = opt.param_groups[0]
        assert sched.lr[i] * 0.1 == pytest.approx(group["lr"], rel=1e-12)
        assert sched.beta1[i] == pytest.approx(group["betas"][0], rel=1e-12)
        opt.step()
        ref.step()
    constant = create_schedule(create_config("an", None, {"epochs": "2"}), 5)
    assert constant.lr == (1.0,) * 10 and constant.beta1 is None
