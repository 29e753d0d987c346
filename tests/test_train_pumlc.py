"""``--method pu-mlc --setting e2e`` on a copy of the tiny shard set with a partial-label view:
timm's test_resnet (random weights from a local file) with local-global convolutions at 32 px, the torch loader.
The run writes its summary, trains only what PU-MLC trains (frozen weights and every BatchNorm
statistic stay as built), and a resumed run ends where an uninterrupted one does (the mixup
draws are a function of the global step)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch
import torchvision  # noqa: F401  (imported once here, not again in every epoch's loader workers)

from shards.regimes import create_regime
from shards.shardset import open_shard_set
from shards.views import write_regime_view
from tests.support.train_fixtures import get_shards, read_metrics, read_summary
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.context import cpu_threads
from train.methods import ModelSpec, get_method
from train.run import evaluate_run, train

pytestmark = pytest.mark.slow

VIEW = "partial-p0.5"
OPTS = {"epochs": "2", "batch_size": "16", "lr": "1e-3", "schedule_epochs": "2", "ema": "0.9"}
_built: dict[str, Path] = {}


def partial_shards(tmp_path_factory) -> Path:
    """The tiny shard set (tests/support/train_fixtures.py) plus the view ``partial-p0.5``, and next
    to it ``test_resnet.pth``: "pretrained" test_resnet weights (random, but every BatchNorm
    weight 1: timm zero-initialises the last one of each block, which, frozen, would cut every
    residual branch and its global branches off from the loss)."""
    if "root" not in _built:
        base = tmp_path_factory.mktemp("pumlc-shards")
        root = base / "shards"
        shutil.copytree(get_shards(tmp_path_factory), root)
        regime = create_regime("partial", fraction=0.5)
        write_regime_view(root, regime, len(open_shard_set(root).classes), durable=False)
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", pretrained=False)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
        torch.save(model.state_dict(), base / "test_resnet.pth")
        _built["root"] = root
    return _built["root"]


def weights_file(shards: Path) -> str:
    return str(shards.parent / "test_resnet.pth")


def run_config(shards: Path, out: Path, **kw) -> RunConfig:
    return RunConfig(
        str(shards),
        "pu-mlc",
        setting="e2e",
        regime=VIEW,
        backbone="test_resnet",
        weights=weights_file(shards),
        image_size=32,
        loader="torch",
        out=str(out),
        method_options=OPTS,
        **kw,
    )


def test_pumlc_e2e_smoke_and_resume(tmp_path_factory, tmp_path):
    shards = partial_shards(tmp_path_factory)
    with cpu_threads(1):  # this machine's two cores are shared: OpenMP waits cost 3x here
        summary = train(run_config(shards, tmp_path / "run"))
        train(run_config(shards, tmp_path / "resumed", stop_after_epochs=1))
        resumed = train(run_config(shards, tmp_path / "resumed", resume=True))
    lines = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["step"] == 2 * (160 // 16)
    assert set(lines[0]["train"]) == {"loss", "vpu", "mixup"}
    assert all(r["train"]["mixup"] > 0 for r in lines)
    assert summary == read_summary(tmp_path / "run") and summary["regime"] == VIEW
    assert summary["finished"] and 0 < summary["test"]["mAP"] <= 100
    assert read_metrics(tmp_path / "resumed") == lines
    assert resumed["test"] == summary["test"]
    result = evaluate_run(str(tmp_path / "run"), "test")  # the model rebuilt from its checkpoint
    assert result["mAP"] == pytest.approx(summary["test"]["mAP"], abs=1e-6)

    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert ckpt["config"]["run"]["preset"] == "asl448"  # the method's (image_size replaces it)
    assert ckpt["config"]["backbone"]["weights"] == f"file:{weights_file(shards)}"
    assert len(ckpt["config"]["backbone"]["sha256"]) == 64
    info = get_method("pu-mlc")
    classes = tuple(ckpt["config"]["classes"])
    spec = ModelSpec(None, classes, info.create_config(), "test_resnet", weights_file(shards), 0)
    with torch.random.fork_rng(devices=[]):  # as the run built it
        torch.manual_seed(0)
        start = info.create_model(spec).state_dict()
    trained = [k for k in start if not torch.equal(start[k], ckpt["model"][k])]
    # a bias without weight decay moves by its gradient alone: the global branches learn ...
    assert "backbone.layer1.0.conv1.global_branch.norm.bias" in trained
    assert any(k.startswith("backbone.layer4.") and "global" not in k for k in trained)
    assert any(k.startswith("head.") for k in trained)
    for k in trained:  # ... frozen layers; BatchNorm statistics never move
        assert "global_branch" in k or k.startswith(("backbone.layer4.", "head.")), k
        assert not k.endswith(("running_mean", "running_var", "num_batches_tracked")), k
