"""The operating system's failures that the user can fix become one ``Error:`` line naming the
path, with temporary files removed and nothing complete-looking left. A full disk is played by
a file size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored) in a subprocess: writes past it fail with
EFBIG exactly where a full disk fails them with ENOSPC."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.raw_datasets import make_coco
from tests.train_fixtures import FEAT, get_shards


def run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, str(REPO / "cli.py"), *map(str, args)]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=limit_writes
    )


def one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def temporaries(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.wsml-tmp"))


def test_train_on_a_full_disk(tmp_path_factory, tmp_path):
    shards, out = get_shards(tmp_path_factory), tmp_path / "run"
    args = ["train", "--shards", shards, "--method", "an", "--features", FEAT, "--out", out]
    line = one_error(run_limited([*args, "--epochs", "1"], limit=12_000))  # < a checkpoint
    assert str(out / "checkpoint-last.pt") in line and "EFBIG" in line
    assert temporaries(out) == []
    assert not (out / "checkpoint-last.pt").exists()


def test_shard_on_a_full_disk(tmp_path):
    root, out = make_coco(tmp_path / "coco", n_train=12, n_val=4), tmp_path / "out"
    line = one_error(run_limited(["shard", "--dataset", "coco", "--root", root, "--out", out,
                                  "--workers", "1"], limit=8_000))  # fmt: skip
    assert str(out) in line and ".tar" in line and "EFBIG" in line
    assert not (out / "manifest.json").exists()
    assert temporaries(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_shard_into_a_read_only_folder(tmp_path):
    root, parent = make_coco(tmp_path / "coco", n_train=4, n_val=2), tmp_path / "ro"
    parent.mkdir(mode=0o555)
    proc = run_limited(["shard", "--dataset", "coco", "--root", root, "--out", parent / "out",
                        "--workers", "1"], limit=resource.RLIM_INFINITY)  # fmt: skip
    assert str(parent) in one_error(proc)
