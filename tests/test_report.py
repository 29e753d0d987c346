"""``cli.py report``: the page's and report.md's numbers are the summary.json files' (hand-made
runs: two seeds, a missing paper number, a run in progress, OpenImages groups, another dataset,
a broken metrics line; and tiny real runs), every figure is a PNG that exists, bad input fails
clearly, and a real headless browser loads every figure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from tests.support.report_runs import write_run
from tests.support.train_fixtures import FEAT, get_shards

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


class Tables(HTMLParser):
    """Rows (cell texts) of every <tr> with a class, and every <img src>."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._row: list[str] | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class"):
            self._row = []
            self.rows.setdefault(a["class"], []).append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(a["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append(self._cell)
            self._cell = None


def read_page(out: Path) -> Tables:
    page = Tables()
    page.feed((out / "index.html").read_text())
    for src in page.images:
        data = (out / src).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, src
    return page


def hand_made(root: Path) -> Path:
    runs = root / "runs"
    write_run(runs / "an-s0", "an", 50.0, seed=0)
    write_run(runs / "an-s1", "an", 52.5, seed=1)
    write_run(runs / "ll-r", "ll-r", 71.25, setting="e2e", classes=80)  # LL Table 1: 71.0
    write_run(runs / "hill", "hill", 60.0, setting="e2e", classes=80)  # no paper number
    write_run(runs / "an-10", "an", 50.0, setting="e2e")  # 3 classes: not the papers' COCO
    write_run(runs / "em-running", "em", 0.0, summary=False, epochs=2)
    groups = {"G1": 70.0, "G2": 75.5, "G3": 80.0, "G4": 85.0, "G5": 90.0}
    oi = {"setting": "e2e", "dataset": "openimages-v3", "classes": 5000, "groups": groups}
    write_run(runs / "oi-an", "an", 80.0, **oi)
    with (runs / "an-s1" / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 4, "train": \n')  # a line cut short
    return runs


def test_numbers_equal_the_summaries(tmp_path):
    runs = hand_made(tmp_path)
    out = tmp_path / "report"
    result = invoke("report", runs, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "index.html")
    page = read_page(out)
    rows = page.rows["leaderboard"]  # coco2014's table (ranked by test mAP), openimages'
    assert [(r[0], r[2]) for r in rows] == [
        ("ll-r", "e2e"), ("hill", "e2e"), ("an", "linear"), ("an", "e2e"), ("an", "e2e")
    ]  # fmt: skip
    llr, hill, an, an3, oi = rows
    # method regime setting inputs lr batch n val test ±std CI CF1 OF1 [G1..G5] paper Δ protocol
    assert an[4:13] == ["1e-03", "16", "2", "52.25", "51.25", "1.77", "–", "25.62", "17.08"]
    assert llr[6:] == ["1", "72.25", "71.25", "–", "–", "35.62", "23.75", "71.00", "0.25",
                       "resnet50 448 px, e2e, val 20% of official train, seed 1200"]  # fmt: skip
    assert hill[-3:-1] == an3[-3:-1] == ["–", "–"]  # no paper number; 3 classes are not COCO's
    # LL's Open Images protocol (its validation split) is not recorded: not compared
    assert oi[13:-1] == ["70.00", "75.50", "80.00", "85.00", "90.00", "different protocol", "–"]
    assert "ours: resnet50 448 px, e2e" in (out / "index.html").read_text()
    (running,) = page.rows["unfinished"]
    assert running[:5] == [str(runs / "em-running"), "em", "single-positive", "linear", "2"]
    md = (out / "report.md").read_text()
    assert "## Leaderboard: openimages-v3" in md and "## Leaderboard: coco2014" in md
    assert (
        "| an | single-positive | linear | feat-tag | 1e-03 | 16 | 2 | 52.25 | 51.25 | 1.77 | – |"
        in md
    )
    assert "an-s1/metrics.jsonl line 4: unreadable" in md
    assert "an-s1/metrics.jsonl line 4" in (out / "index.html").read_text()
    assert all(f"]({src})" in md for src in page.images)
    names = {Path(s).name for s in page.images}
    assert "coco2014-single-positive-labels.png" in names and len(names) == 6
    for name in names:  # each figure also as SVG and PDF, linked from the page and report.md
        for fmt in ("svg", "pdf"):
            other = Path(name).with_suffix(f".{fmt}").name
            assert (out / other).stat().st_size > 1000 and f'href="{other}"' in page_text(out)
            assert f"]({other})" in md
    assert "## Provenance" in md and "command: " in md and "<footer>" in page_text(out)
    shutil.rmtree(runs / "oi-an")
    no_papers = invoke("report", runs, "--out", out, "--no-paper-numbers")
    assert no_papers.exit_code == 0 and "| paper |" not in (out / "report.md").read_text()
    assert not list(out.glob("openimages*")), "figures of the old report are gone"


def page_text(out: Path) -> str:
    return (out / "index.html").read_text()


def set_lrs(run: Path, lrs: list[dict]) -> None:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line, lr in zip(lines, lrs, strict=True):
        line["lr"] = lr
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_full_labels_apart_and_lrs_used(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "bce", "bce", 70.0)
    write_run(runs / "ll-ct", "ll-ct", 60.0)  # base lr 1e-3
    write_run(runs / "asl", "asl", 50.0, setting="e2e")
    config = json.loads((runs / "bce" / "config.json").read_text())
    config["regime"] = {"view": "full", "kind": "full"}
    (runs / "bce" / "config.json").write_text(json.dumps(config))
    set_lrs(runs / "ll-ct", [{"head": 1e-2, "head-no-decay": 1e-2}] * 3)  # LL: the head x 10
    set_lrs(runs / "asl", [{"head": 5e-4 * e, "backbone": 5e-5 * e, "backbone-no-decay": 5e-5 * e}
                           for e in (1, 2, 1)])  # a schedule  # fmt: skip
    out = tmp_path / "report"
    assert invoke("report", runs, "--out", out).exit_code == 0
    md = (out / "report.md").read_text()
    main, full = md.split("### Full labels (the reference)")
    assert "| ll-ct |" in main and "| bce |" not in main and "| bce |" in full  # bce ranks apart
    assert "| ll-ct | single-positive | linear | feat-tag | 0.01 (base 1e-03) | 16 |" in main
    assert "| asl | single-positive | e2e | resnet50 | 1e-03 scheduled (head x10) | 16 |" in main


def test_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("report", empty, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "holds no run" in result.output
    result = invoke("report", tmp_path / "missing")
    assert result.exit_code == 1 and "not a folder of runs" in result.output
    assert invoke("report").exit_code == 2
    assert not (tmp_path / "r" / "index.html").exists()
    for seeds in (["--seeds", "0,x"], ["--seeds", "1,1"], ["--seeds", "0,1", "--seed", "2"]):
        result = invoke("train", *seeds)
        assert result.exit_code == 2 and "seed" in result.output, result.output


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Tiny real runs on the digits shard set: ll-r with two seeds, an em-apl sweep."""
    shards = get_shards(tmp_path_factory)
    runs = tmp_path_factory.mktemp("report-runs")
    base = ["train", "--shards", shards, "--features", FEAT, "--epochs", 3]
    r = invoke(*base, "--method", "ll-r", "-o", "delta_rel=5", "--seeds", "0,1",
               "--out", runs / "ll-r")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = invoke(*base, "--method", "em-apl", "-o", "warmup_epoch=1", "--sweep",
               "-o", "sweep_lrs=0.01", "-o", "sweep_batches=8,16", "--out", runs / "em-apl")  # fmt: skip
    assert r.exit_code == 0, r.output
    return runs


def test_a_real_study(real_runs, tmp_path):
    assert sorted(p.name for p in real_runs.iterdir()) == ["em-apl", "ll-r-s0", "ll-r-s1"]
    lines = [json.loads(x) for x in (real_runs / "ll-r-s0/metrics.jsonl").read_text().splitlines()]
    assert [x["train"]["labels/rejected/changed"] > 0 for x in lines] == [False, True, True]
    csv = (real_runs / "ll-r-s0/summary.csv").read_text().splitlines()
    assert len(csv) == 4 and "train_labels_rejected_precision" in csv[0].split(",")
    out = tmp_path / "report"
    result = invoke("report", real_runs, "--out", out)
    assert result.exit_code == 0, result.output
    page = read_page(out)
    summaries = [json.loads((real_runs / n / "summary.json").read_text())
                 for n in ("ll-r-s0", "ll-r-s1", "em-apl")]  # fmt: skip
    rows = {r[0]: r for r in page.rows["leaderboard"]}
    tests = [s["test"]["mAP"] for s in summaries[:2]]
    assert rows["ll-r"][6] == "2" and rows["ll-r"][8] == f"{sum(tests) / 2:.2f}"
    assert rows["em-apl"][8] == f"{summaries[2]['test']['mAP']:.2f}"
    figures = {Path(s).name.removeprefix("shards-coco-single-positive-") for s in page.images}
    assert figures == {"curves.png", "labels.png", "per-class.png", "pr.png"}


def find_browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)  # fmt: skip


CHECK = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-loaded", ok + "/" + imgs.length);
});</script>"""


@pytest.mark.skipif(find_browser() is None, reason="no chromium installed")
def test_a_browser_loads_every_figure(real_runs, tmp_path):
    out = tmp_path / "report"
    assert invoke("report", real_runs, "--out", out).exit_code == 0
    page = (out / "index.html").read_text()
    (out / "check.html").write_text(page.replace("</body>", CHECK + "</body>"))
    args = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu",
            "--allow-file-access-from-files", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run([*args, "--dump-dom", (out / "check.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    loaded = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(2)) >= 4, dom[-500:]
    assert dom.count('<tr class="leaderboard">') == 2
