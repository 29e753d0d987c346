"""Every state a crash can leave in a run folder has one way forward, and the message names
it: a run stopped before its first checkpoint starts again (with or without ``--resume``), one
with a checkpoint is continued by ``--resume``, a finished one is started again only with
``--overwrite``. Each state is made as the writer leaves it at that point (run folder files in
the order ``train/runfolder.py`` and the loop write them), then both commands are tried and
the way each names is followed to the run's end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from tests.support.cli_checks import assert_refused
from tests.support.train_fixtures import FEAT, get_shards
from tests.test_os_errors import one_error, run_limited, temporaries


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


def train_args(shards, out, *extra):
    return ["train", "--shards", shards, "--method", "an", "--features", FEAT, "--out", out,
            "--epochs", 2, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def after_epoch_1(shards, tmp_path_factory) -> Path:
    """A run of two epochs stopped after its first (every file of epoch 1 written)."""
    out = tmp_path_factory.mktemp("crashes") / "run"
    result = invoke(*train_args(shards, out, "--stop-after-epochs", 1))
    assert result.exit_code == 0, result.output
    return out


def tmp_of(name: str) -> str:
    return f".{name}.4242.wsml-tmp"  # a killed writer's temporary file


# the files present at each crash point, in the order they are written
WRITTEN = [
    "config.json",
    "metrics.jsonl",
    "summary.csv",
    "predictions",
    "summary.json",
    "checkpoint-best.pt",
    "checkpoint-last.pt",
]
STATES = {  # state: (files kept, temporaries left by the kill)
    "killed writing config.json": (0, ["config.json"]),
    "config.json written": (1, []),
    "killed writing metrics": (1, ["metrics.jsonl"]),
    "metrics written": (3, []),
    "summary written": (5, ["checkpoint-last.pt"]),  # the issue's: before the first checkpoint
    "best checkpoint written": (6, ["checkpoint-last.pt"]),
}


def make_state(after_epoch_1: Path, folder: Path, state: str) -> Path:
    shutil.copytree(after_epoch_1, folder)
    kept, temporaries_left = STATES[state]
    for name in WRITTEN[kept:]:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in temporaries_left:
        (folder / tmp_of(name)).write_bytes(b"half")
    return folder


def assert_trained_to_the_end(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_trained"] == 2
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert temporaries(out) == []


@pytest.mark.parametrize("resume", [False, True], ids=["same command", "--resume"])
@pytest.mark.parametrize("state", list(STATES))
def test_a_run_stopped_before_its_first_checkpoint_starts_again(
    shards, after_epoch_1, tmp_path, state, resume
):
    out = make_state(after_epoch_1, tmp_path / "run", state)
    if not resume:
        result = invoke(*train_args(shards, out))
    elif state == "killed writing config.json":  # no config: nothing says what the run was
        line = assert_refused(invoke("train", "--resume", "--out", out), str(out), "no config.json")
        assert "the same command without --resume" in line
        result = invoke(*train_args(shards, out))
    else:
        result = invoke("train", "--resume", "--out", out)
    assert result.exit_code == 0, result.output
    assert_trained_to_the_end(out)


def test_a_run_with_a_checkpoint_is_continued_by_resume(shards, after_epoch_1, tmp_path):
    out = shutil.copytree(after_epoch_1, tmp_path / "run")
    (out / tmp_of("checkpoint-last.pt")).write_bytes(b"half")  # killed in epoch 2's save
    line = assert_refused(invoke(*train_args(shards, out)), str(out), "already holds a run")
    assert "pass --resume to continue it or --overwrite to start it again" in line
    result = invoke("train", "--resume", "--out", out)
    assert result.exit_code == 0, result.output
    assert_trained_to_the_end(out)


def test_a_finished_run_without_checkpoints_is_started_again_only_on_request(
    shards, after_epoch_1, tmp_path
):
    out = shutil.copytree(after_epoch_1, tmp_path / "run")
    assert invoke("train", "--resume", "--out", out).exit_code == 0
    for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
        (out / name).unlink()  # kept the results, dropped the weights
    line = assert_refused(invoke(*train_args(shards, out)), "already holds a run (finished)")
    assert "--resume" not in line and "pass --overwrite to start it again" in line
    line = assert_refused(invoke("train", "--resume", "--out", out), "finished run")
    assert "nothing to resume; add --overwrite" in line
    result = invoke("train", "--resume", "--overwrite", "--out", out)
    assert result.exit_code == 0, result.output
    assert_trained_to_the_end(out)


def test_a_full_disk_at_the_first_checkpoint_then_the_same_command(shards, tmp_path):
    out = tmp_path / "run"
    args = train_args(shards, out)
    line = one_error(run_limited(args, limit=12_000))  # past summary.json, short of a checkpoint
    assert str(out / "checkpoint-last.pt") in line
    assert (out / "summary.json").is_file() and not (out / "checkpoint-last.pt").exists()
    result = invoke(*args)  # space freed: the command again
    assert result.exit_code == 0, result.output
    assert_trained_to_the_end(out)


def test_a_sweep_is_started_again_by_resume_with_overwrite(shards, tmp_path):
    out = tmp_path / "sweep"
    grid = ["--sweep", "-o", "sweep_lrs=0.01,0.1", "-o", "sweep_batches=16"]
    assert invoke(*train_args(shards, out, *grid)).exit_code == 0
    line = assert_refused(invoke("train", "--resume", "--out", out), "not resumable")
    assert "add --overwrite" in line
    result = invoke("train", "--resume", "--overwrite", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["chosen"]
