"""``--regime partial -o fraction=F`` trains on the partial view with that fraction, and names
the command that makes it when the shard set has none."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from cli import main
from shards.errors import WsmlError
from tests.train_fixtures import FEAT, get_shards
from train.config import RunConfig
from train.loop import train


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
