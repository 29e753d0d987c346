"""``--sweep``: a 2 x 2 grid (batch {8, 16} x lr) trained as one vectorised job gives every
configuration the metrics of a separate run with that batch size and lr (to 1e-5): for stacked
members (AN; EPR, whose regulariser is per batch; LL-Cp, whose top-k is per batch and whose
corrections are per image), for methods with trainable per-image state (ROLE), an epoch pass and
pseudo-labels (EM+APL), which train unstacked, EMA with a OneCycle schedule (ASL), epoch
schedules (GR-Loss) and per-batch CLIP pseudo-labels from cached tiles (AEVLP); the pick is the
best validation mAP. The sweep keeps its pick's head at its selected epoch (with
``--keep-members``, every member's) equal to the separate run's selected checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.train_fixtures import CLIP, FEAT, get_shards, read_metrics
from train.config import RunConfig
from train.run import train
from train.runfolder import BEST, RunFolder

GRID = {"sweep_lrs": (1e-2, 1e-3), "sweep_batches": (8, 16)}
CASES = {
    "an": {},
    "epr": {},
    "ll-cp": {},
    "role": {},
    "em-apl": {"warmup_epoch": "1"},
    "asl": {"ema": "0.8", "schedule_epochs": "3"},
    "gr-loss": {},
    "aevlp": {"grid": "2", "threshold": "0.2"},
}
RUN = {"aevlp": {"clip": CLIP}}  # run options a method needs


def close(a, b, where):
    if isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in b:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), where
    else:
        assert a == b, where


@pytest.mark.parametrize("method", list(CASES))
def test_sweep_members_equal_separate_runs(tmp_path_factory, tmp_path, method):
    shards = str(get_shards(tmp_path_factory))
    opts = {"epochs": "3", "stop_patience": "0", **CASES[method]}
    out = tmp_path / "sweep"
    summary = train(
        RunConfig(
            shards,
            method,
            features=FEAT,
            out=str(out),
            sweep=True,
            method_options=opts,
            keep_members=True,
            **GRID,
            **RUN.get(method, {}),
        )  # fmt: skip
    )
    assert len(summary["members"]) == 4
    pick = max(summary["members"].items(), key=lambda kv: kv[1]["val_mAP"])
    assert summary["chosen"] == pick[0] and summary["test"]["mAP"] == pick[1]["test_mAP"]
    for name, member in summary["members"].items():
        options = {**opts, "lr": repr(member["lr"]), "batch_size": str(member["batch_size"])}
        alone = tmp_path / name
        train(RunConfig(shards, method, features=FEAT, out=str(alone), method_options=options,
                        **RUN.get(method, {})))  # fmt: skip
        mine, theirs = read_metrics(out / "members" / name), read_metrics(alone)
        assert len(mine) == len(theirs) == 3
        for a, b in zip(mine, theirs, strict=True):
            close(a, b, f"{name} epoch {b['epoch']}")
        s_mine = json.loads((out / "members" / name / "summary.json").read_text())
        s_theirs = json.loads((alone / "summary.json").read_text())
        assert s_mine["best_epoch"] == s_theirs["best_epoch"]
        close(s_mine["test_ap"], s_theirs["test_ap"], "test_ap")
        home = out if name == summary["chosen"] else out / "members" / name
        kept, own = (RunFolder(f).load_checkpoint(BEST) for f in (home, alone))
        assert kept["epoch"] == own["epoch"] == s_theirs["best_epoch"]
        weights = own["ema"] if own["loop"]["best_weights"] == "ema" else own["model"]
        for key in ("head.weight", "head.bias"):
            torch.testing.assert_close(kept["model"][key], weights[key], atol=1e-5, rtol=0)
        for split in ("val", "test"):
            np.testing.assert_allclose(
                np.load(home / "predictions" / f"{split}.npy"),
                np.load(alone / "predictions" / f"{split}.npy"),
                atol=1e-5,
            )


def test_groups_side_by_side_give_the_same_numbers(tmp_path_factory, tmp_path):
    """On a CPU the batch-size groups train on one thread per core; with one thread (one group
    after the other) every member's metrics are the same, exactly."""
    import torch

    shards = str(get_shards(tmp_path_factory))
    lines = {}
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}"
            config = RunConfig(
                shards, "ll-ct", features=FEAT, out=str(out), sweep=True,
                method_options={"epochs": "2"}, **GRID,
            )  # fmt: skip
            train(config)
            lines[threads] = {m.name: read_metrics(m) for m in sorted((out / "members").iterdir())}
    finally:
        torch.set_num_threads(before)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "time"} for m in ms]  # noqa: E731
    assert lines[1].keys() == lines[2].keys() and len(lines[1]) == 4
    for name in lines[1]:
        assert strip(lines[1][name]) == strip(lines[2][name]), name
