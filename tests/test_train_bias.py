"""Biased single-positive and noisy views train like any other view (cached features, CPU)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main
from tests.support.cli_checks import shard_cli
from tests.support.raw_datasets import make_coco
from tests.support.train_fixtures import FEAT, add_caches
from train.config import RunConfig
from train.run import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("bias-shards")
    out = base / "shards"
    assert shard_cli(make_coco(base / "raw", n_train=40, n_val=12), out).exit_code == 0
    add_caches(out)
    for args in (["--bias", "size"], ["--bias", "location"]):
        assert CliRunner().invoke(main, ["observe", str(out), "single-positive", *args]).exit_code == 0  # fmt: skip
    r = CliRunner().invoke(main, ["observe", str(out), "noisy", "--flip-pos", "0.2"])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize(
    ("method", "view"),
    [("an", "single-positive-size"), ("role", "single-positive-location"), ("iu", "noisy-p0.2-q0")],
)
def test_biased_and_noisy_views_train(shards, tmp_path, method, view):
    """A noisy view trains as partial labels: every entry observed, taken as given."""
    config = RunConfig(
        str(shards), method, features=FEAT, regime=view, out=str(tmp_path / "run"),
        method_options={"epochs": "1", "lr": "0.01"},
    )  # fmt: skip
    summary = train(config)
    assert summary["regime"] == view
