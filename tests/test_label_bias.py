"""Biased single positives (Arroyo, Perona and Cole, arXiv 2305.15584) and noisy labels: the
view contract (deterministic bytes, rates within binomial bounds, the audit passing), checked
against the paper's release procedure, on tiny real-layout sources."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import cli
from shards.base.errors import WsmlError
from shards.bias import object_weights
from shards.lists import Lists
from shards.regimes import Noisy, OfficialLabels, SinglePositive, binomial_ok, parse_regime_spec
from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.raw_datasets import REAL_VOC2007, make_coco, real_voc2007
from tests.support.raw_datasets import make_coco_fixed as make_coco_without_boxes


def labels_with_weights(rows: list[list[int]], weights: list[list[float]], num_classes: int):
    pos = Lists.from_rows(rows)
    flat = np.array([w for r in weights for w in r], dtype=np.float64)
    columns = {"size_weight": flat, "location_weight": flat}
    return OfficialLabels(pos, Lists.from_rows([None] * len(rows)), num_classes, columns)


def release_draws(rows, weights, num_classes, seed):
    """The release's make_biased_matrix: random.seed once, then per row random.choices over all
    classes with zero weight for the negatives."""
    random.seed(seed)
    out = []
    for r, w in zip(rows, weights, strict=True):
        full = [0.0] * num_classes
        for c, x in zip(r, w, strict=True):
            full[c] += x
        out.append(random.choices(range(num_classes), weights=full)[0])
    return out


@pytest.mark.parametrize("bias", ["size", "location"])
def test_biased_draws_equal_the_release_procedure(bias):
    rng = np.random.default_rng(0)
    rows = [sorted(rng.choice(10, size=int(rng.integers(1, 5)), replace=False)) for _ in range(300)]
    weights = [rng.random(len(r)).tolist() for r in rows]
    pos, neg = SinglePositive(bias=bias).generate(labels_with_weights(rows, weights, 10))
    assert [p.tolist() for p in (pos.row(i) for i in range(300))] == [
        [c] for c in release_draws(rows, weights, 10, 1200)
    ]
    assert neg.offsets[-1] == 0


def test_size_bias_rate_within_binomial_bounds():
    n = 4000  # every row: class 0 weighs 0.8, class 3 0.2
    labels = labels_with_weights([[0, 3]] * n, [[0.8, 0.2]] * n, 5)
    pos, _ = SinglePositive(bias="size", seed=7).generate(labels)
    picked0 = int((pos.values == 0).sum())
    assert len(pos.values) == n and binomial_ok(picked0, n, 0.8, z=4)
    assert not binomial_ok(picked0, n, 0.5, z=4)  # the bias is there


def test_semantic_bias_uses_class_weights_and_falls_back_to_uniform():
    rows = [[0, 1, 2]] * 3000 + [[3, 4]] * 3000
    regime = SinglePositive(bias="semantic", class_weights=(1.0, 0.0, 3.0, 0.0, 0.0))
    labels = OfficialLabels(Lists.from_rows(rows), Lists.from_rows([None] * 6000), 5)
    pos, _ = regime.generate(labels)
    first, second = pos.values[:3000], pos.values[3000:]
    assert set(first.tolist()) == {0, 2} and binomial_ok(int((first == 2).sum()), 3000, 0.75, 4)
    assert binomial_ok(int((second == 3).sum()), 3000, 0.5, 4)  # all zero: uniform
    with pytest.raises(WsmlError, match="--class-weights"):
        SinglePositive(bias="semantic").generate(labels)


def test_location_weight_is_the_release_inverse_distance():
    # a 100x50 image; a box centred on the image centre counts as d = 0.0005
    size, loc = object_weights([(200.0, [40, 15, 20, 20]), (100.0, [0, 0, 10, 10])], 100, 50)
    assert size == pytest.approx(300 / 5000)
    assert loc == pytest.approx(1 / 0.0005 + 1 / np.hypot(45, 20))


def test_uniform_stays_the_default_and_bias_names_the_view():
    assert SinglePositive() == SinglePositive(bias="uniform")
    assert SinglePositive().view_name() == "single-positive"
    assert SinglePositive(bias="size").view_name() == "single-positive-size"
    assert parse_regime_spec("single-positive:bias=location").bias == "location"
    assert parse_regime_spec("noisy:flip-pos=0.2,flip-neg=0.05") == Noisy(0.2, 0.05)
    assert Noisy(0.2, 0.05, seed=3).view_name() == "noisy-p0.2-q0.05-s3"


def test_noisy_flips_at_its_rates_and_keeps_unknowns_unknown():
    rng = np.random.default_rng(1)
    dense = rng.choice([1, -1, 0], size=(3000, 12), p=[0.2, 0.6, 0.2])
    pos = Lists.from_rows(np.flatnonzero(r == 1) for r in dense)
    neg = Lists.from_rows(np.flatnonzero(r == -1) for r in dense)
    regime = Noisy(flip_pos=0.3, flip_neg=0.05, seed=5)
    obs_pos, obs_neg = regime.generate(OfficialLabels(pos, neg, 12))
    observed = np.zeros_like(dense)
    for i in range(len(dense)):
        observed[i, obs_pos.row(i)] = 1
        observed[i, obs_neg.row(i)] = -1
    assert np.array_equal(observed == 0, dense == 0)
    counts = regime.audit_counts(dense, observed)
    assert counts["positive_to_negative"] > 0 and regime.audit_failures(counts) == []
    assert not binomial_ok(counts["positive_to_negative"], counts["clean_positive"], 0.1, 4)
    again = regime.generate(OfficialLabels(pos, neg, 12))
    assert np.array_equal(again[0].values, obs_pos.values)
    with pytest.raises(WsmlError, match=r"flip_pos must be in \[0, 1\], got 1.5"):
        Noisy(flip_pos=1.5)  # refused when made, before any work


def observe(out: Path, *args: str):
    return CliRunner().invoke(cli.main, ["observe", str(out), *args])


VIEWS = {
    "single-positive-size": ["single-positive", "--bias", "size"],
    "single-positive-location": ["single-positive", "--bias", "location"],
    "noisy-p0.2-q0.1": ["noisy", "--flip-pos", "0.2", "--flip-neg", "0.1"],
}


def test_views_are_deterministic_bytes_and_pass_the_audit(tmp_path):
    raw = make_coco(tmp_path / "raw")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert shard_cli(raw, out).exit_code == 0
        for args in VIEWS.values():
            r = observe(out, *args)
            assert r.exit_code == 0, r.output
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({f"class{k}": k for k in range(4)}))
    assert observe(outs[0], "single-positive", "--bias", "semantic", "--class-weights", str(weights)).exit_code == 0  # fmt: skip
    for view in VIEWS:
        for split in ("train", "val", "test"):
            a, b = (o / "observed" / view / f"{split}.parquet" for o in outs)
            assert a.read_bytes() == b.read_bytes()
        meta = json.loads((outs[0] / "observed" / view / "regime.json").read_text())
        assert meta["view"] == view
    sizes = pq.read_table(outs[0] / "observed" / "single-positive-size" / "train.parquet")
    assert all(len(p) == 1 for p in sizes["positives"].to_pylist())
    r = CliRunner().invoke(cli.main, ["audit", str(outs[0]), "--workers", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((outs[0] / "audit.json").read_text())
    assert report["ok"] and set(report["checks"]["views"]) >= {*VIEWS, "single-positive-semantic"}


@pytest.mark.skipif(not REAL_VOC2007.is_dir(), reason=f"no real VOC fixture at {REAL_VOC2007}")
def test_real_voc2007_keeps_box_weights_and_size_bias_draws_from_them(tmp_path):
    raw = real_voc2007(tmp_path / "raw")
    out = tmp_path / "s"
    r = shard_cli(raw, out, dataset="voc2007")
    assert r.exit_code == 0, r.output
    table = pq.read_table(out / "labels" / "official" / "trainval.parquet")
    for pos, size, loc in zip(*(table[c].to_pylist() for c in ("positives", "size_weight", "location_weight")), strict=True):  # fmt: skip
        assert len(pos) == len(size) == len(loc) and all(0 < s <= 1 for s in size)
    assert observe(out, "single-positive", "--bias", "size").exit_code == 0


def test_sources_without_boxes_refuse_size_and_location(tmp_path):
    raw = make_coco_without_boxes(tmp_path / "raw")  # annotations without bbox/area
    out = tmp_path / "s"
    assert shard_cli(raw, out).exit_code == 0
    for bias in ("size", "location"):
        assert_refused(observe(out, "single-positive", "--bias", bias), "needs per-object boxes")
    assert not (out / "observed" / "single-positive-size").exists()
