"""Storage the user may not write or read, played for real: as root, the command runs without
the two capabilities that let root ignore file permissions (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, dropped from its bounding set), so a mode of 0 or 0555 stops it as it
stops any user. An unreadable cache file is reported as "cannot read", and ``leaderboard`` on a
colleague's read-only runs prints its table before saying what it could not save."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from tests.support.raw_datasets import REPO
from tests.support.report_runs import write_run
from tests.support.train_fixtures import FEAT, get_shards
from tests.test_os_errors import one_error

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_override() -> None:
    if os.geteuid() != 0:
        return  # permissions already apply
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_drop() -> bool:
    try:
        subprocess.run(["true"], preexec_fn=_drop_override, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = pytest.mark.skipif(not _can_drop(), reason="cannot drop root's DAC override")


def run_bound(args: list) -> subprocess.CompletedProcess:
    """``cli.py args`` bound by file permissions, whoever runs the tests."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO, env=env,
        capture_output=True, text=True, preexec_fn=_drop_override,
    )  # fmt: skip


def test_an_unreadable_cache_file_is_reported_as_unreadable(tmp_path_factory, tmp_path):
    import shutil

    shards = shutil.copytree(get_shards(tmp_path_factory), tmp_path / "shards")
    unreadable = shards / "embeddings" / FEAT / "train.npy"
    unreadable.chmod(0)
    args = ["train", "--shards", shards, "--method", "an", "--features", FEAT, "--epochs", 1]
    line = one_error(run_bound([*args, "--out", tmp_path / "run"]))
    assert line.startswith(f"Error: cannot read {unreadable}: Permission denied (EACCES)")
    assert "may read it" in line and "write" not in line


def test_leaderboard_on_read_only_runs_prints_its_table(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "an-s0", "an", 50.0, seed=0)
    for p in [runs, *runs.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    proc = run_bound(["leaderboard", runs])
    for p in [runs, *runs.rglob("*")]:
        p.chmod(0o755)  # so pytest may remove it
    assert proc.returncode == 0, proc.stderr
    assert "| an | single-positive | linear | feat-tag |" in proc.stdout
    assert proc.stderr.startswith("Warning: the leaderboard was not saved: cannot write")
    assert "Permission denied (EACCES)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (runs / "leaderboard.md").exists()
