"""Bootstrap confidence intervals of test mAP and paired comparisons (train/bootstrap.py): the
vectorised draws equal a hand-written bootstrap (resample the rows, score with
train.metrics) with the same seed, ties included; identical predictions beat each other in
half the draws; a trained run stores its interval and draws, the leaderboard shows them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from tests.support.train_fixtures import FEAT, get_shards, read_summary
from train import metrics
from train.bootstrap import FILE, bootstrap_map, compare, interval


def hand_bootstrap(probs, labels, draws, seed):
    idx = np.random.default_rng(seed).integers(0, len(probs), size=(draws, len(probs)))
    return np.array([metrics.evaluate(probs[i], labels[i])["mAP"] for i in idx])


@pytest.mark.parametrize("seed", [0, 7])
def test_equals_a_hand_written_bootstrap(seed):
    rng = np.random.default_rng(seed)
    probs = np.round(rng.random((40, 5)), 1)  # ties: a tie group is one threshold
    labels = np.where(rng.random((40, 5)) < 0.25, 1, -1)
    labels[:, 4] = -1  # a class without positives: AP 0, still averaged
    labels[:2, 3] = 1
    mine = bootstrap_map(probs, labels, draws=200, seed=seed)
    assert mine == pytest.approx(hand_bootstrap(probs, labels, 200, seed), abs=1e-9)
    ci = interval(mine)
    want = np.percentile(hand_bootstrap(probs, labels, 200, seed), [2.5, 97.5])
    assert (ci.low, ci.high) == pytest.approx(tuple(want), abs=1e-9)


def test_draws_in_chunks_are_the_stream_of_one_call():
    rng = np.random.default_rng(3)
    probs, labels = rng.random((30, 3)), (rng.random((30, 3)) < 0.3).astype(int)
    import train.bootstrap as b

    whole = bootstrap_map(probs, labels, draws=50)
    old, b._CHUNK_ENTRIES = b._CHUNK_ENTRIES, 30 * 7  # 7 draws at a time
    try:
        assert bootstrap_map(probs, labels, draws=50) == pytest.approx(whole, abs=1e-12)
    finally:
        b._CHUNK_ENTRIES = old


def test_paired_comparisons():
    rng = np.random.default_rng(1)
    probs, labels = rng.random((50, 4)), (rng.random((50, 4)) < 0.3).astype(int)
    a = bootstrap_map(probs, labels, draws=300)
    same = compare(a, a.copy())
    assert same["wins"] == 50.0 and same["diff"] == 0.0 and same["low"] == same["high"] == 0.0
    better = bootstrap_map(np.where(labels == 1, probs + 0.5, probs), labels, draws=300)
    c = compare(better, a, observed=3.0)
    assert c["wins"] > 95 and c["low"] > 0 and c["diff"] == 3.0
    assert compare(a, better)["wins"] == pytest.approx(100 - c["wins"])


def test_a_run_stores_its_interval_and_the_leaderboard_shows_it(tmp_path_factory, tmp_path):
    shards = get_shards(tmp_path_factory)
    out = tmp_path / "runs" / "an"
    args = ["train", "--shards", shards, "--features", FEAT, "--method", "an", "--epochs", 2]
    result = CliRunner().invoke(cli.main, [str(a) for a in [*args, "--out", out]])
    assert result.exit_code == 0, result.output
    summary = read_summary(out)
    ci = summary["test_ci"]
    probs = np.load(out / "predictions" / "test.npy")
    from shards.shardset import open_shard_set

    labels = open_shard_set(shards).full_labels("test")
    draws = bootstrap_map(probs, labels)
    assert np.load(out / FILE) == pytest.approx(draws, abs=1e-12)
    assert (ci["low"], ci["high"]) == pytest.approx((interval(draws).low, interval(draws).high))
    assert ci["draws"] == 1000 and ci["rows"] == len(labels) and ci["low"] < summary["test"]["mAP"]
    board = CliRunner().invoke(cli.main, ["leaderboard", str(tmp_path / "runs")])
    assert f"| {ci['low']:.2f}–{ci['high']:.2f} |" in board.output
    saved = json.loads((tmp_path / "runs" / "leaderboard.json").read_text())
    assert saved["rows"][0]["ci"] == pytest.approx([ci["low"], ci["high"]])
