"""The report and the leaderboard group by the data's identity (two shard sets of one converter
never merge; a copy of one in another folder still groups), count a copied run folder once and
name it, refuse an --out folder that holds no report and swap a new report in whole, escape run
names in report.md; a real run's provenance and its label-state chance line."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import train.report.figures
from tests.support.report_runs import write_run
from tests.support.train_fixtures import FEAT, get_shards
from train.leaderboard import collect_runs
from train.report.tables import by_table


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def move_shards(run: Path, shards: Path) -> None:
    """The run's config as if trained on the shard set at ``shards`` (another folder)."""
    config = json.loads((run / "config.json").read_text())
    config["run"]["shards"] = str(shards)
    (run / "config.json").write_text(json.dumps(config))


def test_grouped_by_the_data_not_the_converter(tmp_path):
    write_run(tmp_path / "a" / "an", "an", 50.0, dataset="coco", data="manifest-a")
    write_run(tmp_path / "b" / "an", "an", 60.0, dataset="coco", data="manifest-b")
    rows, _ = collect_runs(tmp_path)
    assert [(r["n"], r["test mAP"]) for r in rows] == [(1, 50.0), (1, 60.0)]  # never merged
    assert len(by_table(rows)) == 2  # one table each, told apart
    # the same shard set (one manifest hash) copied to two folders: one group
    write_run(tmp_path / "c" / "ll-r-s0", "ll-r", 70.0, dataset="coco", data="manifest-c")
    write_run(tmp_path / "c" / "ll-r-s1", "ll-r", 72.0, dataset="coco", data="manifest-c", seed=1)
    move_shards(tmp_path / "c" / "ll-r-s1", tmp_path / "copy" / "coco")
    rows, _ = collect_runs(tmp_path)
    llr = [r for r in rows if r["method"] == "ll-r"]
    assert len(llr) == 1 and llr[0]["n"] == 2 and llr[0]["seeds"] == [0, 1]


def test_a_copied_run_folder_is_counted_once(tmp_path):
    write_run(tmp_path / "an-s0", "an", 50.0, seed=0)
    write_run(tmp_path / "an-s1", "an", 52.0, seed=1)
    shutil.copytree(tmp_path / "an-s1", tmp_path / "an-s1-copy")
    rows, _ = collect_runs(tmp_path)
    (an,) = rows
    assert an["n"] == 2 and an["seeds"] == [0, 1] and an["test mAP"] == 51.0
    assert an["duplicates"] == [f"{tmp_path / 'an-s1-copy'} (same as {tmp_path / 'an-s1'})"]
    board = invoke("leaderboard", tmp_path)
    assert f"Counted once: {tmp_path / 'an-s1-copy'} (same as" in board.output


def test_an_out_folder_without_a_report_is_refused(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "an", "an", 50.0)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text('<img src="logo.png"><img src="photo.png">')
    for name in ("logo.png", "photo.png"):
        (site / name).write_bytes(b"mine")
    result = invoke("report", runs, "--out", site)
    assert result.exit_code == 1 and "holds files but no wsml report" in result.output
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "logo.png", "photo.png"]
    assert invoke("report", runs, "--out", site, "--overwrite").exit_code == 0
    assert (site / "logo.png").read_bytes() == (site / "photo.png").read_bytes() == b"mine"
    assert "wsml report" in (site / "index.html").read_text()
    (site / "notes.txt").write_text("mine too")  # a report folder: written again, notes kept
    assert invoke("report", runs, "--out", site).exit_code == 0
    assert (site / "notes.txt").read_text() == "mine too" and (site / "logo.png").exists()


def linked(out: Path) -> list[str]:
    import re

    return re.findall(r'(?:src|href)="([^"]+)"', (out / "index.html").read_text())


