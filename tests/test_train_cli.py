"""``cli.py train / eval / methods`` through click's CliRunner: a run, a resume without repeating
the options, and every refusal, each before any work (nothing written)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cli
from shards.base.errors import WsmlError
from tests.support.cli_checks import assert_refused
from tests.support.train_fixtures import CLIP, FEAT, NAN, WIDE, get_shards
from train.context import Context


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def train_args(shards, out, method="an", *extra):
    return ["train", "--shards", shards, "--method", method, "--out", out, *extra]


def test_train_resume_and_eval(shards, tmp_path):
    out = tmp_path / "run"
    args = train_args(shards, out, "an", "--features", FEAT, "--epochs", 3, "--lr", 0.01)
    result = invoke(*args, "--stop-after-epochs", 1)
    assert result.exit_code == 0, result.output
    assert "--resume" in result.output
    result = invoke("train", "--resume", "--out", out)  # the saved options are the defaults
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.output and "test mAP" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_trained"] == 3
    result = invoke("eval", "--run", out, "--split", "test")
    assert result.exit_code == 0, result.output
    assert f"mAP {summary['test']['mAP']:.2f}" in result.output


def test_methods_lists_every_method_with_regimes_and_paper():
    result = invoke("methods")
    assert result.exit_code == 0
    for name in ("an", "role", "em-apl", "vlpl", "ll-cp", "bce", "asl", "gr-loss", "aevlp"):
        assert any(line.startswith(name + " ") for line in result.output.splitlines()), name
    assert "single-positive" in result.output and "Cole et al., CVPR 2021" in result.output
    # where a release differs from its paper, and what -o released=true switches
    assert "release: negative pseudo-labels written as 0" in result.output
    assert "[needs_clip, needs_crops]" in result.output


def test_unknown_method_is_a_usage_error_listing_the_choices(shards, tmp_path):
    result = invoke(*train_args(shards, tmp_path / "r", "rolle", "--features", FEAT))
    assert result.exit_code == 2
    assert "Did you mean role" in result.output and "Choices: aevlp, an, an-ls" in result.output
    assert not (tmp_path / "r").exists()


REFUSALS = {
    "unknown option": (["--features", FEAT, "-o", "alpah=1"], "an", ["alpah", "lr", "clip"]),
    "bad option value": (["--features", FEAT, "-o", "lr=fast"], "an", ["lr", "fast"]),
    "regime the method cannot use": (
        ["--features", FEAT, "--regime", "single-positive"],
        "bce",
        ["bce", "single-positive", "full"],
    ),
    "missing view": (["--features", FEAT, "--regime", "partial-p0.3"], "an", ["partial-p0.3"]),
    "vlpl without a CLIP cache": (["--features", FEAT], "vlpl", ["vlpl", "CLIP", "cache-clip"]),
    "vlpl with a missing CLIP cache": (
        ["--features", FEAT, "--clip", "nope"],
        "vlpl",
        ["nope", CLIP],
    ),
    "missing features": (["--features", "nope"], "an", ["nope", FEAT, "cache-features"]),
    "linear without features": ([], "an", ["--features", f"{FEAT}, {NAN}, {WIDE}"]),
    "e2e with features": (["--setting", "e2e", "--features", FEAT], "an", ["--features"]),
    "bad preset": (["--setting", "e2e", "-o", "preset=huge"], "an", ["huge", "cole448"]),
    "bad schedule": (["--features", FEAT, "-o", "schedule=cyclic"], "asl", ["onecycle"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_before_any_work(shards, tmp_path, case):
    extra, method, names = REFUSALS[case]
    out = tmp_path / "run"
    result = invoke(*train_args(shards, out, method, *extra))
    assert_refused(result, *names, out=out)


@pytest.fixture(scope="module")
def done(shards, tmp_path_factory):
    """A finished two-epoch run to reuse."""
    out = tmp_path_factory.mktemp("done") / "run"
    result = invoke(*train_args(shards, out, "an", "--features", FEAT, "--epochs", 2))
    assert result.exit_code == 0, result.output
    return out


def test_reusing_a_run_folder(shards, done, tmp_path):
    base = train_args(shards, done, "an", "--features", FEAT, "--epochs", 2)
    before = (done / "metrics.jsonl").read_text()
    assert_refused(invoke(*base), "already holds a run", "--resume", "--overwrite")
    # features of another dimension for a run trained on FEAT's
    wrong = train_args(shards, done, "an", "--features", WIDE, "--epochs", 2, "--resume")
    assert_refused(invoke(*wrong), "feature_dim", "24", "40")
    assert_refused(invoke(*base, "--lr", 0.5, "--resume"), "lr")
    assert_refused(invoke("train", "--resume", "--out", tmp_path / "none"), "holds no run")
    assert (done / "metrics.jsonl").read_text() == before


def test_run_folder_of_another_dataset(shards, done, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((done / "config.json").read_text())
    config.update(dataset="voc2012", classes=["aeroplane", "bicycle"])
    (other / "config.json").write_text(json.dumps(config))
    for flags in ([], ["--resume"], ["--overwrite"]):
        args = train_args(shards, other, "an", "--features", FEAT, *flags)
        assert_refused(invoke(*args), "voc2012", "another --out")
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]


def test_eval_of_a_folder_without_a_run(tmp_path):
    assert_refused(invoke("eval", "--run", tmp_path), "no run")


def test_the_global_batch_must_divide_over_the_ranks():
    with pytest.raises(WsmlError, match="divide evenly over 3 ranks"):
        Context(rank=0, world_size=3).local_batch(8)
    assert Context(rank=1, world_size=2).local_batch(8) == 4


def test_non_finite_features_name_the_cache_split_and_rows(shards, tmp_path):
    result = invoke(*train_args(shards, tmp_path / "r", "an", "--features", NAN))
    assert_refused(result, f"features {NAN!r}", "split train", "row(s) 0, 1, 2, 3, 4", "NaN")


def test_vlpl_reads_its_clip_cache_from_o_clip(shards, tmp_path):
    out = tmp_path / "r"
    args = train_args(shards, out, "vlpl", "--features", FEAT, "-o", f"clip={CLIP}", "--epochs", 1)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["clip"] == CLIP and "clip" not in config["run"]["method_options"]
