"""Every numeric run, method and regime option has a range, checked before any work with the
option named: each registered method's config, ``RunConfig`` and the label regimes declare one
for every numeric field, and a value outside it (below, above, NaN, infinite) is refused."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

import cli
from shards.base.errors import WsmlError
from shards.base.options import Range, declared_ranges, numeric_fields
from shards.regimes import REGIMES, create_regime
from tests.support.cli_checks import assert_refused
from tests.support.train_fixtures import FEAT, get_shards
from train.config import RunConfig
from train.methods import METHODS

CONFIGS = {m.config.__name__: (m, m.config) for m in METHODS}  # one method per config class


def outside(r: Range, integer: bool) -> list:
    """Values just outside ``r`` (and NaN and infinities for a float)."""
    step = 1 if integer else 1e-3
    out = [r.lo - (0 if r.lo_open else step)]
    if r.hi != math.inf:
        out.append(r.hi + (0 if r.hi_open else step))
    return out if integer else [*out, math.nan, math.inf, -math.inf]


def fields_of(cls):
    for name in numeric_fields(cls):
        integer = "int" in str(cls.__dataclass_fields__[name].type)
        yield name, declared_ranges(cls)[name], integer


@pytest.mark.parametrize("cls", [RunConfig, *(c for _, c in CONFIGS.values()),
                                 *(r.params for r in REGIMES)], ids=lambda c: c.__name__)  # fmt: skip
def test_every_numeric_option_declares_a_range(cls):
    assert numeric_fields(cls) or cls.__name__ in ("ColeConfig", "IunConfig")
    missing = [n for n in numeric_fields(cls) if n not in declared_ranges(cls)]
    assert missing == []


METHOD_CASES = [
    (method.name, name, value)
    for method, cls in CONFIGS.values()
    for name, r, integer in fields_of(cls)
    for value in outside(r, integer)
]


@pytest.mark.parametrize("method, name, value", METHOD_CASES)
def test_a_method_option_out_of_range_is_refused(method, name, value):
    info = next(m for m in METHODS if m.name == method)
    with pytest.raises(WsmlError) as e:
        info.create_config("coco", {name: repr(value) if isinstance(value, float) else str(value)})
    assert f"{name} must be " in str(e.value)


def test_each_range_holds_the_defaults():
    for method, _ in CONFIGS.values():
        for dataset in ("voc", "coco", "nuswide", "cub", "openimages-v3"):
            method.create_config(dataset, {})  # the papers' values, in range


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.mark.parametrize(
    "option",
    [
        "threshold=2",
        "threshold=-1",
        "stop_patience=-1",
        "weight_decay=-1",
        "head_lr_mult=-1",
        "lr=nan",
        "epochs=100000000",
        "fraction=0",
        "image_size=-1",
        "eval_batch_size=99999999999",
        "sweep_lrs=0.1,-1",
        "sweep_batches=0",
    ],
)
def test_train_refuses_an_option_out_of_range_before_any_work(shards, tmp_path, option):
    out = tmp_path / "runs" / "r"
    args = ["train", "--shards", shards, "--method", "an", "--features", FEAT, "--out", out]
    name = option.split("=")[0]
    line = assert_refused(invoke(*args, "-o", option), f"{name} must be")
    assert "Traceback" not in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("seed", ["--seed", "--seeds"])
def test_train_refuses_a_seed_numpy_cannot_take(shards, tmp_path, seed):
    args = ["train", "--shards", shards, "--method", "an", "--features", FEAT]
    result = invoke(*args, "--out", tmp_path / "r", seed, "99999999999999999999")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "4294967295" in result.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "regime, params",
    [
        ("partial", {"fraction": 0.0}),
        ("partial", {"fraction": math.nan}),
        ("partial", {"seed": 2**32}),
        ("noisy", {"flip_pos": 1.5}),
        ("single-positive", {"num_pos": 0}),
        ("single-positive", {"class_weights": (1.0, math.inf)}),
    ],
)
def test_a_regime_parameter_out_of_range_is_refused(regime, params):
    with pytest.raises(WsmlError, match=f"^{next(iter(params))} must be "):
        create_regime(regime, **params)


def test_shard_refuses_a_regime_seed_out_of_range(tmp_path):
    from tests.support.cli_checks import shard_cli
    from tests.support.raw_datasets import make_coco

    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    result = shard_cli(root, tmp_path / "out", "--regime", "partial:seed=99999999999999999999")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "seed must be in [0, 4294967295]" in result.output
    assert not (tmp_path / "out").exists()
