"""The commands that read a run (``eval``, ``predict --shards``, ``export``) check the data
identity ``config.json`` records, as ``--resume`` does: a shard set, view or cache replaced
since the run trained is refused, naming what changed, instead of scored silently."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import cli
from tests.support.cli_checks import assert_refused
from tests.support.train_fixtures import FEAT, get_shards


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch linear run on its own copy of the tiny shard set: (shards, run)."""
    base = tmp_path_factory.mktemp("run-reads")
    shards = shutil.copytree(get_shards(tmp_path_factory), base / "shards")
    run = base / "run"
    args = ["train", "--shards", shards, "--method", "an", "--features", FEAT, "--out", run]
    result = invoke(*args, "--epochs", 1)
    assert result.exit_code == 0, result.output
    return shards, run


@pytest.fixture
def fresh(trained, tmp_path):
    """A copy of the shard set and of the run trained on it (the run's config.json pointing
    at the copy), for a test to change."""
    shards, run = trained
    copy, run_copy = tmp_path / "shards", tmp_path / "run"
    shutil.copytree(shards, copy)
    shutil.copytree(run, run_copy)
    config = json.loads((run_copy / "config.json").read_text())
    config["run"]["shards"] = str(copy.resolve())
    (run_copy / "config.json").write_text(json.dumps(config))
    return copy, run_copy


COMMANDS = {
    "eval": lambda run, shards, tmp: ["eval", "--run", run, "--split", "val"],
    "predict --shards": lambda run, shards, tmp: [
        "predict", "--run", run, "--shards", shards, "--split", "val", "--out", tmp / "p.csv",
    ],
    "export": lambda run, shards, tmp: ["export", "--run", run, "--out", tmp / "m.pt"],
}  # fmt: skip


def test_eval_on_the_data_the_run_trained_on(fresh):
    shards, run = fresh
    result = invoke("eval", "--run", run, "--split", "val")
    assert result.exit_code == 0, result.output
    assert "epoch 1" in result.output


@pytest.mark.parametrize("command", list(COMMANDS))
def test_replaced_shards_are_refused(fresh, tmp_path, command):
    shards, run = fresh
    with open(shards / "manifest.json", "a") as f:
        f.write(" ")  # made again: the same bytes would read the same
    args = COMMANDS[command](run, shards, tmp_path)
    line = assert_refused(invoke(*args), f"{command}: {run}", "manifest.json", str(shards))
    assert "restore the data it was trained on" in line
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.pt").exists()


def test_a_replaced_view_is_refused(fresh):
    shards, run = fresh
    path = shards / "observed" / "single-positive" / "regime.json"
    path.write_text(path.read_text() + " ")
    line = assert_refused(invoke("eval", "--run", run), "observed/single-positive/regime.json")
    assert "manifest.json" not in line


def test_a_removed_cache_is_refused(fresh):
    shards, run = fresh
    shutil.rmtree(shards / "embeddings" / FEAT)
    line = assert_refused(invoke("eval", "--run", run), f"embeddings/{FEAT}/meta.json")
    assert "manifest.json" not in line


def test_a_shard_set_gone_is_said_by_the_command(fresh, tmp_path):
    shards, run = fresh
    shards.rename(tmp_path / "moved")
    line = assert_refused(invoke("eval", "--run", run))
    assert str(shards) in line and "does not exist" in line


def test_eval_on_a_sweep_scores_its_pick(tmp_path_factory, tmp_path):
    """A sweep keeps its pick's selected checkpoint: ``eval`` scores it (the summary's test
    figures), and a sweep's last epoch, which it does not keep, is refused by name."""
    shards, run = get_shards(tmp_path_factory), tmp_path / "sweep"
    args = ["train", "--shards", shards, "--method", "an", "--features", FEAT, "--out", run]
    sweep = ["--sweep", "-o", "sweep_lrs=0.01,0.1", "-o", "sweep_batches=16", "--epochs", 1]
    assert invoke(*args, *sweep).exit_code == 0
    result = invoke("eval", "--run", run, "--split", "test")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert f"mAP {summary['test']['mAP']:.2f}" in result.output
    (run / "checkpoint-best.pt").unlink()  # a sweep trained before sweeps kept their pick's
    assert_refused(invoke("eval", "--run", run), str(run), "is a --sweep run that kept no weights")
