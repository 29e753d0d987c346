"""``bench train`` smoke runs on tiny inputs: every way of the linear grid runs and reports,
and the e2e figures are consistent (no timing asserts: benchmarks are not tests)."""

from __future__ import annotations

import pytest
import torchvision  # noqa: F401  (imported once here, not in every loader worker)

from bench.train import E2EBenchOptions, LinearBenchOptions, run_e2e_bench, run_linear_bench
from pipelines.dali_loader import dali_available
from tests.support.train_fixtures import get_shards
from train.context import cpu_threads


def test_linear_bench_runs_the_three_ways_in_alternating_rounds():
    """Every round runs every way once; each way's figure is the median of the rounds, and
    each ratio to the sweep the median of the rounds' own ratios, with their range."""
    import statistics

    lines = []
    rows = {"train": 320, "val": 40, "test": 60}
    opts = LinearBenchOptions(
        ("an", "role"), rows=rows, dim=16, classes=5, repeats=2, profile_steps=5
    )
    out = run_linear_bench(opts, echo=lines.append)
    ways = ("papers", "runs", "sweep")
    assert out["rows"] == rows and out["repeats"] == 2 and out["ways"] == ways
    assert set(out["methods"]) == {"an", "role"}
    for figures in out["methods"].values():
        rounds = figures["rounds"]
        assert len(rounds) == 2 and all(list(r) == list(ways) for r in rounds)
        for w in ways:
            totals = [sum(r[w]) for r in rounds]
            assert figures[f"{w}_total"] == statistics.median(totals) > 0
            assert figures[f"{w}_train"] == statistics.median(r[w][0] for r in rounds)
        for w in ("papers", "runs"):
            ratio = figures["ratios"][f"{w}/sweep"]
            each = [sum(r[w]) / sum(r["sweep"]) for r in rounds]
            assert ratio["runs"] == [round(x, 3) for x in each]
            assert ratio["low"] == min(each) <= ratio["median"] <= max(each) == ratio["high"]
        assert figures["peak_rss_gb"] > 0
    ran = [line for line in lines if "papers/sweep" in line]
    assert ran[-1].startswith("role") and "–" in ran[-1]
    # the profile: each sweep group (AN stacks a batch size's 4 members; ROLE cannot stack:
    # a group per member) timed part by part
    from bench.train_profile import PARTS

    an, role = (out["methods"][m]["profile"] for m in ("an", "role"))
    assert [(g["batch_size"], g["members"]) for g in an] == [(8, 4), (16, 4)]
    assert [(g["batch_size"], g["members"]) for g in role] == [(8, 1)] * 4 + [(16, 1)] * 4
    for g in an + role:
        assert all(g[p] >= 0 for p in PARTS) and g["optimizer"] > 0 and g["ms_per_step"] > 0
        assert g["ms_per_step"] == pytest.approx(1e3 * sum(g[p] for p in PARTS) / 5)
    assert lines[-1].startswith("role     sweep step, batch 16, 1 members")


@pytest.mark.slow
@pytest.mark.parametrize(
    "loader",
    [
        "torch",
        pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="no DALI")),
    ],
)
def test_e2e_bench_on_the_tiny_shard_set(tmp_path_factory, loader):
    """DALI: 21 steps of 10 an epoch begin 3 epochs, with one graph build, in the warm-up."""
    shards = get_shards(tmp_path_factory)
    lines = []
    steps = {"torch": 3, "dali": 20}[loader]
    with cpu_threads(1):
        opts = E2EBenchOptions(
            methods=("an",), backbone="test_resnet", image_size=32, batch_size=16, steps=steps,
            warmup=1, loader=loader,
        )  # fmt: skip
        out = run_e2e_bench(str(shards), opts, echo=lines.append)
    r = out["methods"]["an"]
    assert (r["backbone"], r["input"], out["batch_size"], out["steps"]) == (
        "test_resnet",
        "center32",
        16,
        steps,
    )
    assert 0 <= r["data_wait"] < 1
    assert r["images_per_s"] == pytest.approx(16 * 1e3 / r["ms_per_step"])
    assert lines[-1].split()[:3] == ["an", "test_resnet", "center32"]
    want = {"torch": [0, 0], "dali": [1, 3]}[loader]  # (builds, epochs begun)
    assert r["dali_builds"] == want and r["build_s"] == 0
    assert lines[-1].endswith("(DALI graph built 1x in 3 epochs)") == (loader == "dali")


