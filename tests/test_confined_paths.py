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
from bench.loader import extract_folder
from shards.base.errors import WsmlError
from shards.convert.convert import convert
from shards.shardset import open_shard_set
from tests.support.raw_datasets import make_coco


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


# -- names read from wsml's own JSON files ---------------------------------------------------------


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


OUTSIDE = ["../../../x.tar", "/etc/passwd", "", "a/../../b"]


@pytest.mark.parametrize("name", OUTSIDE)
@pytest.mark.parametrize("where", ["tar", "index", "labels", "official"])
def test_a_manifest_naming_a_file_outside_is_refused(copy, name, where):
    def change(m):
        if where == "official":
            m["official_splits"]["train"]["labels"]["path"] = name
        elif where == "labels":
            m["splits"]["val"]["labels"]["path"] = name
        else:
            m["splits"]["test"]["shards"][0][where] = name

    edit_json(copy / "manifest.json", change)
    with pytest.raises(WsmlError) as e:
        open_shard_set(copy)
    assert str(copy / "manifest.json") in str(e.value) and repr(name) in str(e.value)
    result = CliRunner().invoke(cli.main, ["verify", str(copy)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output


def test_the_raw_files_a_manifest_records_are_not_checked(copy):
    """Skipped images are recorded by their path in the raw dataset (never opened)."""
    skipped = [{"id": "7", "path": "/data/coco/train/7.jpg", "reason": "truncated"}]
    edit_json(
        copy / "manifest.json", lambda m: m["official_splits"]["train"].update(skipped=skipped)
    )
    assert open_shard_set(copy).manifest["official_splits"]["train"]["skipped"] == skipped


def test_a_view_naming_a_file_outside_is_refused(copy):
    path = copy / "observed" / "single-positive" / "regime.json"
    edit_json(path, lambda r: r["splits"]["train"].update(path="../../labels/train.parquet"))
    with pytest.raises(WsmlError, match="regime.json records path '../../labels"):
        open_shard_set(copy).observed_lists("single-positive", "train")


def test_a_cache_naming_a_file_outside_is_refused(copy):
    import numpy as np

    from shards.caches import read_split, write_cache

    ss = open_shard_set(copy)
    arrays = {s: np.ones((ss.split(s)["num_samples"], 4)) for s in ss.splits}
    write_cache(copy, "toy", arrays, model="toy")
    meta = copy / "embeddings" / "toy" / "meta.json"
    edit_json(meta, lambda m: m["splits"]["train"].update(path=str(copy / "labels/train.parquet")))
    with pytest.raises(WsmlError) as e:
        read_split(copy, "toy", "train")
    assert str(meta) in str(e.value) and "not a relative path" in str(e.value)


# -- names read from a raw dataset's annotations -------------------------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """An image beside the raw dataset, which no annotation may reach."""
    from tests.support.raw_datasets import write_jpeg

    return write_jpeg(tmp_path / "secret.jpg")


def shard(root: Path, out: Path, dataset: str):
    from tests.support.cli_checks import shard_cli

    return shard_cli(root, out, dataset=dataset)


@pytest.mark.parametrize("absolute", [False, True])
def test_a_coco_file_name_outside_the_image_folder_is_refused(tmp_path, outside, absolute):
    from tests.support.cli_checks import assert_refused
    from tests.support.raw_datasets import make_coco_fixed

    root = make_coco_fixed(tmp_path / "raw", n_train=6, n_test=3)
    name = str(outside) if absolute else "../../secret.jpg"
    ann = root / "annotations" / "instances_train.json"
    edit_json(ann, lambda d: d["images"][0].update(file_name=name))
    assert_refused(
        shard(root, tmp_path / "out", "coco"), str(ann), repr(name), out=tmp_path / "out"
    )


def test_a_voc_id_outside_the_image_folder_is_refused(tmp_path, outside):
    from tests.support.cli_checks import assert_refused
    from tests.support.raw_datasets import make_voc_devkit

    base = make_voc_devkit(tmp_path / "raw", [f"tv{i:02d}" for i in range(6)], ["te00", "te01"])
    (base / "Annotations" / "tv00.xml").rename(tmp_path / "secret.xml")
    lst = base / "ImageSets" / "Main" / "trainval.txt"
    lst.write_text(lst.read_text().replace("tv00", "../../../../secret"))
    out = tmp_path / "out"
    assert_refused(
        shard(tmp_path / "raw", out, "voc2007"), str(lst), "'../../../../secret'", out=out
    )


def test_a_cub_image_outside_the_image_folder_is_refused(tmp_path, outside):
    from tests.support.cli_checks import assert_refused
    from tests.support.layouts_cub import cub_base, cub_layout

    root = cub_layout(tmp_path / "raw")
    images = cub_base(root) / "images.txt"
    lines = images.read_text().splitlines(keepends=True)
    lines[0] = "1 ../../../secret.jpg\n"
    images.write_text("".join(lines))
    out = tmp_path / "out"
    assert_refused(shard(root, out, "cub"), f"{images}:1", "'../../../secret.jpg'", out=out)
