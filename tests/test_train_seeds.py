"""Several seeds and label draws in one command: ``train --view-seeds`` trains one run per draw
of the observed labels (draw 0: the view itself, Cole et al.'s generator at seed 1200; draw k:
seed 1200 + k), the report sets the variance over training seeds apart from the variance over
draws, and ``--seeds … --resume`` resumes the seed folders that hold a run and starts the
others."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import cli
from tests.support.train_fixtures import FEAT, get_shards, read_metrics, read_summary
from train.report.tables import cell

BASE = ["--features", FEAT, "--method", "an", "--epochs", 2]
BCE = ["--features", FEAT, "--method", "bce", "--epochs", 2]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture
def shards(tmp_path_factory, tmp_path):
    """A copy of the shared shard set (a test here adds views to it)."""
    copy = tmp_path / "shards"
    shutil.copytree(get_shards(tmp_path_factory), copy)
    return copy


def test_view_seeds_train_each_draw_and_the_report_separates_them(shards, tmp_path):
    out = tmp_path / "runs" / "an"
    grid = ["train", "--shards", shards, *BASE, "--seeds", "0,1", "--view-seeds", "0,1"]
    refused = invoke(*grid, "--out", out)
    assert refused.exit_code == 1
    assert f"make it with `cli.py observe {shards} single-positive --seed 1201" in refused.output
    assert not (tmp_path / "runs").exists()  # refused before any run started
    assert invoke("observe", shards, "single-positive", "--seed", 1201).exit_code == 0
    result = invoke(*grid, "--out", out)
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["an-s0-v0", "an-s0-v1", "an-s1-v0", "an-s1-v1"]
    views = {f: read_summary(tmp_path / "runs" / f)["regime"] for f in folders}
    assert views["an-s0-v0"] == views["an-s1-v0"] == "single-positive"  # Cole's draw itself
    assert views["an-s0-v1"] == views["an-s1-v1"] == "single-positive-s1201"
    plain = tmp_path / "plain"
    assert invoke("train", "--shards", shards, *BASE, "--seed", 0, "--out", plain).exit_code == 0
    assert read_metrics(plain) == read_metrics(tmp_path / "runs" / "an-s0-v0")  # draw 0, seed 0
    report = tmp_path / "report"
    assert invoke("report", tmp_path / "runs", "--out", report).exit_code == 0
    md = (report / "report.md").read_text()
    assert "## Training seeds and label draws: an (linear" in md
    test = {f: read_summary(tmp_path / "runs" / f)["test"]["mAP"] for f in folders}
    assert (f"| 0 | {test['an-s0-v0']:.2f} | {test['an-s0-v1']:.2f} |") in md
    assert (f"| 1 | {test['an-s1-v0']:.2f} | {test['an-s1-v1']:.2f} |") in md
    import statistics

    seeds = statistics.fmean([statistics.variance([test["an-s0-v0"], test["an-s1-v0"]]),
                              statistics.variance([test["an-s0-v1"], test["an-s1-v1"]])])  # fmt: skip
    draws = statistics.fmean([statistics.variance([test["an-s0-v0"], test["an-s0-v1"]]),
                              statistics.variance([test["an-s1-v0"], test["an-s1-v1"]])])  # fmt: skip
    assert f"| training seeds | {cell(seeds**0.5)} |" in md
    assert f"| label draws | {cell(draws**0.5)} |" in md


def test_view_seeds_of_full_labels_are_refused(shards, tmp_path):
    result = invoke("train", "--shards", shards, *BCE, "--regime", "full", "--view-seeds",
                    "0,1", "--out", tmp_path / "x")  # fmt: skip
    assert result.exit_code == 1 and "are not drawn" in result.output
    result = invoke("train", "--shards", shards, *BASE, "--view-seeds", "0,0")
    assert result.exit_code == 2 and "--view-seeds" in result.output


def test_seeds_resume_the_folders_with_a_run_and_start_the_others(shards, tmp_path):
    out = tmp_path / "runs" / "an"
    args = ["train", "--shards", shards, "--features", FEAT, "--method", "an", "--epochs", 3]
    first = invoke(*args, "--seeds", "0", "--stop-after-epochs", 1, "--out", out)
    assert first.exit_code == 0 and "stopped after epoch 1" in first.output
    assert len(read_metrics(tmp_path / "runs" / "an-s0")) == 1
    resumed = invoke("train", "--seeds", "0,1", "--resume", "--out", out)  # the sibling's options
    assert resumed.exit_code == 0, resumed.output
    for seed in (0, 1):
        whole = tmp_path / f"whole-{seed}"
        assert invoke(*args, "--seed", seed, "--out", whole).exit_code == 0
        mine = tmp_path / "runs" / f"an-s{seed}"
        assert read_metrics(mine) == read_metrics(whole), seed
        config = json.loads((mine / "config.json").read_text())
        assert config["run"]["seed"] == seed and config["method"]["epochs"] == 3
    again = invoke("train", "--seeds", "0,1", "--resume", "--out", out)  # both done: no work
    assert again.exit_code == 0, again.output
