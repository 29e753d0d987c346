"""The leaderboard reads finished run folders and ranks them by the selected epoch's test mAP."""

from __future__ import annotations

import json

import pytest

from shards.errors import WsmlError
from train.leaderboard import collect_runs, write_leaderboard


def write_run(folder, method, setting, test_map, **summary):
    folder.mkdir(parents=True)
    run = {"features": "feat-tag", "backbone": "resnet50"}
    config = {"run": run, "method": {"lr": 1e-3, "batch_size": 16}}
    (folder / "config.json").write_text(json.dumps(config))
    s = {
        "method": method, "setting": setting, "regime": "single-positive", "dataset": "coco",
        "best_epoch": 3, "val": {"mAP": test_map + 1}, "test": {"mAP": test_map, "CF1": 1.0,
        "OF1": 2.0}, **summary,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(s))


def test_ranked_by_test_map_with_each_rows_setting(tmp_path):
    write_run(tmp_path / "an", "an", "linear", 50.0)
    write_run(tmp_path / "role", "role", "linear-sweep", 61.5, lr=1e-4, batch_size=8)
    write_run(tmp_path / "ll-ct", "ll-ct", "e2e", 55.25)
    (tmp_path / "unfinished").mkdir()  # no summary.json: not a row
    rows, table = write_leaderboard(tmp_path)
    assert [r["method"] for r in rows] == ["role", "ll-ct", "an"]
    assert rows[0]["lr"] == 1e-4 and rows[0]["batch"] == 8  # the sweep's chosen member
    assert rows[2]["lr"] == 1e-3 and rows[2]["batch"] == 16  # the run's own config
    assert rows[1]["inputs"] == "resnet50" and rows[2]["inputs"] == "feat-tag"
    assert (
        "| role | single-positive | linear-sweep | feat-tag | 1e-04 | 8 | 3 | 62.50 | 61.50 |"
        in table
    )
    assert (tmp_path / "leaderboard.md").read_text() == table
    assert json.loads((tmp_path / "leaderboard.json").read_text()) == rows


def test_no_finished_run_is_an_error(tmp_path):
    with pytest.raises(WsmlError, match="no finished run"):
        collect_runs(tmp_path)
    with pytest.raises(WsmlError, match="not a folder"):
        collect_runs(tmp_path / "missing")