@pytest.mark.slow
def test_e2e_bench_on_generated_openimages_labels(tmp_path):
    """--annotations in e2e: the photos get Open Images V3 labels over --classes (ragged, with
    unknowns, sharded by the real converter); the method trains on them without --regime and
    the per-batch join is reported."""
    from bench.loader import create_bench_set
    from shards.shardset import open_shard_set

    root = create_bench_set(tmp_path, 40, val_frac=0.1, classes=300, annotations=6)
    ss = open_shard_set(root)
    labels = ss.full_lists("train")
    assert len(ss.classes) == 300 and labels.has_unknown()
    assert {s: ss.split(s)["num_samples"] for s in ("train", "val", "test")} == {
        "train": 32, "val": 4, "test": 4
    }  # fmt: skip
    positives, annotated = labels.class_counts()
    assert (labels.positives.offsets[1:] > labels.positives.offsets[:-1]).all()  # each has one
    assert 4 < annotated.sum() / len(labels) < 6 and positives.sum() < annotated.sum()
    lines = []
    with cpu_threads(1):
        opts = E2EBenchOptions(
            methods=("ll-ct",), backbone="test_resnet", image_size=32, batch_size=8, steps=2,
            warmup=1, loader="torch", classes=300, annotations=6,
        )  # fmt: skip
        out = run_e2e_bench(None, opts, workdir=str(tmp_path), echo=lines.append)
    assert "300 classes" in lines[1] and lines[2].split()[-2:] == ["ms", "join"]
    r = out["methods"]["ll-ct"]
    assert out["classes"] == 300 and out["images"] == 40
    assert 0 < r["join_ms"] < r["ms_per_step"]


def test_linear_bench_with_openimages_shaped_labels():
    """--annotations: ragged labels and memory-mapped features; the chosen ways only."""
    from shards.base.errors import WsmlError

    lines = []
    rows = {"train": 300, "val": 40, "test": 60}
    opts = LinearBenchOptions(("ll-ct",), rows=rows, dim=8, classes=50, batches=(16,),
                              lrs=(1e-3,), annotations=4, ways=("runs", "sweep"),
                              repeats=1)  # fmt: skip
    out = run_linear_bench(opts, echo=lines.append)
    timed = {f"{w}_{p}" for w in ("runs", "sweep") for p in ("train", "eval", "total")}
    assert set(out["methods"]["ll-ct"]) == timed | {"peak_rss_gb", "rounds", "ratios"}
    assert set(out["methods"]["ll-ct"]["ratios"]) == {"runs/sweep"}
    assert out["annotations"] > 300 and out["feature_mb"] == 400 * 8 * 2 / 1e6
    assert "memory-mapped" in lines[1] and lines[-1].endswith("GB")
    with pytest.raises(WsmlError, match="--ways runs,sweep"):
        run_linear_bench(LinearBenchOptions(rows=rows, annotations=4, ways=("papers",)))


def test_synthetic_labels_have_openimages_shape():
    import numpy as np

    from bench.sparse import synthetic_labels

    labels = synthetic_labels(20_000, 500, 8, np.random.default_rng(0))
    pos, annotated = labels.class_counts()
    assert annotated.sum() / len(labels) == pytest.approx(8, rel=0.1)  # less its repeats
    assert pos.sum() / annotated.sum() == pytest.approx(0.6, abs=0.01)
    assert annotated[:50].sum() > 5 * annotated[-50:].sum()  # long-tailed
    assert labels.has_unknown()


def test_synthetic_features_are_a_read_only_map(tmp_path):
    import numpy as np
    import torch

    from bench.sparse import synthetic_features, synthetic_labels

    labels = synthetic_labels(70_000, 30, 3, np.random.default_rng(0))  # > one chunk
    x = synthetic_features(
        tmp_path / "x.npy", labels, 4, torch.eye(30, 4), np.random.default_rng(1)
    )
    assert isinstance(x, np.memmap) and not x.flags.writeable
    assert x.shape == (70_000, 4) and x.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(x[-5:].astype(np.float32), axis=1), 1, atol=1e-2)


def test_peak_rss_counts_from_its_reset():
    import numpy as np

    from bench.harness import PeakRSS

    rss = PeakRSS()
    big = np.ones(64 * 2**20 // 8)  # 64 MB touched
    del big
    rss.reset()
    before = rss.gb()
    again = np.ones(32 * 2**20 // 8)
    assert rss.gb() >= before + 0.025
    del again
