"""``cli.py`` through click's CliRunner: shard, observe, info, verify, demo-data. Each command's
success, usage errors (exit 2), expected errors (``Error:``, exit 1) and nothing written on
failure."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

import cli
from shards.convert.tar_writer import TarShardWriter
from tests.support.raw_datasets import (
    COCO_CATEGORIES,
    REAL_COCO_JSON,
    REAL_VOC2007,
    make_coco_fixed,
    real_coco2014,
    real_voc2007,
    tree_digest,
)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def shard(root: Path, out: Path, *extra: str, dataset: str = "coco") -> Result:
    return run(
        "shard", "--dataset", dataset, "--root", root, "--out", out, "--workers", "1", *extra
    )


def assert_error(result: Result, *names: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "Error:" in result.output
    for name in names:
        assert name in result.output, f"{name!r} not in: {result.output}"


def assert_usage_error(result: Result, *names: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output
    for name in names:
        assert name in result.output, f"{name!r} not in: {result.output}"


def tar_digest(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(folder).items() if k.endswith((".tar", ".idx"))}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_coco_fixed(tmp_path_factory.mktemp("raw") / "coco", n_train=10, n_test=5)


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> Path:
    """A shard set written once per module (read-only: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("built") / "set"
    result = shard(raw, out, "--shard-samples", "3")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def ss(built, tmp_path) -> Path:
    """A private copy of the module's shard set."""
    return Path(shutil.copytree(built, tmp_path / "set"))


# -- --help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [[], ["shard"], ["observe"], ["info"], ["verify"], ["demo-data"]]
)
def test_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


# -- shard ---------------------------------------------------------------------------------------


def test_shard_success(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["dataset"] == "coco"
    assert manifest["classes"] == [c["name"] for c in COCO_CATEGORIES]
    assert {n: s["num_samples"] for n, s in manifest["splits"].items()} == {
        "train": 8,
        "val": 2,
        "test": 5,
    }
    assert (built / "observed" / "single-positive" / "regime.json").is_file()
    assert not (built / "_progress").exists()
    assert not list(built.rglob("*.wsml-tmp"))


def test_shard_prints_a_summary(raw, tmp_path):
    result = shard(raw, tmp_path / "out")
    assert result.exit_code == 0, result.output
    for line in ("train:", "val:", "test:", f"coco -> {tmp_path / 'out'}"):
        assert line in result.output


@pytest.mark.skipif(not REAL_VOC2007.is_dir(), reason=f"no real VOC fixture at {REAL_VOC2007}")
def test_shard_real_voc2007(tmp_path):
    root = real_voc2007(tmp_path / "raw")
    out = tmp_path / "out"
    result = shard(root, out, "--regime", "partial:fraction=0.5", dataset="voc2007")
    assert result.exit_code == 0, result.output
    info = run("info", out, "--json")
    assert info.exit_code == 0, info.output
    s = json.loads(info.output)
    assert s["dataset"] == "voc2007" and len(s["classes"]) == 20
    assert s["splits"]["test"]["images"] == 5  # the fixture's test.txt lists 5 ids
    assert set(s["regimes"]) == {"partial-p0.5"}
    assert run("verify", out, "--workers", "1").exit_code == 0


@pytest.mark.skipif(not REAL_COCO_JSON.is_file(), reason=f"no real COCO fixture: {REAL_COCO_JSON}")
def test_shard_real_coco2014(tmp_path):
    root = real_coco2014(tmp_path / "raw")
    out = tmp_path / "out"
    result = shard(root, out, "--max-side", "128", dataset="coco2014")
    assert result.exit_code == 0, result.output
    s = json.loads(run("info", out, "--json").output)
    assert len(s["classes"]) == 80
    assert sum(sp["images"] for sp in s["splits"].values()) == 8
    table = pq.read_table(out / "labels" / "train.parquet")
    assert (
        max(
            max(w, h)
            for w, h in zip(table["width"].to_pylist(), table["height"].to_pylist(), strict=True)
        )
        == 128
    )
    verify = run("verify", out, "--workers", "1")
    assert verify.exit_code == 0, verify.output


def test_unknown_dataset_is_a_usage_error(raw, tmp_path):
    result = shard(raw, tmp_path / "out", dataset="coco2015")
    assert_usage_error(result, "coco2015", "coco2014", "voc2007")
    assert not (tmp_path / "out").exists()


def test_unknown_converter_option(raw, tmp_path):
    result = shard(raw, tmp_path / "out", "-o", "colour=red")
    assert_error(result, "unknown option(s) colour", "train_json", "keep_empty")
    assert not (tmp_path / "out").exists()


def test_converter_option_with_a_bad_value(raw, tmp_path):
    assert_error(shard(raw, tmp_path / "out", "-o", "keep_empty=perhaps"), "keep_empty")
    assert not (tmp_path / "out").exists()


def test_converter_option_without_a_value(raw, tmp_path):
    assert_usage_error(shard(raw, tmp_path / "out", "-o", "keep_empty"), "key=value")
    assert not (tmp_path / "out").exists()


def test_converter_option_keep_empty(raw, tmp_path):
    root = Path(shutil.copytree(raw, tmp_path / "raw"))
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1001]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    assert shard(root, tmp_path / "a").exit_code == 0
    assert shard(root, tmp_path / "b", "-o", "keep_empty=true").exit_code == 0
    rows = [pq.read_table(tmp_path / d / "labels/test.parquet").num_rows for d in "ab"]
    assert rows == [4, 5]


