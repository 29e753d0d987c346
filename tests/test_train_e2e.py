"""The end-to-end setting on the tiny shard set: timm's random-weight test_resnet at 32 px fed by
``create_loader`` (the torch fallback), with a method that keeps per-image state and an eval pass
over the training split (EM+APL); the saved best checkpoint scores what the summary says. With
DALI, a run stopped after epoch 1 and resumed reads the same batches and ends with the same
metrics as an uninterrupted one."""

from __future__ import annotations

import shutil

import pytest
import torch
import torchvision  # noqa: F401  (imported once here, not again in every epoch's loader workers)

from pipelines.dali_loader import dali_available
from pipelines.loader import LoaderOptions, create_loader
from tests.support.train_fixtures import (
    dali_config,
    get_shards,
    read_metrics,
    read_summary,
    same_batches,
    train_recording,
)
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.context import cpu_threads
from train.run import evaluate_run, train

pytestmark = pytest.mark.slow


def test_e2e_smoke(tmp_path_factory, tmp_path):
    shards = get_shards(tmp_path_factory)
    opts = {"epochs": "2", "lr": "1e-3", "batch_size": "16", "warmup_epoch": "1"}
    config = RunConfig(
        str(shards),
        "em-apl",
        setting="e2e",
        backbone="test_resnet",
        weights="none",
        image_size=32,
        loader="torch",
        out=str(tmp_path / "run"),
        method_options={**opts, "stop_patience": "0"},
    )
    with cpu_threads(1):  # this machine's two cores are shared: OpenMP waits cost 3x here
        summary = train(config)
    lines = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines[0]["train"]["pseudo_negatives_added"] > 0
    assert lines[0]["step"] == 160 // 16  # manifest rows // batch
    assert summary == read_summary(tmp_path / "run") and summary["setting"] == "e2e"
    result = evaluate_run(str(tmp_path / "run"), "test")
    assert result["mAP"] == pytest.approx(summary["test"]["mAP"], abs=1e-6)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert any(k.startswith("backbone.") for k in ckpt["model"])
    assert ckpt["config"]["backbone"]["weights"] == "none"


# -- a resumed e2e run reads what an uninterrupted one reads (DALI, issue 23 item 7) ------------

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")


@needs_dali
def test_a_resumed_dali_run_reads_and_scores_as_an_uninterrupted_one(
    tmp_path_factory, tmp_path, capsys
):
    shards = get_shards(tmp_path_factory)
    whole, seen, run = train_recording(dali_config(shards, tmp_path / "whole"))
    assert [s > 0 for s in run.data.loaders["train"].build_seconds] == [True, False, False]
    part = tmp_path / "part"
    out, first, _ = train_recording(dali_config(shards, part, stop_after_epochs=1))
    assert out["interrupted_after_epoch"] == 1
    shutil.copytree(part, tmp_path / "old")
    ckpt = read_checkpoint(part / "checkpoint-last.pt")
    (state,) = ckpt["loaders"]
    assert (state["epoch"], state["start"], state["backend"]) == (2, 1, "dali")
    resumed, rest, _ = train_recording(dali_config(shards, part, resume=True))
    assert [e for e, *_ in seen] == [1] * 6 + [2] * 6 + [3] * 6
    assert same_batches(first + rest, seen)  # the same rows and pixels, batch by batch
    assert read_metrics(part) == read_metrics(tmp_path / "whole")
    assert resumed == whole == read_summary(part)
    a = read_checkpoint(part / "checkpoint-last.pt")
    b = read_checkpoint(tmp_path / "whole" / "checkpoint-last.pt")
    for key in ("model", "method"):
        for name, value in b[key].items():
            assert torch.equal(a[key][name], value), (key, name)

    # a run folder from before loaders kept their state: it resumes, saying what changes, and
    # builds its graph from (seed, epoch, rank), so its epoch 2 is a fresh loader's epoch 2
    old = tmp_path / "old"
    del ckpt["loaders"]
    torch.save(ckpt, old / "checkpoint-last.pt")
    capsys.readouterr()
    _, later, run = train_recording(dali_config(shards, old, resume=True))
    notice = capsys.readouterr().err
    assert "holds no loader state" in notice and "(seed, epoch 2, rank)" in notice
    train = run.data.loaders["train"]
    opts = LoaderOptions(seed=0, epoch=2, backend="dali", num_threads=train.num_threads)
    fresh = create_loader(shards, "train", regime=train.regime, batch_size=24,
                          preset=train.preset, train=True, options=opts)  # fmt: skip
    assert [b["row"].tolist() for b in fresh] == [rows for e, rows, _ in later if e == 2]
    assert len(read_metrics(old)) == 3
