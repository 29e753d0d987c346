"""The leaderboard groups finished runs over seeds, ranks them by mean test mAP of the selected
epochs, and lists unfinished runs apart with their epoch."""

from __future__ import annotations

import json

import pytest

from shards.base.errors import WsmlError
from tests.support.report_runs import write_run
from train.leaderboard import collect_runs, write_leaderboard


def test_seeds_grouped_ranked_and_unfinished_apart(tmp_path):
    write_run(tmp_path / "an-s0", "an", 50.0, seed=0)
    write_run(tmp_path / "an-s1", "an", 52.0, seed=1)
    write_run(tmp_path / "role", "role", 61.5, setting="linear-sweep", lr=1e-4, batch_size=8)
    write_run(tmp_path / "ll-ct", "ll-ct", 55.25, setting="e2e")
    write_run(tmp_path / "killed", "ll-r", 70.0, finished=False, epochs=1)
    write_run(tmp_path / "starting", "em", 0.0, summary=False, epochs=0)
    (tmp_path / "not-a-run").mkdir()
    rows, table = write_leaderboard(tmp_path)
    assert [r["method"] for r in rows] == ["role", "ll-ct", "an"]
    an = rows[2]
    assert an["n"] == 2 and an["seeds"] == [0, 1] and an["runs"] == ["an-s0", "an-s1"]
    assert an["test mAP"] == 51.0 and an["± std"] == pytest.approx(2**0.5)
    assert an["val mAP"] == 52.0 and an["CF1"] == 25.5 and an["OF1"] == 17.0
    assert rows[0]["lr"] == 1e-4 and rows[0]["batch"] == 8  # the sweep's chosen member
    assert an["lr"] == 1e-3 and an["batch"] == 16  # the run's own config
    assert rows[1]["inputs"] == "resnet50" and an["inputs"] == "feat-tag"
    assert (
        "| an | single-positive | linear | feat-tag | 1e-03 | 16 | 2 | 52.00 | 51.00 | 1.41 |"
        in table
    )
    assert (
        "| role | single-positive | linear-sweep | feat-tag | 1e-04 | 8 | 1 | 62.50 | 61.50 | – |"
        in table
    )
    unfinished = table.split("Unfinished runs")[1]
    assert (
        f"| {tmp_path / 'killed'} | ll-r | single-positive | linear | 1 | 71.00 | 70.00 |"
        in unfinished
    )
    assert f"| {tmp_path / 'starting'} | em | single-positive | linear | 0 | – | – |" in unfinished
    assert "killed" not in table.split("Unfinished runs")[0]
    assert (tmp_path / "leaderboard.md").read_text() == table
    saved = json.loads((tmp_path / "leaderboard.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert [u["epoch"] for u in saved["unfinished"]] == [1, 0]


def test_no_finished_run_is_an_error(tmp_path):
    with pytest.raises(WsmlError, match="holds no run"):
        collect_runs(tmp_path)
    with pytest.raises(WsmlError, match="not a folder"):
        collect_runs(tmp_path / "missing")
    write_run(tmp_path / "killed", "ll-r", 70.0, finished=False)
    with pytest.raises(WsmlError, match="no finished run"):
        collect_runs(tmp_path)


def test_a_folder_that_cannot_be_written_still_gets_its_table(tmp_path):
    """Read-only storage (here a file size limit, which stops root too): the table is printed,
    then one warning says what was not saved; exit 0, as the ranking was computed."""
    from tests.test_os_errors import run_limited

    write_run(tmp_path / "an-s0", "an", 50.0, seed=0)
    proc = run_limited(["leaderboard", tmp_path], limit=100)
    assert proc.returncode == 0, proc.stderr
    assert "| an | single-positive | linear | feat-tag |" in proc.stdout
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 1 and "Traceback" not in proc.stderr
    assert warnings[0].startswith("Warning: the leaderboard was not saved: cannot write")
    assert str(tmp_path / "leaderboard.md") in warnings[0] and "EFBIG" in warnings[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["an-s0"]


def test_nothing_computed_is_an_error(tmp_path):
    from tests.test_os_errors import one_error, run_limited

    line = one_error(run_limited(["leaderboard", tmp_path], limit=100))
    assert "holds no run" in line
