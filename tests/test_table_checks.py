"""``--dataset table`` reads what the user meant or says why not: label separators, list
columns, one label form a file, paths under ``--root``, UTF-8, box columns for the biased views,
and the classes printed after sharding. Every refusal writes nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards.shardset import open_shard_set
from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.raw_datasets import jpeg_bytes

ROWS = [  # path, class names
    ("a/1.jpg", ["traffic light", "car"]),
    ("a/2.jpg", ["car"]),
    ("a/3.jpg", ["person", "traffic light"]),
    ("b/4.jpg", ["person"]),
    ("b/5.jpg", ["car", "person"]),
    ("b/6.jpg", ["traffic light"]),
    ("c/7.jpg", ["person", "car"]),
    ("c/8.jpg", ["car"]),
    ("c/9.jpg", ["person"]),
    ("c/10.jpg", ["traffic light", "person"]),
]


def photos(root: Path, rows=ROWS) -> Path:
    for k, (rel, _) in enumerate(rows):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg_bytes(30 + k, 24, k))
    return root


def write_csv(root: Path, header: list[str], rows: list[list[str]], name: str = "labels.csv"):
    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root / name


def names_csv(root: Path, sep: str, rows=ROWS) -> Path:
    return write_csv(root, ["path", "labels"], [[p, sep.join(n)] for p, n in rows])


def positives(out: Path) -> dict[str, list[str]]:
    """path -> class names of every row of every split."""
    ss = open_shard_set(out)
    got = {}
    for split in ss.splits:
        t = ss.label_table(split).to_pydict()
        for path, pos in zip(t["path"], t["positives"], strict=True):
            got[path] = sorted(ss.classes[k] for k in pos)
    return got


@pytest.mark.parametrize(("sep", "option"), [(",", ","), (";", ";"), ("|", "|")])
def test_class_names_with_spaces_work_with_another_separator(tmp_path, sep, option):
    raw = photos(tmp_path / "raw")
    names_csv(raw, sep)
    out = tmp_path / "s"
    r = shard_cli(raw, out, "-o", f"separator={option}", dataset="table")
    assert r.exit_code == 0, r.output
    assert open_shard_set(out).classes == ["car", "person", "traffic light"]
    assert positives(out) == {p: sorted(n) for p, n in ROWS}


@pytest.mark.parametrize(
    ("sep", "given", "fix"),
    [
        (",", (), "-o separator=,"),
        (", ", (), "-o separator=,"),
        (";", (), "-o 'separator=;'"),
        ("|", (), "-o 'separator=|'"),
        ("\t", (), "-o separator=tab"),
        (",", ("-o", "separator=;"), "-o separator=,"),
        (" ", ("-o", "separator=,"), None),  # spaces are allowed in names; this one is fine
    ],
)
def test_labels_joined_with_another_separator_are_refused_naming_the_fix(tmp_path, sep, given, fix):
    rows = [(p, [n.replace(" ", "_") for n in names]) for p, names in ROWS]
    raw = photos(tmp_path / "raw", rows)
    names_csv(raw, sep, rows)
    out = tmp_path / "s"
    r = shard_cli(raw, out, *given, dataset="table")
    if fix is None:  # "traffic_light car" with separator ',' is one class name with a space
        assert r.exit_code == 0, r.output
        assert "traffic_light car" in open_shard_set(out).classes
        return
    assert_refused(r, "labels.csv line 2", fix, out=out)


def test_a_class_of_the_classes_file_holding_the_separator_is_refused(tmp_path):
    raw = photos(tmp_path / "raw")
    names_csv(raw, ",")
    (raw / "classes.txt").write_text("car\nperson\ntraffic light\n")
    out = tmp_path / "s"
    r = shard_cli(raw, out, "-o", "classes=classes.txt", "-o", "separator=space", dataset="table")
    assert_refused(r, "'traffic light'", "separator ' '", "-o separator=,", out=out)
    r = shard_cli(raw, out, "-o", "classes=classes.txt", "-o", "separator=,", dataset="table")
    assert r.exit_code == 0, r.output


def test_an_empty_separator_is_refused_naming_space(tmp_path):
    raw = photos(tmp_path / "raw")
    names_csv(raw, " ")
    out = tmp_path / "s"
    assert_refused(shard_cli(raw, out, "-o", "separator= ", dataset="table"), "separator=space", out=out)  # fmt: skip


def test_a_parquet_list_column_names_the_positives(tmp_path):
    raw = photos(tmp_path / "raw")
    table = pa.table({"path": [p for p, _ in ROWS], "labels": [n for _, n in ROWS]})
    assert table.schema.field("labels").type == pa.list_(pa.string())
    pq.write_table(table, raw / "labels.parquet")
    out = tmp_path / "s"
    r = shard_cli(raw, out, dataset="table")
    assert r.exit_code == 0, r.output
    assert open_shard_set(out).classes == ["car", "person", "traffic light"]
    assert positives(out) == {p: sorted(n) for p, n in ROWS}


def test_a_labels_column_and_class_columns_are_refused_naming_both(tmp_path):
    raw = photos(tmp_path / "raw")
    rows = [[p, ";".join(n), "1" if "car" in n else "0"] for p, n in ROWS]
    write_csv(raw, ["path", "labels", "car"], rows)
    out = tmp_path / "s"
    r = shard_cli(raw, out, "-o", "separator=;", dataset="table")
    assert_refused(r, "labels column ('labels')", "'car'", "-o ignore=", out=out)
    r = shard_cli(raw, out, "-o", "separator=;", "-o", "ignore=car", dataset="table")
    assert r.exit_code == 0, r.output
    assert positives(out) == {p: sorted(n) for p, n in ROWS}


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("{root}/a/1.jpg", ["is absolute", "relative to --root"]),
        ("../raw/a/1.jpg", ["leads out through '..'", "relative to --root"]),
        ("a/../../raw/a/1.jpg", ["leads out through '..'"]),
    ],
)
def test_paths_outside_the_root_are_refused(tmp_path, path, names):
    raw = photos(tmp_path / "raw")
    rows = [[p, ";".join(n)] for p, n in ROWS]
    rows[3][0] = path.format(root=raw)
    write_csv(raw, ["path", "labels"], rows)
    out = tmp_path / "s"
    r = shard_cli(raw, out, "-o", "separator=;", dataset="table")
    assert_refused(r, "labels.csv line 5", *names, out=out)


def test_dot_slash_paths_are_the_same_image(tmp_path):
    raw = photos(tmp_path / "raw")
    rows = [[f"./{p}", ";".join(n)] for p, n in ROWS] + [["a//1.jpg", "car"]]
    write_csv(raw, ["path", "labels"], rows)
    out = tmp_path / "s"
    r = shard_cli(raw, out, "-o", "separator=;", dataset="table")
    assert_refused(r, "line 12", "duplicate path 'a/1.jpg'", "also labels.csv line 2", out=out)


def latin1_csv(raw: Path) -> None:
    names_csv(raw, ";")
    text = (raw / "labels.csv").read_text().replace("b/4.jpg,person", "b/4.jpg,personne âgée")
    (raw / "labels.csv").write_bytes(text.encode("latin-1"))


def latin1_classes(raw: Path) -> None:
    names_csv(raw, ";")
    (raw / "classes.txt").write_bytes("car\nperson\ntraffic light\ncafé\n".encode("latin-1"))


@pytest.mark.parametrize(
    ("make", "extra", "names"),
    [
        (latin1_csv, (), ["labels.csv, line 5", "not UTF-8", "save the file as UTF-8"]),
        (latin1_classes, ("-o", "classes=classes.txt"), ["classes.txt, line 4", "not UTF-8"]),
    ],
)
def test_files_that_are_not_utf8_name_file_and_line(tmp_path, make, extra, names):
    raw = photos(tmp_path / "raw")
    make(raw)
    out = tmp_path / "s"
    r = shard_cli(raw, out, "-o", "separator=;", *extra, dataset="table")
    assert_refused(r, *names, out=out)


def test_shard_prints_the_number_of_classes_and_the_first_names(tmp_path):
    raw = photos(tmp_path / "raw")
    names_csv(raw, ";")
    r = shard_cli(raw, tmp_path / "s", "-o", "separator=;", dataset="table")
    assert r.exit_code == 0, r.output
    assert "3 classes: car, person, traffic light\n" in r.output
    many = [(p, [f"class{k:02d}" for k in range(i, i + 14)]) for i, (p, _) in enumerate(ROWS)]
    names_csv(raw, ";", many)
    r = shard_cli(raw, tmp_path / "t", "-o", "separator=;", dataset="table")
    assert r.exit_code == 0, r.output
    first = ", ".join(f"class{k:02d}" for k in range(10))
    assert f"23 classes: {first}, … (all in manifest.json)\n" in r.output


BOXES = {  # path -> (size, location) per named class, in the order the row names them
    "a/1.jpg": ([0.5, 0.1], [2.0, 0.25]),
    "a/3.jpg": ([0.2, 0.3], [1.0, 3.0]),
    "b/5.jpg": ([0.05, 0.6], [0.5, 0.5]),
    "c/7.jpg": ([0.4, 0.4], [8.0, 0.125]),
    "c/10.jpg": ([0.7, 0.2], [0.1, 4.0]),
}


def boxes_csv(raw: Path, bad: str = "") -> None:
    rows = []
    for p, names in ROWS:
        size, loc = BOXES.get(p, ([0.5], [1.0]) if len(names) == 1 else ([], []))
        rows.append([p, ";".join(names), ";".join(map(str, size)), ";".join(map(str, loc))])
    if bad:
        rows[4][2] = bad
    write_csv(raw, ["path", "labels", "size_weight", "location_weight"], rows)


def test_box_columns_give_the_size_and_location_weights(tmp_path):
    raw = photos(tmp_path / "raw")
    boxes_csv(raw)
    out = tmp_path / "s"
    r = shard_cli(raw, out, "-o", "separator=;", "--regime", "single-positive:bias=size", dataset="table")  # fmt: skip
    assert r.exit_code == 0, r.output
    ss = open_shard_set(out)
    t = pq.read_table(out / "labels" / "official" / "train.parquet").to_pydict()
    for path, pos, size, loc in zip(t["source_id"], t["positives"], t["size_weight"], t["location_weight"], strict=True):  # fmt: skip
        names = dict(ROWS)[path]
        want_size, want_loc = BOXES.get(path, ([0.5], [1.0]))
        order = [names.index(ss.classes[k]) for k in pos]  # the weights follow sorted positives
        assert size == [want_size[j] for j in order] and loc == [want_loc[j] for j in order]
    assert "single-positive-size" in ss.regimes


@pytest.mark.parametrize(
    ("bad", "names"),
    [
        ("0.5", ["line 6", "size_weight holds 1 number(s)", "(car, person)"]),
        ("0.5;x", ["line 6", "'x'", "numbers >= 0"]),
        ("0.5;-1", ["line 6", "'-1'"]),
        ("0.5;nan", ["line 6", "'nan'"]),
    ],
)
def test_bad_box_cells_are_refused(tmp_path, bad, names):
    raw = photos(tmp_path / "raw")
    boxes_csv(raw, bad)
    out = tmp_path / "s"
    assert_refused(shard_cli(raw, out, "-o", "separator=;", dataset="table"), *names, out=out)


def test_a_class_holding_the_label_separator_is_refused_for_every_converter(tmp_path):
    """shards.convert.source.LABEL_SEPARATOR (';') joins labels written as text: refused at shard
    time wherever the class comes from (here a class column, and a COCO category)."""
    raw = photos(tmp_path / "raw")
    write_csv(raw, ["path", "cat;dog"], [[p, "1"] for p, _ in ROWS])
    out = tmp_path / "s"
    assert_refused(shard_cli(raw, out, dataset="table"), "class 'cat;dog'", "';'", out=out)
    from tests.support.raw_datasets import make_coco

    coco = make_coco(tmp_path / "coco")
    path = coco / "annotations" / "instances_train.json"
    for name in ("instances_train.json", "instances_val.json"):
        path = coco / "annotations" / name
        path.write_text(json.dumps(json.loads(path.read_text())).replace("class1", "class;1"))
    assert_refused(shard_cli(coco, out), "class 'class;1'", "coco", out=out)
