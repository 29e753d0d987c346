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

from tests.support.raw_datasets import REPO, make_coco
from tests.support.train_fixtures import FEAT, get_shards


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


def test_audit_on_storage_that_refuses_writes(tmp_path):
    """A shared, read-only dataset (played by a file size limit of 0: every write fails): audit
    prints every result, then what it could not save, and exits by its results alone."""
    import shutil

    raw, out = make_coco(tmp_path / "coco", n_train=12, n_val=4), tmp_path / "out"
    subprocess.run([sys.executable, str(REPO / "cli.py"), "shard", "--dataset", "coco",
                    "--root", raw, "--out", out, "--workers", "1"], check=True)  # fmt: skip
    proc = run_limited(["audit", out, "--workers", "1"], limit=0)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "audit OK" in proc.stdout and "report not saved" in proc.stdout
    unsaved = [line for line in proc.stderr.splitlines() if "could not save" in line]
    assert len(unsaved) == 2 and "image-hashes" in unsaved[0], proc.stderr
    assert str(out / "audit.json") in unsaved[1] and "EFBIG" in unsaved[1]
    assert not (out / "audit.json").exists() and temporaries(out) == []

    shutil.copy(raw / "train" / "img_train_000001.jpg", raw / "val" / "img_val_005001.jpg")
    shutil.rmtree(out)
    subprocess.run([sys.executable, str(REPO / "cli.py"), "shard", "--dataset", "coco",
                    "--root", raw, "--out", out, "--workers", "1"], check=True)  # fmt: skip
    proc = run_limited(["audit", out, "--workers", "1"], limit=0)
    assert "FAIL duplicate (same sha256): test row" in proc.stdout  # the results, first
    assert "could not save the report" in proc.stderr
    assert one_error(proc).endswith("the report above was not saved")
