"""A view that cannot be what its name says, or that keeps no label to train on, is refused at
``observe`` (before anything is written) and at ``train``: a view with no observed positive,
a second view of other parameters under one name, a fraction its name would round, and NaN or
infinite semantic class weights."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import cli
from tests.support.cli_checks import assert_refused
from tests.support.raw_datasets import tree_digest
from tests.support.train_fixtures import FEAT, get_shards


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture
def copy(tmp_path_factory, tmp_path) -> Path:
    return Path(shutil.copytree(get_shards(tmp_path_factory), tmp_path / "shards"))


def test_observe_refuses_a_view_without_a_positive(copy):
    before = tree_digest(copy)
    line = assert_refused(invoke("observe", copy, "partial", "--fraction", "1e-9"))
    assert "partial-p1e-09" in line and "no positive label in its train split" in line
    assert "160 rows" in line and "--fraction" in line
    assert tree_digest(copy) == before
    assert not (copy / "observed" / "partial-p1e-09").exists()


def emptied_view(root: Path, view: str = "partial-p1e-09") -> str:
    """A copy of the single-positive view whose train split keeps no label (as an older wsml
    could write): the view ``view``, its tables' sha256 recorded."""
    src, dst = root / "observed" / "single-positive", root / "observed" / view
    shutil.copytree(src, dst)
    path = dst / "train.parquet"
    table = pq.read_table(path)
    empty = pa.array([[] for _ in range(table.num_rows)], table.schema.field("positives").type)
    pq.write_table(
        table.set_column(table.column_names.index("positives"), "positives", empty), path
    )
    meta = json.loads((dst / "regime.json").read_text())
    meta["view"] = view
    for split, entry in meta["splits"].items():
        entry["path"] = f"observed/{view}/{split}.parquet"
    meta["splits"]["train"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (dst / "regime.json").write_text(json.dumps(meta))
    return view


def test_train_refuses_a_view_without_a_positive(copy, tmp_path):
    view = emptied_view(copy)
    out = tmp_path / "runs" / "r"
    args = ["train", "--shards", copy, "--method", "an", "--features", FEAT, "--out", out]
    line = assert_refused(invoke(*args, "--regime", view), view, "no positive label")
    assert "0 negatives over 160 rows" in line
    assert not (tmp_path / "runs").exists()


def weights_file(path: Path, classes: list[str], value) -> Path:
    path.write_text(json.dumps({c: value(k) for k, c in enumerate(classes)}))
    return path


def test_a_second_semantic_view_with_other_weights_is_refused(copy, tmp_path):
    classes = json.loads((copy / "manifest.json").read_text())["classes"]
    first = weights_file(tmp_path / "a.json", classes, lambda k: k + 1)
    other = weights_file(tmp_path / "b.json", classes, lambda k: 10 - k)
    args = ["observe", copy, "single-positive", "--bias", "semantic", "--class-weights"]
    assert invoke(*args, first).exit_code == 0
    view = copy / "observed" / "single-positive-semantic"
    before = tree_digest(view)
    line = assert_refused(
        invoke(*args, other), "observed/single-positive-semantic", "class_weights"
    )
    assert "remove that folder" in line and "--seed" in line
    assert tree_digest(view) == before
    assert invoke(*args, first).exit_code == 0  # the same view again: written as it was
    assert tree_digest(view) == before
    assert invoke(*args, other, "--seed", 5).exit_code == 0
    assert (copy / "observed" / "single-positive-semantic-s5" / "regime.json").is_file()


def test_a_fraction_is_never_rounded_into_another_views_name(copy):
    assert invoke("observe", copy, "partial", "--fraction", "0.1").exit_code == 0
    before = tree_digest(copy / "observed" / "partial-p0.1")
    result = invoke("observe", copy, "partial", "--fraction", "0.1000000001")
    assert result.exit_code == 0, result.output
    assert "observed/partial-p0.1000000001 " in result.output
    assert tree_digest(copy / "observed" / "partial-p0.1") == before
    meta = json.loads((copy / "observed" / "partial-p0.1000000001" / "regime.json").read_text())
    assert meta["params"]["fraction"] == 0.1000000001


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "true", '"1"'])
def test_non_finite_semantic_class_weights_are_refused(copy, tmp_path, bad):
    classes = json.loads((copy / "manifest.json").read_text())["classes"]
    path = tmp_path / "w.json"
    path.write_text(
        "{" + ", ".join(f'"{c}": {bad if k == 3 else 1}' for k, c in enumerate(classes)) + "}"
    )
    before = tree_digest(copy)
    args = ["observe", copy, "single-positive", "--bias", "semantic", "--class-weights", path]
    assert_refused(invoke(*args), str(path), repr(classes[3]), "finite number")
    assert tree_digest(copy) == before
