"""``--dataset table``: the user's own CSV/TSV/Parquet labels. A round trip from a CSV built
from the COCO fixture gives the label tables of ``--dataset coco``; bad files write nothing."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.layouts_table import table_layout
from tests.support.raw_datasets import make_coco

SAME = ("row", "positives", "negatives", "width", "height")


def coco_as_csv(raw: Path, name: str = "labels.csv", seed: int | None = None) -> Path:
    """One row per annotated image (official val -> test), in COCO's formatted order, or
    shuffled with ``seed``."""
    rows = []
    for split, role in (("train", "train"), ("val", "test")):
        data = json.loads((raw / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        labels: dict[int, set[str]] = {}
        for a in data["annotations"]:
            labels.setdefault(a["image_id"], set()).add(names[a["category_id"]])
        for iid in sorted(labels, key=str):
            rows.append([f"{split}/{files[iid]}", " ".join(sorted(labels[iid])), role])
    if seed is not None:
        random.Random(seed).shuffle(rows)
    with open(raw / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "split"])
        w.writerows(rows)
    return raw / name


def test_csv_from_the_coco_fixture_gives_the_coco_label_tables(tmp_path):
    """In any row order: the table converter draws over the rows in path order, which is
    COCO's formatted order (ids sorted as strings) when the ids have one number of digits."""
    raw = make_coco(tmp_path / "raw", first=(101, 5001))
    coco_as_csv(raw, seed=3)
    a, b = tmp_path / "coco", tmp_path / "table"
    assert shard_cli(raw, a).exit_code == 0
    r = shard_cli(raw, b, dataset="table")
    assert r.exit_code == 0, r.output
    ma, mb = (json.loads((o / "manifest.json").read_text()) for o in (a, b))
    assert ma["classes"] == mb["classes"] and set(ma["splits"]) == set(mb["splits"])
    for split in ma["splits"]:
        ta, tb = (pq.read_table(o / "labels" / f"{split}.parquet") for o in (a, b))
        assert ta.select(SAME).equals(tb.select(SAME)), split
        view = f"observed/single-positive/{split}.parquet"
        assert (a / view).read_bytes() == (b / view).read_bytes()


def shard_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("form", ["names", "columns"])
def test_a_shuffled_file_gives_the_same_shard_set_byte_for_byte(tmp_path, form):
    """The val and test draws depend on the set of rows, not on their order (without a split
    column: -o test_frac draws test, --val-frac val)."""
    raw = make_coco(tmp_path / "raw") if form == "names" else table_layout(tmp_path / "raw")
    if form == "names":
        coco_as_csv(raw, "ordered.csv")
        coco_as_csv(raw, "shuffled.csv", seed=5)
    else:
        lines = (raw / "labels.csv").read_text().splitlines()
        body = [line.rsplit(",", 1)[0] for line in lines[1:]]
        random.Random(5).shuffle(body)
        (raw / "ordered.csv").write_text("\n".join([lines[0].rsplit(",", 1)[0], *sorted(body)]))
        (raw / "shuffled.csv").write_text("\n".join([lines[0].rsplit(",", 1)[0], *body]))
        (raw / "labels.csv").unlink()
    outs = []
    for name in ("ordered", "shuffled"):
        outs.append(tmp_path / name)
        extra = ["-o", "test_frac=0.25"] if form == "columns" else []
        r = shard_cli(raw, outs[-1], "-o", f"file={name}.csv", *extra, dataset="table")
        assert r.exit_code == 0, r.output
    a, b = (shard_files(o) for o in outs)
    assert a.keys() == b.keys() and len(a) > 10
    for path in a:
        if path != "manifest.json":
            assert a[path] == b[path], path
    ma, mb = (json.loads(a["manifest.json"]) for a in (a, b))
    assert ma["source"]["fingerprint"] == mb["source"]["fingerprint"]
    assert ma["splits"] == mb["splits"] and len(ma["splits"]) == 3


def test_class_columns_with_blanks_are_unknowns(tmp_path):
    raw = table_layout(tmp_path / "raw")
    out = tmp_path / "s"
    assert shard_cli(raw, out, dataset="table").exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["cat", "dog", "car", "tree"] and not m["complete_labels"]
    t = pq.read_table(out / "labels" / "test.parquet").to_pydict()
    with open(raw / "labels.csv") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    for path, pos, neg in zip(t["path"], t["positives"], t["negatives"], strict=True):
        cells = [rows[path][c] for c in m["classes"]]
        assert pos == [k for k, v in enumerate(cells) if v == "1"]
        assert neg == [k for k, v in enumerate(cells) if v in ("0", "-1")]


def test_val_frac_and_test_frac_without_a_split_column_and_a_classes_file(tmp_path):
    raw = tmp_path / "raw"
    table_layout(raw)
    lines = (raw / "labels.csv").read_text().splitlines()
    (raw / "own.tsv").write_text(
        "\n".join(line.rsplit(",", 1)[0].replace(",", "\t") for line in lines) + "\n"
    )
    (raw / "classes.txt").write_text("tree\ncar\ndog\ncat\n")
    out = tmp_path / "s"
    r = shard_cli(
        raw, out, "-o", "file=own.tsv", "-o", "test_frac=0.2", "-o", "classes=classes.txt",
        dataset="table",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["tree", "car", "dog", "cat"]
    counts = {k: v["num_samples"] for k, v in m["splits"].items()}
    assert counts == {"train": 19, "val": 5, "test": 6}


def test_parquet_with_a_names_column(tmp_path):
    raw = make_coco(tmp_path / "raw")
    csv_path = coco_as_csv(raw, "own.csv")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    table = pa.table({k: [r[k] for r in rows] for k in ("path", "labels", "split")})
    pq.write_table(table.rename_columns(["file", "tags", "part"]), raw / "labels.parquet")
    csv_path.unlink()
    out = tmp_path / "s"
    opts = ["-o", "path_column=file", "-o", "labels_column=tags", "-o", "split_column=part"]
    r = shard_cli(raw, out, *opts, dataset="table")
    assert r.exit_code == 0, r.output


def edit_csv(raw: Path, line: int, column: int, value: str) -> None:
    path = raw / "labels.csv"
    lines = path.read_text().splitlines()
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (lambda raw: edit_csv(raw, 3, 0, "images/nowhere.jpg"), ["line 3", "nowhere.jpg"]),
        (lambda raw: edit_csv(raw, 4, 5, "dev"), ["line 4", "split 'dev'"]),
        (lambda raw: edit_csv(raw, 5, 2, "2"), ["line 5", "'dog'", "'2'"]),
        (lambda raw: edit_csv(raw, 6, 0, "images/train/0/photo_000.jpg"), ["line 6", "duplicate"]),
        (lambda raw: (raw / "labels.csv").write_text("path,cat,split\n"), ["has no rows"]),
        (lambda raw: (raw / "labels.csv").write_text(""), ["is empty"]),
        (lambda raw: (raw / "labels.csv").unlink(), ["labels.csv", "-o file="]),
    ],
)
def test_bad_files_are_refused_and_nothing_is_written(tmp_path, edit, names):
    raw = table_layout(tmp_path / "raw")
    edit(raw)
    out = tmp_path / "s"
    assert_refused(shard_cli(raw, out, dataset="table"), *names, out=out)
