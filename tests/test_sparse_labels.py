"""Labels kept ragged from the table to the batch (issue 14): the sparse path gives exactly the
dense path's batches, losses, label state and metrics; features read from a memory map give
the in-memory numbers; frequency groups on a hand-made case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.labels import DeviceLabels
from shards.lists import LabelLists, Lists
from tests.test_methods import CASES, ROWS, L, build, make_data, state_of
from train import metrics
from train.context import Context
from train.data import FeatureData
from train.entry_metrics import evaluate_annotated, frequency_groups, group_map
from train.evaluate import score

STEPS = ([0, 3, 5, 7], [1, 2, 4, 11], [6, 8, 9, 10])


def source(regime: str, kind: str) -> dict[str, torch.Tensor]:
    """make_data's split; ``kind="full"``: clean labels with every entry annotated (VOC-like),
    ``"partial"``: clean labels with unknowns (OpenImages-like)."""
    data = make_data(regime)
    if kind == "full":
        data["full"] = torch.where(data["full"] == 1, 1, -1).to(torch.int8)
    return data


def feature_data(data: dict[str, torch.Tensor]) -> FeatureData:
    split = {
        "input": torch.zeros(ROWS, 3, dtype=torch.float16),
        "observed": LabelLists.from_dense(data["observed"].numpy()),
        "full": LabelLists.from_dense(data["full"].numpy()),
        "embedding": data["embedding"].to(torch.float16),
    }
    splits = {s: split for s in ("train", "val", "test")}
    splits["train"] = {**split, "crops": data["crops"].to(torch.float16)}  # aevlp's tiles
    return FeatureData(splits, Context.create("cpu"), seed=0, batch_size=4)


def dense_batch(data, rows) -> dict[str, torch.Tensor]:
    """The batch as the dense (N, L) matrices gave it before labels were kept ragged."""
    rows = torch.as_tensor(rows)
    out = {k: data[k][rows] for k in ("full", "observed")}
    out["embedding"] = data["embedding"].to(torch.float16)[rows].float()
    out["crops"] = data["crops"].to(torch.float16)[rows].float()
    out["row"] = rows
    return out


def run_steps(method, batch_of) -> list[float]:
    """A few steps over epochs around warm-ups and epoch passes; the losses seen."""
    g = torch.Generator().manual_seed(1)
    losses = []
    for epoch in (1, 2, 5, 6):
        method.start_epoch(epoch)
        for step, rows in enumerate(STEPS):
            logits = torch.randn(len(rows), L, generator=g).requires_grad_()
            out = method(logits, batch_of(rows), epoch=epoch, step=step)
            out["loss"].backward()
            method.after_backward()
            losses.append(float(out["loss"].detach()))
            with torch.no_grad():
                for p in (p for grp in method.extra_parameters() for p in grp["params"]):
                    p -= 0.5 * p.grad
                    p.grad = None
        if method.wants_epoch_pass(epoch):
            probs = torch.rand(ROWS, L, generator=g)
            method.end_epoch(epoch, (torch.randperm(ROWS, generator=g), probs))
    return losses


@pytest.mark.parametrize("kind", ["full", "partial"])
@pytest.mark.parametrize("name,regime", CASES)
def test_sparse_batches_give_the_dense_losses_and_state(name, regime, kind):
    data = source(regime, kind)
    sparse = feature_data(data)
    dense_method, _ = build(name, regime)
    sparse_method, _ = build(name, regime)
    want = run_steps(dense_method, lambda rows: dense_batch(data, rows))
    got = run_steps(sparse_method, lambda rows: sparse.batch("train", torch.tensor(rows)))
    assert got == want
    a, b = state_of(dense_method), state_of(sparse_method)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dense_bytes", [0, 1 << 20])
def test_device_labels_kept_ragged_or_dense_give_the_same_batches(monkeypatch, dense_bytes):
    """A split too large to keep dense (Open Images) makes each batch from its ragged lists; a
    small one (COCO) gathers rows of its dense matrix: the same batches."""
    import pipelines.labels

    monkeypatch.setattr(pipelines.labels, "DENSE_BYTES", dense_bytes)
    y, _ = random_case(2)
    labels = DeviceLabels(LabelLists.from_dense(y), torch.device("cpu"))
    assert (labels.matrix is None) == (dense_bytes == 0)
    rows = torch.tensor([5, 0, 59, 5, 31])
    assert np.array_equal(labels.dense(rows).numpy(), y[rows.numpy()])
    assert labels.dense(rows[:0]).shape == (0, 7)


def test_null_negatives_rows_are_fully_annotated():
    """A Parquet row with null negatives (a fully annotated source) is negative everywhere
    it is not positive, on the host and on the device alike."""
    pos = Lists.from_rows([[0, 2], [1], [], [3]])
    neg = Lists(np.array([0, 0, 1, 1, 1]), np.array([0]), np.array([False, True, False, True]))
    labels = LabelLists(pos, neg, 4)
    want = np.array([[1, -1, 1, -1], [-1, 1, 0, 0], [-1, -1, -1, -1], [0, 0, 0, 1]], np.int8)
    assert np.array_equal(labels.dense(), want)
    rows = torch.tensor([3, 0, 2, 1, 0])
    assert np.array_equal(DeviceLabels(labels, torch.device("cpu")).dense(rows), want[rows])
    positives, annotated = labels.class_counts()
    assert positives.tolist() == [1, 1, 1, 1] and annotated.tolist() == [3, 3, 2, 3]
    assert labels.has_unknown() and not LabelLists.from_dense(want[[0, 2]]).has_unknown()


def random_case(seed: int, rows: int = 60, classes: int = 7):
    rng = np.random.default_rng(seed)
    y = rng.choice(np.array([-1, 0, 1], np.int8), size=(rows, classes), p=[0.3, 0.5, 0.2])
    y[:, 3] = 0  # a class without annotations: skipped
    y[:, 4] = np.where(y[:, 4] == 1, -1, y[:, 4])  # annotated, no positive: AP 0
    probs = rng.random((rows, classes)).astype(np.float32).round(1)  # many ties
    return y, probs


@pytest.mark.parametrize("seed", [0, 1])
def test_annotated_evaluation_equals_the_dense_variant(seed):
    y, probs = random_case(seed)
    got = evaluate_annotated(probs, LabelLists.from_dense(y), threshold=0.5)
    want = metrics.evaluate(probs, y, threshold=0.5, annotated_only=True)
    assert np.array_equal(got.pop("AP"), want.pop("AP"), equal_nan=True)
    assert got == want
    full = np.where(y == 1, 1, -1).astype(np.int8)
    a = score(probs, LabelLists.from_dense(full))
    b = metrics.evaluate(probs, full)
    assert a["variant"] == "all" and a["mAP"] == b["mAP"] and a["OF1"] == b["OF1"]


def test_frequency_groups_on_a_hand_made_case():
    # 10 classes; training positives per class, ties broken by class index
    positives = np.array([5, 1, 9, 1, 0, 7, 3, 3, 2, 8])
    groups = frequency_groups(positives)
    assert [g.tolist() for g in groups] == [[4, 1], [3, 8], [6, 7], [0, 5], [9, 2]]
    ap = np.array([10, 20, 30, 40, np.nan, 60, 70, 80, 90, 100], dtype=float)
    assert group_map(ap, groups) == {"G1": 20.0, "G2": 65.0, "G3": 75.0, "G4": 35.0, "G5": 65.0}
    assert [len(g) for g in frequency_groups(np.zeros(7))] == [1, 1, 2, 1, 2]


def test_memory_mapped_features_give_the_in_memory_batches(tmp_path):
    data = source("single-positive", "partial")
    x = np.random.default_rng(0).normal(size=(ROWS, 3)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    built = {}
    for name, feats in (("memory", torch.from_numpy(x)), ("mmap", mapped)):
        split = {
            "input": feats,
            "observed": LabelLists.from_dense(data["observed"].numpy()),
            "full": LabelLists.from_dense(data["full"].numpy()),
        }
        splits = {s: split for s in ("train", "val", "test")}
        built[name] = FeatureData(splits, Context.create("cpu"), seed=3, batch_size=4, eval_rows=5)
    for a, b in zip(*(d.train_batches(2) for d in built.values()), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    chunks = [torch.cat([b["input"] for b in d.eval_batches("val")]) for d in built.values()]
    assert torch.equal(chunks[0], chunks[1])
    assert torch.equal(chunks[0], torch.from_numpy(x).float())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from tests.support.train_fixtures import get_shards

    return get_shards(tmp_path_factory)


def test_frequency_groups_in_a_run_and_the_leaderboard(shards, tmp_path):
    from shards.shardset import open_shard_set
    from tests.support.train_fixtures import FEAT, read_metrics, read_summary
    from train.config import RunConfig
    from train.leaderboard import write_leaderboard
    from train.run import train

    out = tmp_path / "runs" / "an"
    opts = {"epochs": "1", "lr": "0.01", "groups": "frequency"}
    train(RunConfig(shards=str(shards), method="an", features=FEAT, out=str(out),
                    method_options=opts))  # fmt: skip
    ss = open_shard_set(shards)
    groups = frequency_groups(ss.full_lists("train").class_counts()[0])
    summary = read_summary(out)
    ap = np.array([summary["test_ap"][c] for c in ss.classes])
    assert summary["test"]["groups"] == pytest.approx(group_map(ap, groups))
    assert set(read_metrics(out)[0]["val"]["groups"]) == {"G1", "G2", "G3", "G4", "G5"}
    _, table = write_leaderboard(tmp_path / "runs")
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "| G1 | G2 | G3 | G4 | G5 |" in header


def test_role_above_its_budget_refuses_before_any_work(shards, tmp_path):
    from shards.base.errors import WsmlError
    from tests.support.train_fixtures import FEAT
    from train.config import RunConfig
    from train.run import train

    opts = {"epochs": "1", "memory_budget_gb": "1e-6"}
    config = RunConfig(shards=str(shards), method="role", features=FEAT,
                       out=str(tmp_path / "r"), method_options=opts)  # fmt: skip
    # 160 rows x 10 classes x 16 bytes = 25,600 bytes = 0.0000256 GB
    with pytest.raises(WsmlError, match=r"role needs 2\.56e-05 GB .* 160 x 10 float32 matrix"):
        train(config)
    assert not (tmp_path / "r").exists()


def test_em_apl_above_its_budget_refuses_before_any_work(shards, tmp_path):
    from shards.base.errors import WsmlError
    from tests.support.train_fixtures import FEAT
    from train.config import RunConfig
    from train.run import train

    opts = {"epochs": "1", "memory_budget_gb": "1e-6", "neg_proportion": "0.5"}
    config = RunConfig(shards=str(shards), method="em-apl", features=FEAT,
                       out=str(tmp_path / "r"), method_options=opts)  # fmt: skip
    # 160 rows x 10 classes x (30 + 12 x 0.5) bytes = 57,600 bytes
    with pytest.raises(WsmlError, match=r"em-apl needs 5\.76e-05 GB: .* all 160 x 10 entries"):
        train(config)
    assert not (tmp_path / "r").exists()


def test_chunked_entry_evaluation_equals_the_in_memory_scores(tmp_path):
    """A partially labelled split scored a chunk at a time from the memory map, keeping only
    annotated entries (a run's model, the sweep's heads) equals scoring the whole matrix."""
    from models.heads import StackedHeads
    from train.evaluate import evaluate_splits

    y, _ = random_case(2, rows=50, classes=L)
    data = source("partial-p0.5", "partial")
    data["full"] = torch.from_numpy(y)
    x = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    split = {
        "input": np.load(tmp_path / "x.npy", mmap_mode="r"),
        "observed": LabelLists.from_dense(y),
        "full": LabelLists.from_dense(y),
    }
    fd = FeatureData({s: split for s in ("train", "val", "test")}, Context.create("cpu"),
                     seed=0, batch_size=4, eval_rows=7)  # fmt: skip
    fd.groups = frequency_groups(np.arange(L))
    model = torch.nn.Linear(3, L)
    probs = torch.sigmoid(model(torch.from_numpy(x).float())).detach()
    want = evaluate_annotated(probs.numpy(), LabelLists.from_dense(y))
    got = evaluate_splits({"model": model}, fd, fd.ctx, ("val",), 0.5)["model"][0]["val"]
    assert "probs" not in got and got["variant"] == "annotated"
    assert np.array_equal(got["AP"], want["AP"], equal_nan=True) and got["mAP"] == want["mAP"]
    assert got["OF1"] == want["OF1"] and got["groups"] == group_map(want["AP"], fd.groups)
    stacked = StackedHeads([model, model])  # a sweep's group: every member scored at once
    for per in evaluate_splits({"model": stacked}, fd, fd.ctx, ("test",), 0.5)["model"]:
        assert np.array_equal(per["test"]["AP"], want["AP"], equal_nan=True)


@pytest.mark.slow
def test_two_ranks_match_one_process_on_partial_labels(tmp_path):
    """Open Images (unknown labels): ragged labels on both ranks, evaluation by annotated
    entries gathered across ranks, frequency groups by default; two gloo ranks give one
    process's metrics."""
    import os
    import subprocess
    import sys

    from shards.caches import write_cache
    from shards.convert.convert import convert
    from shards.shardset import open_shard_set
    from tests.support.layouts_openimages import openimages_layout
    from tests.support.train_fixtures import read_metrics
    from train.config import RunConfig
    from train.run import train

    openimages_layout(tmp_path / "raw")
    convert("openimages-v3", tmp_path / "raw", tmp_path / "set", {}, {}, workers=1)
    ss = open_shard_set(tmp_path / "set")
    rng = np.random.default_rng(0)
    rows = {s: int(ss.split(s)["num_samples"]) for s in ss.splits}
    write_cache(ss.root, "feat", {s: rng.normal(size=(n, 8)) for s, n in rows.items()}, model="x")
    opts = {"epochs": "2", "lr": "0.01", "batch_size": "8"}
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "cli.py", "train", "--shards", str(ss.root), "--method", "an", "--regime", "full",
           "--features", "feat", "--out", str(tmp_path / "ddp")]  # fmt: skip
    cmd += [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    train(RunConfig(str(ss.root), "an", regime="full", features="feat",
                    out=str(tmp_path / "one"), method_options=opts))  # fmt: skip
    ddp, one = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert len(ddp) == len(one) == 2
    for a, b in zip(ddp, one, strict=True):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)
        for split in ("val", "test"):
            groups = b[split].pop("groups")
            assert set(groups) == {"G1", "G2", "G3", "G4", "G5"}
            assert a[split].pop("groups") == pytest.approx(groups, abs=1e-6)
            assert a[split] == pytest.approx(b[split], abs=1e-6)


def test_bad_sizes_fail_before_any_work(shards, tmp_path):
    """A feature cache whose row count is not the label table's, and an observed view without
    one of the splits: each a clear error naming the numbers, and no run folder."""
    import json
    import shutil

    from shards.base.errors import WsmlError
    from shards.caches import write_cache
    from train.config import RunConfig
    from train.run import train

    root = Path(shutil.copytree(shards, tmp_path / "set"))
    arrays = {"train": np.ones((10, 4)), "val": np.ones((60, 4)), "test": np.ones((60, 4))}
    write_cache(root, "short", arrays, model="x")
    config = RunConfig(str(root), "an", features="short", out=str(tmp_path / "r"))
    with pytest.raises(WsmlError, match="'short' have 10 rows for split train, its label table "
                       "has 160"):  # fmt: skip
        train(config)
    meta = root / "observed" / "single-positive" / "regime.json"
    regime = json.loads(meta.read_text())
    del regime["splits"]["test"]
    meta.write_text(json.dumps(regime))
    with pytest.raises(WsmlError, match="view 'single-positive' .* has no test split"):
        train(RunConfig(str(root), "an", features="feat", out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()