@pytest.mark.parametrize(
    "option",
    [["--shard-size", "lots"], ["--check", "full"], ["--on-bad", "ignore"], ["--workers", "x"]],
)
def test_shard_bad_option_values_are_usage_errors(raw, tmp_path, option):
    assert_usage_error(shard(raw, tmp_path / "out", *option), option[0])
    assert not (tmp_path / "out").exists()


def test_shard_missing_required_option(tmp_path):
    assert_usage_error(run("shard", "--dataset", "coco", "--root", tmp_path), "--out")


@pytest.mark.parametrize(
    "option, named",
    [
        (["--val-frac", "1.5"], "--val-frac"),
        (["--regime", "full-positive"], "full-positive"),
        (["--regime", "partial:fraction"], "partial:fraction"),
        (["--regime", "single-positive:fraction=0.5"], "fraction"),
        (["--shard-samples", "0"], "--shard-samples"),
    ],
)
def test_shard_invalid_options_fail_before_writing(raw, tmp_path, option, named):
    out = tmp_path / "out"
    assert_usage_error(shard(raw, out, *option), named)  # ranges and regime specs: exit 2
    assert not out.exists()


def test_shard_size_units_and_regimes(raw, tmp_path):
    out = tmp_path / "out"
    result = shard(
        raw,
        out,
        "--shard-size",
        "2kB",
        "--regime",
        "single-positive",
        "--regime",
        "partial:fraction=0.3,seed=2",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["shard_bytes"] == 2000
    assert len(manifest["splits"]["train"]["shards"]) == 8  # one ~1 kB image per shard
    assert set(manifest["regimes_at_conversion"]) == {"single-positive", "partial-p0.3-s2"}


# -- info ----------------------------------------------------------------------------------------


def test_info(built):
    result = run("info", built)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "coco" in out and "3 classes" in out
    for name, n in (("train", 8), ("val", 2), ("test", 5)):
        assert any(f"{name}:" in line and f" {n} images" in line for line in out.splitlines())
    for c in COCO_CATEGORIES:
        assert c["name"] in out
    assert "positives/image" in out
    assert "single-positive" in out


def test_info_json(built):
    result = run("info", built, "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["classes"] == [c["name"] for c in COCO_CATEGORIES]
    assert {n: sp["images"] for n, sp in s["splits"].items()} == {"train": 8, "val": 2, "test": 5}
    assert set(s["regimes"]) == {"single-positive"}
    for sp in s["splits"].values():
        assert len(sp["class_frequency"]) == 3
        assert sp["positives_per_image"]["min"] >= 1
        assert sum(sp["class_frequency"]) == pytest.approx(
            sp["positives_per_image"]["mean"] * sp["images"], abs=0.01
        )
    assert s["skipped"] == {"train": 0, "val": 0}


@pytest.mark.parametrize("what", ["missing", "empty", "raw"])
def test_info_on_a_folder_that_is_not_a_shard_set(raw, tmp_path, what):
    folder = {"missing": tmp_path / "nope", "empty": tmp_path, "raw": raw}[what]
    assert_error(run("info", folder), str(folder))


def test_info_on_a_foreign_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    assert_error(run("info", tmp_path), "manifest.json", "not a wsml shard set")


@pytest.mark.parametrize("command", [["info"], ["verify"], ["observe", "partial"]])
@pytest.mark.parametrize("text", ['{"format": "wsml-sh', "[1, 2]", "\udcff"])
def test_commands_on_a_corrupt_manifest(ss, command, text):
    manifest = ss / "manifest.json"
    manifest.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = tree_digest(ss)
    result = run(command[0], ss, *command[1:])
    assert_error(result, str(manifest))
    assert tree_digest(ss) == before


def test_info_without_dir_is_a_usage_error():
    assert_usage_error(run("info"), "DIR")


# -- verify --------------------------------------------------------------------------------------


def test_verify_ok(built):
    before = tree_digest(built)
    result = run("verify", built, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "OK (15 samples" in result.output
    assert tree_digest(built) == before


def test_verify_with_workers(built):
    assert run("verify", built, "--workers", "2", "--no-decode").exit_code == 0


def _first_tar(ss: Path, split: str = "train") -> Path:
    manifest = json.loads((ss / "manifest.json").read_text())
    return ss / manifest["splits"][split]["shards"][0]["tar"]


def test_verify_flipped_byte_in_a_tar(ss):
    tar = _first_tar(ss)
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01  # inside the first image
    tar.write_bytes(bytes(data))
    result = run("verify", ss, "--workers", "1")
    assert_error(result, f"{tar}: sha256 differs from the manifest", "problem(s) in")


def test_verify_deleted_shard(ss):
    tar = _first_tar(ss, "test")
    tar.unlink()
    result = run("verify", ss, "--workers", "1")
    assert_error(result, f"{tar}: missing")
    # its rows are then missing from the split too
    assert "appears 0 times" in result.output


def test_verify_deleted_index_and_changed_label_table(ss):
    idx = _first_tar(ss).with_suffix(".idx")
    idx.unlink()
    table = ss / "labels" / "val.parquet"
    table.write_bytes(table.read_bytes() + b"\0")
    result = run("verify", ss, "--workers", "1")
    assert_error(result, f"{idx}: missing", f"{table}: sha256 differs", "2 problem(s)")


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_verify_unreadable_label_table_is_reported_not_a_crash(ss, damage):
    table = ss / "labels" / "train.parquet"
    table.unlink() if damage == "deleted" else table.write_bytes(b"not parquet")
    tar = _first_tar(ss)
    tar.write_bytes(tar.read_bytes()[:-1] + b"x")  # the tars are still checked
    result = run("verify", ss, "--workers", "1")
    assert_error(result, f"{table}: {'missing' if damage == 'deleted' else 'sha256 differs'}")
    assert f"{tar}: sha256 differs" in result.output


def test_verify_changed_observed_view(ss):
    view = ss / "observed" / "single-positive" / "train.parquet"
    view.unlink()
    assert_error(run("verify", ss, "--workers", "1"), f"{view}: missing")


def _rewrite_tar(ss: Path, tar: Path, change) -> None:
    """Rewrite ``tar`` with ``change(samples)`` applied to its [key, {ext: bytes}] list, and
    update the manifest's hashes so only the content check can notice."""
    with tarfile.open(tar) as tf:
        samples: dict[str, dict[str, bytes]] = {}
        for m in tf:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    items = [[k, v] for k, v in samples.items()]
    change(items)
    tar.unlink()
    writer = TarShardWriter(tar)
    for key, members in items:
        writer.add(key, list(members.items()))
    sha, nbytes, index = writer.close()
    tar.with_suffix(".idx").write_text(index)
    manifest = json.loads((ss / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for s in split["shards"]:
            if s["tar"] == tar.name:
                s.update(
                    sha256=sha,
                    bytes=nbytes,
                    index_sha256=hashlib.sha256(index.encode()).hexdigest(),
                )
    (ss / "manifest.json").write_text(json.dumps(manifest))


def test_verify_tar_member_and_label_row_mismatch(ss):
    tar = _first_tar(ss)
    swapped = []

    def swap_rows(items):
        (k0, m0), (k1, m1) = items[0], items[1]
        m0["row"], m1["row"] = m1["row"], m0["row"]
        swapped.extend([k0, k1])

    _rewrite_tar(ss, tar, swap_rows)
    result = run("verify", ss, "--workers", "1")
    assert_error(result, f"{tar}: sample {swapped[0]} has row")
    assert f"whose key is {swapped[1]}" in result.output


def test_verify_missing_member_and_duplicate_sample(ss):
    tar = _first_tar(ss)
    names = []

    def damage(items):
        names.append(items[0][0])
        del items[0][1]["row"]  # a sample without its row member

    _rewrite_tar(ss, tar, damage)
    result = run("verify", ss, "--workers", "1")
    assert_error(result, f"sample {names[0]} has members ['jpg']", "appears 0 times")


def test_verify_image_that_does_not_decode(ss):
    tar = _first_tar(ss)
    key = []

    def garble(items):
        key.append(items[1][0])
        items[1][1]["jpg"] = b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9"

    _rewrite_tar(ss, tar, garble)
    result = run("verify", ss, "--workers", "1")
    assert_error(result, f"{tar}: image {key[0]} does not decode")
    assert run("verify", ss, "--workers", "1", "--no-decode").exit_code == 0


def test_verify_not_a_shard_set(tmp_path):
    assert_error(run("verify", tmp_path / "nope"), "does not exist")
    assert_error(run("verify", tmp_path), "no manifest.json")


# -- observe -------------------------------------------------------------------------------------


def test_observe_partial(ss):
    before = tree_digest(ss)
    result = run("observe", ss, "partial", "--fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert "observed/partial-p0.5" in result.output
    view = ss / "observed" / "partial-p0.5"
    assert sorted(p.name for p in view.iterdir()) == [
        "regime.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    after = tree_digest(ss)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    assert all(k.startswith("observed/partial-p0.5/") for k in set(after) - set(before))
    meta = json.loads((view / "regime.json").read_text())
    assert meta["regime"] == "partial" and meta["params"] == {"fraction": 0.5, "seed": 0}

    for split, n in (("train", 8), ("val", 2), ("test", 5)):
        obs = pq.read_table(view / f"{split}.parquet").to_pylist()
        full = pq.read_table(ss / "labels" / f"{split}.parquet").to_pylist()
        assert [r["row"] for r in obs] == list(range(n))
        for o, f in zip(obs, full, strict=True):  # observed positives are true positives
            assert set(o["positives"]) <= set(f["positives"])
            assert not set(o["negatives"]) & set(f["positives"])

    info = json.loads(run("info", ss, "--json").output)
    assert info["regimes"]["partial-p0.5"] == {"fraction": 0.5, "seed": 0}
    assert run("verify", ss, "--workers", "1", "--no-decode").exit_code == 0


def test_observe_is_deterministic_and_leaves_tars_alone(ss):
    tars = tar_digest(ss)
    assert run("observe", ss, "partial", "--fraction", "0.3", "--seed", "5").exit_code == 0
    view = ss / "observed" / "partial-p0.3-s5"
    first = tree_digest(view)
    assert run("observe", ss, "partial", "--fraction", "0.3", "--seed", "5").exit_code == 0
    assert tree_digest(view) == first
    assert tar_digest(ss) == tars


def test_observe_single_positive_options(ss):
    result = run("observe", ss, "single-positive", "--seed", "7", "--num-neg", "1")
    assert result.exit_code == 0, result.output
    view = ss / "observed" / "single-positive-pos1-neg1-s7"
    assert (view / "regime.json").is_file()
    for split in ("train", "val", "test"):
        rows = pq.read_table(view / f"{split}.parquet").to_pylist()
        assert all(len(r["positives"]) == 1 and len(r["negatives"]) == 1 for r in rows)


def test_observe_unknown_regime_is_a_usage_error(ss):
    before = tree_digest(ss)
    result = run("observe", ss, "full-positive")
    assert_usage_error(result, "full-positive", "partial", "single-positive")
    assert tree_digest(ss) == before


@pytest.mark.parametrize(
    "args, named, view",
    [
        (["single-positive", "--fraction", "0.5"], "fraction", "single-positive"),
        (["partial", "--num-pos", "2"], "num_pos", "partial-p0.1"),
        (["partial", "--fraction", "1.5"], "--fraction", "partial-p1.5"),
        (["partial", "--fraction", "0"], "--fraction", "partial-p0"),
    ],
)
def test_observe_invalid_parameter(ss, args, named, view):
    shutil.rmtree(ss / "observed" / "single-positive")
    before = tree_digest(ss)
    result = run("observe", ss, *args)
    if named == "--fraction":  # out of the option's range: a usage error
        assert_usage_error(result, named)
    else:
        assert_error(result, named)
    assert tree_digest(ss) == before
    assert not (ss / "observed" / view).exists()


def test_observe_parameter_of_the_wrong_type_is_a_usage_error(ss):
    assert_usage_error(run("observe", ss, "partial", "--fraction", "half"), "--fraction")


def test_observe_not_a_shard_set(tmp_path):
    assert_error(run("observe", tmp_path, "partial"), "no manifest.json")
    assert not (tmp_path / "observed").exists()


# -- demo-data -----------------------------------------------------------------------------------


def test_demo_data_then_shard(tmp_path):
    raw, out = tmp_path / "digits", tmp_path / "shards"
    result = run("demo-data", "--out", raw, "--train", "12", "--val", "6")
    assert result.exit_code == 0, result.output
    assert (raw / "annotations" / "instances_train.json").is_file()
    result = shard(raw, out)
    assert result.exit_code == 0, result.output
    s = json.loads(run("info", out, "--json").output)
    assert s["splits"]["test"]["images"] == 6
    assert np.sum([sp["images"] for sp in s["splits"].values()]) == 18
    assert run("verify", out, "--workers", "1").exit_code == 0


def test_help_imports_neither_torch_nor_dali():
    code = (
        "import sys; from click.testing import CliRunner; import cli\n"
        "for args in (['--help'], ['shard', '--help'], ['observe', '--help'], ['report', '--help']):\n"
        "    assert CliRunner().invoke(cli.main, args).exit_code == 0\n"
        "heavy = [m for m in ('torch', 'nvidia.dali', 'pyarrow', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    import subprocess
    import sys

    from tests.support.raw_datasets import REPO

    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_converters_do_not_load_pyarrow_before_the_pool_forks():
    """A process that has loaded pyarrow spawns its workers instead of forking them (slow)."""
    import subprocess
    import sys

    from tests.support.raw_datasets import REPO

    code = "import sys, shards.convert.convert; assert 'pyarrow' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_parts_through_the_cli(tmp_path):
    from tests.support.cli_checks import shard_cli
    from tests.support.raw_datasets import make_coco

    root = make_coco(tmp_path / "raw")
    out = tmp_path / "out"
    for k in range(2):
        done = shard_cli(root, out, "--part", f"{k}/2", "--shard-samples", "5")
        assert done.exit_code == 0, done.output
        assert f"part {k}/2:" in done.output and "--finalize" in done.output
    assert not (out / "manifest.json").exists()
    done = shard_cli(root, out, "--finalize", "--shard-samples", "5")
    assert done.exit_code == 0, done.output
    assert (out / "manifest.json").exists()
    again = shard_cli(root, out, "--part", "0/2", "--shard-samples", "5")
    assert again.exit_code == 0 and "nothing to do" in again.output
    bad = shard_cli(root, tmp_path / "o2", "--part", "2/2")
    assert bad.exit_code == 2 and "K/N with 0 <= K < N" in bad.output
    both = shard_cli(root, tmp_path / "o3", "--part", "0/2", "--finalize")
    assert both.exit_code == 2 and "separate runs" in both.output


def test_info_shows_the_extremes_of_a_long_class_table():
    from shards import commands

    freq = list(range(100))
    summary = {
        "classes": [f"c{k}" for k in range(100)],
        "splits": {"train": {"class_frequency": freq}},
    }
    shown = commands._classes_to_show(summary, ["train"])
    assert shown == list(range(99, 79, -1)) + list(range(19, -1, -1))
    small = {"classes": ["a", "b"], "splits": {"train": {"class_frequency": [0, 5]}}}
    assert commands._classes_to_show(small, ["train"]) == [0, 1]
