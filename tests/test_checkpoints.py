"""Checkpoints load as data only (train/checkpoints.py). A run folder's checkpoint carrying a
pickle that would run code (it creates a marker file) is refused with one line naming the file
and what it holds, through ``RunFolder.load_checkpoint``, ``train --resume``, ``eval``,
``predict`` and ``export``, and the marker never appears; a damaged file is refused; a state
that would need code to load is never written; checkpoints of older wsml (numpy's RNG key as
an array, torch's version as TorchVersion) load and resume exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.serialization import get_unsafe_globals_in_checkpoint

import cli
from shards.base.errors import WsmlError
from tests.support.cli_checks import assert_refused
from tests.support.predict_runs import get_predict_setup
from tests.support.train_fixtures import FEAT, get_shards, read_metrics, read_summary
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.run import train
from train.runfolder import BEST, LAST, RunFolder

OPTS = {"epochs": "2", "lr": "0.01", "stop_patience": "0"}
CALLED = f"{open.__module__}.{open.__qualname__}"  # what the payload names: io.open


class Payload:
    """What a crafted checkpoint carries: unpickling it calls ``open(marker, "w")``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(run: Path, name: str, marker: Path) -> None:
    """The run's checkpoint ``name`` as a crafted one: its own content, plus the payload among
    its weights."""
    ckpt = read_checkpoint(run / name)
    ckpt["model"]["head.extra"] = Payload(marker)
    torch.save(ckpt, run / name)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished two-epoch linear run and the same run stopped after its first epoch."""
    shards = get_shards(tmp_path_factory)
    base = tmp_path_factory.mktemp("checkpoints")
    out = {"shards": shards, "whole": base / "whole", "part": base / "part"}
    for name, kw in (("whole", {}), ("part", {"stop_after_epochs": 1})):
        config = RunConfig(str(shards), "an", features=FEAT, out=str(out[name]), **kw)
        train(RunConfig(**{**config.__dict__, "method_options": OPTS}))
    return out


def copy_run(runs, name: str, to: Path) -> Path:
    shutil.copytree(runs[name], to)
    return to


def test_the_payload_runs_under_plain_pickle(runs, tmp_path):
    """The control: loaded as torch.load(weights_only=False) would, the planted file runs."""
    run, marker = copy_run(runs, "whole", tmp_path / "run"), tmp_path / "marker"
    plant(run, BEST, marker)
    torch.load(run / BEST, weights_only=False)
    assert marker.is_file()


def test_a_planted_checkpoint_is_refused_and_runs_nothing(runs, tmp_path):
    run, marker = copy_run(runs, "whole", tmp_path / "run"), tmp_path / "marker"
    plant(run, BEST, marker)
    with pytest.raises(WsmlError) as e:
        RunFolder(run).load_checkpoint(BEST)
    line = str(e.value)
    assert "\n" not in line and str(run / BEST) in line and CALLED in line
    assert "weights_only=False" not in line  # never torch's advice to load it anyway
    assert_refused(invoke("eval", "--run", run), str(run / BEST), CALLED)
    assert not marker.exists()


def test_resume_from_a_planted_checkpoint_is_refused(runs, tmp_path):
    run, marker = copy_run(runs, "part", tmp_path / "run"), tmp_path / "marker"
    plant(run, LAST, marker)
    config = RunConfig(str(runs["shards"]), "an", features=FEAT, out=str(run), resume=True)
    with pytest.raises(WsmlError, match=CALLED):
        train(RunConfig(**{**config.__dict__, "method_options": OPTS}))
    assert not marker.exists()
    assert len(read_metrics(run)) == 1  # the folder as it was


def test_predict_and_export_refuse_a_planted_checkpoint(tmp_path_factory, tmp_path):
    """The shared-model case: someone's run folder, used to label one's images."""
    setup = get_predict_setup(tmp_path_factory)
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(setup["linear"], run)
    plant(run, BEST, marker)
    out = tmp_path / "out.parquet"
    images = setup["images"]
    assert_refused(invoke("predict", "--run", run, images, "--out", out), CALLED)
    assert_refused(invoke("export", "--run", run), str(run / BEST), CALLED)
    assert not marker.exists() and not out.exists() and not (run / "model.pt").exists()


def test_a_damaged_or_foreign_file_is_refused(runs, tmp_path):
    run = copy_run(runs, "whole", tmp_path / "run")
    data = (run / BEST).read_bytes()
    (run / BEST).write_bytes(data[: len(data) // 2])
    with pytest.raises(WsmlError, match="is not a readable checkpoint"):
        RunFolder(run).load_checkpoint(BEST)
    torch.save(torch.zeros(3), run / BEST)  # a tensor, not a checkpoint's dict
    with pytest.raises(WsmlError, match="is not a wsml checkpoint"):
        RunFolder(run).load_checkpoint(BEST)


def test_a_state_that_would_need_code_is_never_written(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    with pytest.raises(TypeError, match="numpy"):
        folder.save_checkpoint({"format": "x", "rng": np.zeros(3)}, best=True)
    assert list(folder.path.iterdir()) == []


def test_checkpoints_of_older_wsml_load_and_resume_exactly(runs, tmp_path):
    """Before, checkpoints held numpy's RNG key as a uint32 array and torch's version as a
    TorchVersion: they load (those types only, allowed by name) and resume as the same run."""
    run = copy_run(runs, "part", tmp_path / "run")
    assert get_unsafe_globals_in_checkpoint(run / LAST) == []  # today's: plain data only
    ckpt = read_checkpoint(run / LAST)
    name, key, *rest = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (name, np.asarray(key, dtype=np.uint32), *rest)
    ckpt["config"]["versions"]["torch"] = torch.__version__
    torch.save(ckpt, run / LAST)
    older = set(get_unsafe_globals_in_checkpoint(run / LAST))
    assert {"numpy.ndarray", "numpy.dtype", "torch.torch_version.TorchVersion"} <= older
    config = RunConfig(str(runs["shards"]), "an", features=FEAT, out=str(run), resume=True)
    summary = train(RunConfig(**{**config.__dict__, "method_options": OPTS}))
    assert read_metrics(run) == read_metrics(runs["whole"])
    assert summary == read_summary(runs["whole"])
