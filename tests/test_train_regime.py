"""``--regime partial -o fraction=F`` trains on the partial view with that fraction, and names
the command that makes it when the shard set has none."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from cli import main
from shards.base.errors import WsmlError
from tests.support.train_fixtures import FEAT, get_shards
from train.config import RunConfig
from train.run import train


def test_partial_regime_by_fraction(tmp_path_factory, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(get_shards(tmp_path_factory), shards)
    opts = {"epochs": "1", "lr": "0.01", "fraction": "0.5"}
    config = RunConfig(str(shards), "iu", features=FEAT, regime="partial", method_options=opts)
    with pytest.raises(WsmlError, match=r"observe .* partial --fraction 0\.5"):
        train(RunConfig(**{**config.__dict__, "out": str(tmp_path / "a")}))
    result = CliRunner().invoke(main, ["observe", str(shards), "partial", "--fraction", "0.5"])
    assert result.exit_code == 0, result.output
    summary = train(RunConfig(**{**config.__dict__, "out": str(tmp_path / "b")}))
    assert summary["regime"] == "partial-p0.5"


def test_bce_on_a_noisy_view_names_the_methods_that_train_bce_on_it(tmp_path_factory, tmp_path):
    """A noisy view has no unknown entry, so iu and an train exactly BCE on it: the refusal
    says so instead of only "bce takes full labels"."""
    shards = tmp_path / "shards"
    shutil.copytree(get_shards(tmp_path_factory), shards)
    made = CliRunner().invoke(main, ["observe", str(shards), "noisy", "--flip-pos", "0.2"])
    assert made.exit_code == 0, made.output
    args = ["train", "--shards", str(shards), "--features", FEAT, "--regime", "noisy-p0.2-q0"]
    args += ["--epochs", "1", "--lr", "0.01"]
    result = CliRunner().invoke(main, [*args, "--method", "bce", "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = result.output.strip().splitlines()[-1]
    assert "method bce does not train on 'partial' labels" in error, error
    assert "iu (BCE on the observed entries)" in error and "an (unknown entries" in error, error
    result = CliRunner().invoke(main, [*args, "--method", "iu", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
