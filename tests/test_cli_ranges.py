"""Options that must be refused: every numeric option of every command has a valid range, and
malformed regime specs and devices are usage errors (exit 2), before any work."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import cli
from tests.support.cli_checks import shard_cli
from tests.support.raw_datasets import make_coco
from tests.support.train_fixtures import FEAT, get_shards


def numeric_options(cmd: click.Command, path: str = ""):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from numeric_options(sub, f"{path} {name}".strip())
        return
    for p in cmd.params:
        if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)):
            yield path, p


def test_every_numeric_option_has_a_range():
    found = list(numeric_options(cli.main))
    assert len(found) > 30
    ranged = (click.IntRange, click.FloatRange)
    assert [f"{c} {p.opts[0]}" for c, p in found if not isinstance(p.type, ranged)] == []


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--max-side", "-5"], "--max-side"),
        (["--jpeg-quality", "1000"], "--jpeg-quality"),
        (["--workers", "-1"], "--workers"),
        (["--val-frac", "1.5"], "--val-frac"),
        (["--regime", "partial:fraction=abc"], "fraction=abc"),
        (["--regime", "partial:seed=x"], "an integer"),
    ],
)
def test_shard_refuses_bad_values_as_usage_errors(tmp_path, extra, named):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    result = shard_cli(root, tmp_path / "out", *extra)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_bad_device_is_a_usage_error(tmp_path):
    args = ["cache-clip", "--shards", str(tmp_path), "--device", "foo"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert "foo" in result.output and "cuda:N" in result.output


def test_train_refuses_a_bad_device_option(tmp_path_factory, tmp_path):
    shards = get_shards(tmp_path_factory)
    out = tmp_path / "runs" / "r"
    args = ["train", "--shards", str(shards), "--method", "an", "--features", FEAT]
    result = CliRunner().invoke(cli.main, [*args, "--out", str(out), "-o", "device=gpu0"])
    assert result.exit_code == 1, result.output
    assert "gpu0" in result.output and "cuda:N" in result.output
    assert not (tmp_path / "runs").exists()  # nor the folder made to hold the run's lock


@pytest.mark.parametrize("options", [{"max_side": -5}, {"jpeg_quality": 1000}, {"max_bad": 2.0}])
def test_the_library_refuses_the_same_values(tmp_path, options):
    from shards.base.errors import WsmlError
    from shards.convert.convert import convert

    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    with pytest.raises(WsmlError, match=next(iter(options)).replace("_", "-")):
        convert("coco", root, tmp_path / "out", {}, options, workers=1)
    assert not (tmp_path / "out").exists()
