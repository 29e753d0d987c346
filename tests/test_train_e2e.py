"""The end-to-end setting on the tiny shard set: timm's random-weight test_resnet at 32 px fed by
``create_loader`` (the torch fallback), with a method that keeps per-image state and an eval pass
over the training split (EM+APL); the saved best checkpoint scores what the summary says."""

from __future__ import annotations

import pytest
import torch
import torchvision  # noqa: F401  (imported once here, not again in every epoch's loader workers)

from tests.train_fixtures import get_shards, read_metrics, read_summary
from train.config import RunConfig
from train.context import cpu_threads
from train.loop import train
from train.run import evaluate_run

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
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=False)
    assert any(k.startswith("backbone.") for k in ckpt["model"])
    assert ckpt["config"]["backbone"]["weights"] == "none"
