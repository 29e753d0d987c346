"""Nothing wrong passes silently in ``cli.py train``: a resume on changed data, an epoch without
a step, a corrupted label table and two writers in one run folder each end in one ``Error:``
line naming what is wrong; a run killed before its first checkpoint starts again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import cli
from shards.caches import write_cache
from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.raw_datasets import REPO, make_coco
from tests.support.train_fixtures import FEAT, get_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


@pytest.fixture
def copy(shards, tmp_path):
    """A copy of the shared shard set that a test may change."""
    return shutil.copytree(shards, tmp_path / "shards")


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def train_args(shards, out, *extra):
    return ["train", "--shards", shards, "--method", "an", "--out", out, "--features", FEAT, *extra]


def test_config_records_the_data_and_resume_refuses_changed_data(copy, tmp_path):
    out = tmp_path / "run"
    args = train_args(copy, out, "--epochs", 3)
    assert invoke(*args, "--stop-after-epochs", 1).exit_code == 0
    data = json.loads((out / "config.json").read_text())["data"]
    want = hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
    assert data["manifest.json"] == want
    assert set(data) == {
        "manifest.json",
        "observed/single-positive/regime.json",
        f"embeddings/{FEAT}/meta.json",
        *(f"embeddings/{FEAT}/{split}.npy" for split in ("train", "val", "test")),
    }
    meta = (copy / "embeddings" / FEAT / "meta.json").read_bytes()
    arrays = {s: _ones(copy, s) for s in ("train", "val", "test")}
    write_cache(copy, FEAT, arrays, model=json.loads(meta)["model"])  # the same meta.json
    assert (copy / "embeddings" / FEAT / "meta.json").read_bytes() == meta
    line = assert_refused(invoke("train", "--resume", "--out", out), f"embeddings/{FEAT}/train.npy")
    assert "meta.json" not in line
    write_cache(copy, FEAT, arrays, model="other")
    assert_refused(invoke("train", "--resume", "--out", out), f"embeddings/{FEAT}/meta.json")
    with open(copy / "manifest.json", "a") as f:
        f.write(" ")  # the same set would read the same; any change is refused
    line = assert_refused(invoke("train", "--resume", "--out", out), "manifest.json", "--overwrite")
    assert str(copy) in line
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


def _ones(root, split):
    import numpy as np

    rows = json.loads((root / "manifest.json").read_text())["splits"][split]["num_samples"]
    return np.ones((rows, 24), np.float32)


@pytest.mark.parametrize(
    "extra",
    [["--batch-size", 100000], ["--sweep", "-o", "sweep_batches=8,1000", "-o", "sweep_lrs=0.1"]],
    ids=["linear", "sweep"],
)
def test_an_epoch_without_a_step_is_refused(shards, tmp_path, extra):
    out = tmp_path / "run"
    result = invoke(*train_args(shards, out, *extra))
    batch = "100000" if "--batch-size" in extra else "1000"
    assert_refused(
        result, "160 rows", f"batch of {batch}", "1 rank", "no optimisation step", out=out
    )


def test_an_e2e_epoch_without_a_step_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--shards", shards, "--method", "an", "--setting", "e2e", "--out", out]
    result = invoke(*args, "--batch-size", 256, "--weights", "none")
    assert_refused(result, "160 rows", "batch of 256", out=out)


def test_a_corrupted_view_is_refused(copy, tmp_path):
    path = copy / "observed" / "single-positive" / "train.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    line = assert_refused(invoke(*train_args(copy, tmp_path / "run")), str(path), "sha256")
    assert "regime.json" in line


def test_repeated_row_ids_are_refused_even_with_a_matching_sha256(copy, tmp_path):
    path = copy / "labels" / "train.parquet"
    table = pq.read_table(path)
    rows = table["row"].to_numpy().copy()
    rows[5] = rows[4]
    table = table.set_column(table.column_names.index("row"), "row", pa.array(rows))
    pq.write_table(table, path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["labels"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(invoke(*train_args(copy, tmp_path / "run")), str(path), "position 5", "row ids")


HOLD = """
import sys, time
from pathlib import Path
from shards.base.fileio import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held(tmp_path):
    """Another process holding the lock of a folder: (folder, its pid)."""
    procs = []

    def hold(folder):
        p = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p.pid

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_writer_of_a_run_folder_fails_at_once(shards, tmp_path, held):
    out = tmp_path / "run"
    pid = held(out)
    assert_refused(invoke(*train_args(shards, out)), str(out), f"pid {pid}", out=out)


def test_a_second_writer_of_a_shard_set_fails_at_once(tmp_path, held):
    root, out = make_coco(tmp_path / "coco", n_train=8, n_val=4), tmp_path / "out"
    pid = held(out)
    assert_refused(shard_cli(root, out), str(out), f"pid {pid}", out=out)


def test_a_run_killed_before_its_first_checkpoint_starts_again(shards, tmp_path):
    """(Every crash point: tests/test_run_crashes.py.)"""
    out = tmp_path / "run"
    assert invoke(*train_args(shards, out, "--epochs", 1)).exit_code == 0
    for name in ("checkpoint-last.pt", "checkpoint-best.pt", "summary.json", "metrics.jsonl"):
        (out / name).unlink()  # as if killed during its first epoch
    result = invoke("train", "--resume", "--out", out)  # nothing to resume: started again
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file()


LAUNCHER = """
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env={**__import__("os").environ,
                        "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"})
print(rank.pid, flush=True)
time.sleep(60)
"""
RANK = """
import time
from train.integrity import end_with_launcher
end_with_launcher()
time.sleep(60)
"""


def test_a_rank_ends_when_its_launcher_dies():
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, RANK], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    rank = int(launcher.stdout.readline())
    time.sleep(2)  # the rank has imported and asked for the signal
    launcher.kill()
    launcher.wait()
    for _ in range(100):
        try:
            os.kill(rank, 0)
        except ProcessLookupError:
            return  # gone (reaped by init)
        time.sleep(0.1)
    os.kill(rank, signal.SIGKILL)
    raise AssertionError("the rank outlived its launcher by 10 s")


def test_a_second_writer_of_a_cache_fails_at_once(copy, held):
    folder = copy / "embeddings" / "wsml-tiny-clip__none"
    pid = held(folder)
    args = ["cache-clip", "--shards", copy, "--model", "wsml-tiny-clip", "--pretrained", "none"]
    line = assert_refused(invoke(*args))
    assert str(folder) in line and f"pid {pid}" in line
    assert not folder.exists()
