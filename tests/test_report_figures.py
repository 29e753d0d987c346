"""The report's figures read right in print: every panel of every figure has labelled ticks on
both axes (symlog, log and one-point panels too, read from the SVG's text), a method keeps its
colour from one figure to the next, and each figure exists as PNG, SVG and PDF."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from tests.support.report_runs import write_run
from train.report.style import method_style, new_figure, save, value_axis

SVG = "{http://www.w3.org/2000/svg}"


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def tick_labels(svg: Path) -> list[tuple[list[str], list[str]]]:
    """Per axes of the figure: (x tick labels, y tick labels), the texts of its ticks."""
    root = ET.parse(svg).getroot()
    out = []
    for axes in root.iter(f"{SVG}g"):
        if not re.fullmatch(r"axes_\d+", axes.get("id", "")):
            continue
        labels = []
        axis_groups = [g for g in axes if re.fullmatch(r"matplotlib\.axis_\d+", g.get("id", ""))]
        for group in axis_groups:  # x, then y
            ticks = [g for g in group if re.fullmatch(r"[xy]tick_\d+", g.get("id", ""))]
            texts = [t.text.strip() for g in ticks for t in g.iter(f"{SVG}text")]
            labels.append([t for t in texts if t])
        out.append((labels[0], labels[1]))
    return out


def colours(svg: Path, gid: str) -> set[str]:
    """The stroke or fill colours of the artists drawn with id ``gid``."""
    root = ET.parse(svg).getroot()
    found = set()
    for g in root.iter(f"{SVG}g"):
        if g.get("id") == gid:
            for el in g.iter():
                style = el.get("style") or ""
                found |= set(re.findall(r"(?:stroke|fill): (#[0-9a-f]{6})", style))
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    runs = root / "runs"
    for seed, shift in ((0, 0.0), (1, 1.5)):
        write_run(runs / f"ll-r-s{seed}", "ll-r", 60.0 + shift, seed=seed, epochs=4)
        write_run(runs / f"an-s{seed}", "an", 55.0 + shift, seed=seed, epochs=4)
    zero = write_run(runs / "zero", "clip-zeroshot", 40.0, epochs=1, best_epoch=0)
    line = {"epoch": 0, "lr": {}, "train": {}, "val": {"mAP": 41.0}, "test": {"mAP": 40.0}}
    (zero / "metrics.jsonl").write_text(json.dumps(line) + "\n")  # trains nothing: epoch 0
    out = root / "report"
    result = invoke("report", runs, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_every_panel_has_tick_labels_on_both_axes(report):
    svgs = sorted(report.glob("*.svg"))
    assert {p.name.rsplit("-", 1)[1] for p in svgs} == {"curves.svg", "labels.svg", "class.svg"}
    for svg in svgs:
        panels = tick_labels(svg)
        assert panels, svg.name
        for xs, ys in panels:
            assert len(xs) >= 2 and len(ys) >= 2, (svg.name, xs, ys)
        assert (report / svg.with_suffix(".pdf").name).read_bytes().startswith(b"%PDF")
        png = (report / svg.with_suffix(".png").name).read_bytes()
        assert png.startswith(b"\x89PNG") and b"pHYs" in png  # 300 dpi recorded


def test_a_method_keeps_its_colour(report):
    curves = next(report.glob("*-curves.svg"))
    per_class = next(report.glob("*-per-class.svg"))
    labels = next(report.glob("*-labels.svg"))
    for method in ("ll-r", "an"):
        want = method_style(method)["color"]
        assert colours(curves, f"curve:{method}") == {want}
        assert want in colours(per_class, f"bars:{method}")
    assert method_style("ll-r")["color"] in colours(labels, "curve:ll-r: rejected")
    assert method_style("an") != method_style("an-ls") != method_style("wan")


def test_seed_bands_and_one_point_panels(report):
    text = next(report.glob("*-curves.svg")).read_text()
    assert text.count('<g id="FillBetweenPolyCollection_') >= 2  # ll-r, an: mean ± std of 2 seeds
    md = (report / "report.md").read_text()
    assert "| clip-zeroshot | single-positive | linear | feat-tag | – | – | 1 |" in md  # no lr


@pytest.mark.parametrize(
    "values, scale",
    [([0.001, 0.05, 120.0], "log"), ([-1.0, -0.95, -0.92], "linear"), ([0.2, 0.6], "linear"),
     ([-3.0, 0.0, 0.01, 250.0], "symlog"), ([0.0, 0.0], "linear"), ([0.27, 0.15], "linear")],
)  # fmt: skip
def test_value_axes_are_readable(tmp_path, values, scale):
    fig, (ax,) = new_figure(1, width=3.4)
    ax.plot(range(1, len(values) + 1), values)
    assert value_axis(ax, values, "loss") == scale
    save(fig, tmp_path / "axis", legend=False)
    ((xs, ys),) = tick_labels(tmp_path / "axis.svg")
    assert len(ys) >= 2 and len(xs) >= 2, ys
    if scale == "log":
        assert {"0.001", "100"} <= set(ys)


def test_figures_are_the_same_bytes_twice(tmp_path):
    for name in ("a", "b"):
        fig, (ax,) = new_figure(1, width=3.4)
        ax.plot([1, 2], [3, 4], label="x")
        save(fig, tmp_path / name)
    for fmt in ("png", "svg", "pdf"):
        a, b = (tmp_path / f"{n}.{fmt}" for n in "ab")
        assert a.read_bytes() == b.read_bytes(), fmt
    assert json.dumps(method_style("no-such-method")) == json.dumps(method_style("no-such-method"))
