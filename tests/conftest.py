"""Shared fixtures: tiny real-layout datasets built in tmp_path, and the real raw-format files
in ../shared/fixtures/real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.raw_datasets import REAL, REPO, make_coco  # noqa: F401  (REPO: for the tests)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "raw")


@pytest.fixture(scope="session")
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at {REAL}")
    return REAL


def shard_cli(root: Path, out: Path, *extra: str, dataset: str = "coco"):
    """``cli.py shard`` through click's CliRunner, one worker."""
    from click.testing import CliRunner

    import cli

    args = ["shard", "--dataset", dataset, "--root", str(root), "--out", str(out)]
    return CliRunner().invoke(cli.main, [*args, "--workers", "1", *extra])


def assert_refused(result, *names: str, out: Path | None = None, fresh: bool = True) -> str:
    """exit 1 with a one-line ``Error:`` naming ``names``, no traceback; ``out`` holds no
    manifest, and a fresh ``out`` is not left behind at all. Returns the error line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], f"{name!r} not named in: {errors[0]}"
    if out is not None:
        assert not (out / "manifest.json").exists()
        if fresh:
            assert not out.exists(), f"left behind: {sorted(p.name for p in out.rglob('*'))}"
    return errors[0]


def gpu_selected(config) -> bool:
    """Whether this session runs the ``gpu`` tests: ``-m gpu`` (or an expression naming gpu
    without negating it)."""
    expr = config.getoption("markexpr", "") or ""
    return "gpu" in expr and "not gpu" not in expr


def pytest_configure(config):
    """Pin the CPU suite to the CPU: on a GPU machine a plain ``pytest`` must run exactly as on
    CI (fp32, gloo, no cuda:1 for a second torchrun rank). Set before anything initialises CUDA;
    child processes (torchrun tests) inherit it. Only ``-m gpu`` sees the GPUs."""
    if not gpu_selected(config):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run with ``-m gpu`` on a machine with CUDA; skipped otherwise."""
    import torch

    if gpu_selected(config) and torch.cuda.is_available():
        return
    why = "needs a CUDA GPU" if gpu_selected(config) else "gpu tests run with -m gpu"
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
