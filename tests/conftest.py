"""Shared fixtures: tiny real-layout datasets built in tmp_path, and the real raw-format files
in ../shared/fixtures/real; the GPU tests' selection. Helpers the tests import are
``tests/support/``'s."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.raw_datasets import REAL, make_coco

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "raw")


@pytest.fixture(scope="session")
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at {REAL}")
    return REAL


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
