"""The walk-through ``docs/own-data.md`` runs as written: every command of its ``bash`` blocks,
in order, on the example files of ``docs/examples/``, with generated photos at the paths they
list, from the labels file to ``predict``. The commands are read from the page itself, so the
page and the test cannot drift apart."""

from __future__ import annotations

import csv
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from shards.shardset import open_shard_set

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parent.parent
DOC = PROJECT / "docs" / "own-data.md"
UNLABELLED = "unlabelled"  # the folder the page's predict command labels


def read_commands(doc: Path = DOC) -> list[list[str]]:
    """The page's commands: each line of its ``bash`` blocks (``\\`` continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def photo(path: Path, seed: int, size=(96, 72)) -> None:
    """A small JPEG whose coarse layout (what a perceptual hash sees) differs by seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(blocks).resize(size, Image.BILINEAR).save(path, quality=90)


def the_users_photos(base: Path) -> list[str]:
    """Every photo the example files name, and three nobody labelled."""
    paths = set()
    for example in sorted((PROJECT / "docs" / "examples").glob("*.csv")):
        with open(example, newline="") as f:
            paths |= {row["path"] for row in csv.DictReader(f)}
    assert len(paths) == 48
    for k, rel in enumerate(sorted(paths)):
        photo(base / "photos" / rel, k)
    new = [f"{UNLABELLED}/new_{k}.jpg" for k in range(3)]
    for k, rel in enumerate(new):
        photo(base / rel, 1000 + k, (80, 60))
    return new


def run(words: list[str]) -> str:
    if words[:2] == ["python", "cli.py"]:
        result = CliRunner().invoke(cli.main, words[2:])
        assert result.exit_code == 0, f"{shlex.join(words)}\n{result.output}"
        return result.output
    if words[0] == "cp" and len(words) == 3:
        shutil.copy(words[1], words[2])
        return ""
    raise AssertionError(f"the walk-through runs only cp and python cli.py: {shlex.join(words)}")


def test_the_walk_through_runs_from_photos_to_predict(tmp_path, monkeypatch):
    commands = read_commands()
    names = [w[2] if w[0] == "python" else w[0] for w in commands]
    assert names.count("shard") == 3 and names[-1] == "observe" and "predict" in names
    new = the_users_photos(tmp_path)
    (tmp_path / "docs").symlink_to(PROJECT / "docs")
    monkeypatch.chdir(tmp_path)
    outputs = [run(words) for words in commands]

    classes = re.search(r"```text\n(\d+ classes: .*)\n```", DOC.read_text()).group(1)
    assert f"{classes}\n" in outputs[names.index("shard")]
    assert open_shard_set(Path("data/shards/photos")).manifest["complete_labels"]
    partial = open_shard_set(Path("data/shards/photos-columns"))
    assert not partial.manifest["complete_labels"] and partial.classes == classes.split(": ")[1].split(", ")  # fmt: skip
    assert "single-positive-size" in open_shard_set(Path("data/shards/photos-boxes")).regimes
    predictions = pcsv.read_csv("predictions.csv").to_pydict()
    assert sorted(predictions["path"]) == new
    assert len(predictions) >= 1 + len(partial.classes)  # the path and a probability a class
