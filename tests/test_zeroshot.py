"""clip-zeroshot: a run that trains nothing, scored once (epoch 0); its logits are CLIP's
100 x cos(image, class text), and its summary reports VLPL's pseudo-label quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shards.caches import read_split, read_text
from shards.shardset import open_shard_set
from tests.support.train_fixtures import CLIP, FEAT, get_shards, read_metrics, read_summary
from train.config import RunConfig
from train.leaderboard import write_leaderboard
from train.methods.vlpl import pseudo_labels
from train.run import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


def zeroshot(shards, out, features=CLIP, **kw):
    config = RunConfig(
        shards=str(shards), method="clip-zeroshot", features=features, out=str(out), **kw
    )
    return train(config)


def test_zeroshot_equals_hand_computed_cosine_logits(shards, tmp_path):
    summary = zeroshot(shards, tmp_path / "runs" / "zs")
    assert summary["best_epoch"] == 0 and summary["epochs_trained"] == 0
    assert summary["finished"] and summary["method"] == "clip-zeroshot"
    text = read_text(shards, CLIP).astype(np.float64)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    for split in ("val", "test"):
        x = read_split(shards, CLIP, split).astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        want = 1 / (1 + np.exp(-100.0 * x @ text.T))
        got = np.load(tmp_path / "runs" / "zs" / "predictions" / f"{split}.npy")
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "zs")] == [0]
    # VLPL's pseudo-positives on the training split, counted by hand
    ss = open_shard_set(shards)
    image = torch.from_numpy(read_split(shards, CLIP, "train").astype(np.float32))
    pl = pseudo_labels(image, torch.from_numpy(read_text(shards, CLIP)), 0.01, 0.3, 0.0)
    pred, true = pl.numpy() == 1, ss.full_labels("train") == 1
    quality = read_summary(tmp_path / "runs" / "zs")["vlpl_pseudo_labels"]
    assert quality["pseudo_positives"] == pred.sum() and quality["clean_positives"] == true.sum()
    assert quality["precision"] == pytest.approx(100 * (pred & true).sum() / pred.sum())
    assert quality["recall"] == pytest.approx(100 * (pred & true).sum() / true.sum())
    rows, _ = write_leaderboard(tmp_path / "runs")
    assert [r["method"] for r in rows] == ["clip-zeroshot"]


def test_zeroshot_resume_is_a_no_op_and_needs_a_clip_cache(shards, tmp_path):
    first = zeroshot(shards, tmp_path / "zs")
    again = zeroshot(shards, tmp_path / "zs", resume=True)
    assert again["test"] == first["test"]
    assert len(read_metrics(tmp_path / "zs")) == 1
    from shards.base.errors import WsmlError

    with pytest.raises(WsmlError, match="no class-text embeddings"):
        zeroshot(shards, tmp_path / "feat", features=FEAT)
    with pytest.raises(WsmlError, match="--sweep does not apply"):
        zeroshot(shards, tmp_path / "sweep", sweep=True)
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(WsmlError, match="epochs must be 0"):
        zeroshot(shards, tmp_path / "e", method_options={"epochs": "2"})


def test_zeroshot_through_the_cli(shards, tmp_path):
    from click.testing import CliRunner

    import cli

    args = ["train", "--shards", shards, "--method", "clip-zeroshot", "--features", CLIP]
    result = CliRunner().invoke(cli.main, [str(a) for a in [*args, "--out", tmp_path / "zs"]])
    assert result.exit_code == 0, result.output
    assert "best epoch 0 of 0" in result.output and "VLPL pseudo-positives" in result.output
    assert "clip-zeroshot" in CliRunner().invoke(cli.main, ["methods"]).output
