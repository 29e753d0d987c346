"""Optional TensorBoard logs: the event files hold every number of metrics.jsonl at its epoch,
also after a resume (events past the resumed epoch are dropped) and for a sweep's members."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.train_fixtures import FEAT, get_shards, read_metrics
from train.config import RunConfig
from train.run import train
from train.runfolder import TENSORBOARD_DIR


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / TENSORBOARD_DIR))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def config(shards, out, **kw) -> RunConfig:
    opts = {"epochs": "3", "stop_patience": "0", **({} if kw.get("sweep") else {"lr": "0.01"})}
    return RunConfig(str(shards), "an", features=FEAT, out=str(out), method_options=opts, **kw)


def test_events_equal_metrics_and_survive_a_resume(tmp_path_factory, tmp_path):
    shards = get_shards(tmp_path_factory)
    run = tmp_path / "run"
    train(config(shards, run, tensorboard=True, stop_after_epochs=2))
    train(config(shards, run, tensorboard=True, resume=True))
    lines = read_metrics(run, drop_time=False)
    events = scalars(run)
    assert [s for s, _ in events["val/mAP"]] == [1, 2, 3]  # epoch 3 once, none duplicated
    for line in lines:
        e = line["epoch"]
        assert dict(events["val/mAP"])[e] == pytest.approx(line["val"]["mAP"], rel=1e-6)
        assert dict(events["test/OF1"])[e] == pytest.approx(line["test"]["OF1"], rel=1e-6)
        assert dict(events["train/loss"])[e] == pytest.approx(line["train"]["loss"], rel=1e-6)
        assert dict(events["lr/head"])[e] == pytest.approx(line["lr"]["head"], rel=1e-6)
    assert "epoch" not in events and "best_epoch" not in events


def test_sweep_logs_every_member(tmp_path_factory, tmp_path):
    shards = get_shards(tmp_path_factory)
    run = tmp_path / "sweep"
    grid = {"sweep_lrs": (1e-2, 1e-3), "sweep_batches": (16,)}
    train(config(shards, run, tensorboard=True, sweep=True, **grid))
    events = scalars(run)
    for name in ("b16-lr0.01-s0", "b16-lr0.001-s0"):
        assert [s for s, _ in events[f"members/{name}/val_mAP"]] == [1, 2, 3]


def test_no_events_without_the_flag(tmp_path_factory, tmp_path):
    train(config(get_shards(tmp_path_factory), tmp_path / "run"))
    assert not (tmp_path / "run" / TENSORBOARD_DIR).exists()