def test_a_report_killed_half_way_leaves_the_old_page_whole(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_run(runs / "an", "an", 50.0)
    out = tmp_path / "report"
    assert invoke("report", runs, "--out", out).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ["index.html", *linked(out)]}
    write_run(runs / "ll-r", "ll-r", 60.0)  # the next report redraws the figures, then dies

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.report.figures, "plot_per_class", killed)  # after the curves
    assert invoke("report", runs, "--out", out).exit_code != 0
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "runs"]  # nothing left over


def test_report_md_escapes_run_names(tmp_path):
    runs = tmp_path / "runs"
    name = "x<img src=x onerror=alert(3)>"
    write_run(runs / name, "an", 50.0)
    write_run(runs / f"{name}-running", "an", 0.0, summary=False)
    out = tmp_path / "report"
    assert invoke("report", runs, "--out", out).exit_code == 0
    md = (out / "report.md").read_text()
    assert "<img" not in md and "&lt;img src=x onerror=alert(3)&gt;" in md
    assert "<img src=x" not in (out / "index.html").read_text()


@pytest.fixture(scope="module")
def llr_run(tmp_path_factory):
    shards = get_shards(tmp_path_factory)
    runs = tmp_path_factory.mktemp("llr-runs")
    result = invoke("train", "--shards", shards, "--features", FEAT, "--epochs", 3,
                    "--method", "ll-r", "-o", "delta_rel=5", "--out", runs / "ll-r")  # fmt: skip
    assert result.exit_code == 0, result.output
    return shards, runs


def test_a_run_records_its_provenance(llr_run, tmp_path):
    shards, runs = llr_run
    p = json.loads((runs / "ll-r" / "config.json").read_text())["provenance"]
    manifest = hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()
    assert p["shard_set"] == {"path": str(shards.resolve()), "name": shards.name,
                              "converter": "coco", "manifest_sha256": manifest}  # fmt: skip
    meta = hashlib.sha256((shards / "embeddings" / FEAT / "meta.json").read_bytes()).hexdigest()
    assert p["caches"] == {FEAT: {"meta_sha256": meta}}
    assert p["view"]["name"] == "single-positive" and p["view"]["params"]["seed"] == 1200
    assert p["protocol"]["setting"] == "linear" and "seed 1200" in p["protocol"]["val_split"]
    assert p["wsml"] == "0.1.0" and p["machine"]["cores"] >= 1 and p["date"][:2] == "20"
    # the process's own command line (under CliRunner: pytest's; from a shell: cli.py train …)
    assert p["command"] == shlex.join([Path(sys.executable).name, *sys.argv])
    git = shutil.which("git") and subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(cli.__file__).parent
    )  # fmt: skip
    if git and git.returncode == 0:
        assert p["git"]["commit"] == git.stdout.strip()
    out = tmp_path / "report"
    assert invoke("report", runs, "--out", out).exit_code == 0
    md, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert "## Provenance" in md and manifest[:16] in md and meta[:16] in md
    assert "<footer><h2>Provenance</h2>" in page and "report" in page.split("<footer>")[1]


def test_the_chance_line_equals_a_hand_count(llr_run, tmp_path):
    from shards.shardset import open_shard_set
    from train.report.write import read_chance

    shards, runs = llr_run
    ss = open_shard_set(shards)
    observed = ss.observed_labels("single-positive", "train")
    truth = ss.full_labels("train")
    unknown = observed == 0
    positive = 100 * (unknown & (truth == 1)).sum() / (unknown & (truth != 0)).sum()
    chance = read_chance(str(shards), "single-positive")
    assert chance[1] == pytest.approx(positive) and chance[-1] == pytest.approx(100 - positive)
    assert 0 < chance[1] < 50
    out = tmp_path / "report"
    assert invoke("report", runs, "--out", out).exit_code == 0
    svg = next(out.glob("*-labels.svg")).read_text()
    assert f"chance: truly positive ({positive:.1f} %)" in svg  # LL-R's rejections: positives
    assert "truly negative" not in svg
    assert np.isfinite(positive)
