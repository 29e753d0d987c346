"""No name read from inside a tar, a CSV, a list or a JSON becomes a path outside the folder it
belongs to: ``bench loader --shards`` checks the manifest first and names the files it extracts
by row, and every reader of a shard set, a view, a cache or a raw dataset refuses an absolute
or ``..`` name before opening anything."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from pipelines.bench import extract_folder
from shards.convert import convert
from shards.errors import WsmlError
from shards.shardset import open_shard_set
from tests.raw_datasets import make_coco


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("confined")
    raw = make_coco(base / "raw", n_train=40, n_val=8)
    convert("coco", raw, base / "shards", {}, {}, workers=1, fsync=False)
    return base / "shards"


@pytest.fixture
def copy(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "deep" / "er" / "shards"))


def rename_first_sample(root: Path, name: str, *, fix_manifest: bool) -> Path:
    """Rewrite the first train tar with its first sample's members named ``name``.jpg/.row;
    with ``fix_manifest`` its manifest entry gets the new sha256 (a hostile set, consistent)."""
    tar = root / "train-000000.tar"
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    first = members[0][0].name.split(".")[0]
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
        for m, data in members:
            if m.name.split(".")[0] == first:
                m.name = f"{name}.{m.name.split('.', 1)[1]}"
            t.addfile(m, io.BytesIO(data))
    if fix_manifest:
        manifest = json.loads((root / "manifest.json").read_text())
        entry = manifest["splits"]["train"]["shards"][0]
        entry["sha256"] = hashlib.sha256(tar.read_bytes()).hexdigest()
        entry["bytes"] = tar.stat().st_size
        (root / "manifest.json").write_text(json.dumps(manifest))
    return tar


def test_extracted_files_are_named_by_row(built, tmp_path):
    ss = open_shard_set(built)
    files = extract_folder(ss, "train", tmp_path / "folder")
    rows = ss.split("train")["num_samples"]
    assert [f.name for f in files] == [f"{r:09d}.jpg" for r in range(rows)]
    keys = ss.label_table("train")["key"].to_pylist()
    with tarfile.open(built / "train-000000.tar") as t:
        first = t.getmembers()[0]
        row = keys.index(first.name.split(".")[0])
        assert files[row].read_bytes() == t.extractfile(first).read()


@pytest.mark.parametrize("fix_manifest", [False, True], ids=["changed", "consistent"])
@pytest.mark.parametrize("name", ["../../x", "ABS"])
def test_hostile_member_names_write_nothing_outside(copy, tmp_path, name, fix_manifest):
    name = str(tmp_path / "abs" / "x") if name == "ABS" else name
    tar = rename_first_sample(copy, name, fix_manifest=fix_manifest)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(WsmlError) as e:
        extract_folder(open_shard_set(copy), "train", copy / "work" / "folder")
    assert str(tar) in str(e.value)
    assert ("sha256" in str(e.value)) != fix_manifest
    made = sorted(set(tmp_path.rglob("*")) - set(before))
    assert [p for p in made if p.is_file()] == []
    assert not (tmp_path / "abs").exists() and not (copy.parent.parent / "x.jpg").exists()


def test_bench_loader_leaves_nothing_in_the_current_folder(built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["bench", "loader", "--shards", str(built), "--batch-size", "4", "--repeats", "1"]
    args += ["--no-profile", "--threads", "1", "--device", "cpu", "--preset", "clip224"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "3. reference" in result.output
    assert os.listdir(tmp_path) == []


def test_bench_loader_refuses_a_hostile_set_before_writing(copy, tmp_path, monkeypatch):
    rename_first_sample(copy, "../../x", fix_manifest=True)
    monkeypatch.chdir(tmp_path)
    args = ["bench", "loader", "--shards", str(copy), "--repeats", "1", "--device", "cpu"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "'../../x.jpg'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert [p.name for p in (tmp_path / "deep" / "er").iterdir()] == ["shards"]
