"""``--dataset nuswide``: both layouts give the same labels, missing images are skipped and
counted, concepts and groups match the real files, and bad input fails naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import cli
from shards.base.errors import WsmlError
from shards.convert.convert import convert
from shards.converters.nuswide import (
    NUS_CONCEPTS,
    NUS_GROUPS,
    NusOptions,
    _read_label_file,
    _read_label_lines,
    open_nuswide,
)
from shards.shardset import open_shard_set
from shards.views import read_official_labels
from tests.support.cli_checks import assert_refused as refused
from tests.support.cli_checks import shard_cli
from tests.support.layouts_nuswide import (
    REAL_CONCEPTS,
    REAL_NUS,
    Rows,
    absent,
    nuswide_formatted,
    nuswide_official,
    tiny_data,
)

HSPNET = REAL_NUS / "refs" / "jameslahm__HSPNet"
NUS_VAL = REAL_NUS / "refs" / "xinyu1205__robust-loss-mlml" / "dataset" / "nus_val.txt"
needs_real = pytest.mark.skipif(not REAL_NUS.is_dir(), reason=f"no real fixture at {REAL_NUS}")
GT = Path("Groundtruth") / "TrainTestLabels"


def shard(root: Path, out: Path, *extra: str) -> Result:
    return shard_cli(root, out, *extra, dataset="nuswide")


def assert_refused(result: Result, out: Path, *names: str) -> str:
    """exit 1, one ``Error:`` line naming ``names``, no traceback, nothing written."""
    return refused(result, *names, out=out)


def official_tables(out: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """official split -> source id -> positives, from the written label tables."""
    ss = open_shard_set(out)
    got = {}
    for name in ss.manifest["official_splits"]:
        path = out / "labels" / "official" / f"{name}.parquet"
        _, table = read_official_labels(path, len(ss.classes))
        t = table.to_pydict()
        got[name] = {s: tuple(p) for s, p in zip(t["source_id"], t["positives"], strict=True)}
    return got


def present(data: dict[str, Rows], missing: int) -> dict[str, dict[str, tuple[int, ...]]]:
    gone = absent(data, missing)
    return {n: {rel: pos for rel, pos in rows if rel not in gone[n]} for n, rows in data.items()}


# -- both layouts ---------------------------------------------------------------------------------


def test_both_layouts_give_the_source_labels(tmp_path):
    data = tiny_data()
    outs = {}
    for name, build in (("official", nuswide_official), ("formatted", nuswide_formatted)):
        root = build(tmp_path / name, data=data)
        outs[name] = tmp_path / f"{name}-shards"
        m = convert("nuswide", root, outs[name], {}, {}, workers=1)
        assert m["classes"] == list(NUS_CONCEPTS) and m["source"]["layout"] == name
    want = present(data, 2)
    assert official_tables(outs["official"]) == want == official_tables(outs["formatted"])
    for split in ("train", "val", "test"):  # the same rows, keys and order in both
        a, b = (open_shard_set(o).label_table(split).to_pydict() for o in outs.values())
        assert {k: a[k] for k in ("key", "source_id", "positives", "path")} == {
            k: b[k] for k in ("key", "source_id", "positives", "path")
        }
        assert all(p.startswith("Flickr/") for p in a["path"])


@pytest.mark.parametrize(
    "prefix, sep, dtype",
    [("Flickr/", "/", np.float32), ("", "\\", np.int64), ("Flickr\\", "\\", np.uint8)],
)
def test_formatted_paths_and_label_types(tmp_path, prefix, sep, dtype):
    data = tiny_data(12, 6)
    root = nuswide_formatted(tmp_path / "raw", 0, data, prefix=prefix, sep=sep, dtype=dtype)
    source = open_nuswide(root, NusOptions())
    got = {s.name: [(r.source_id, r.positives) for r in s.records] for s in source.splits}
    assert got == data
    rec = source.splits[0].records[0]
    assert rec.path == str((root / "Flickr" / data["train"][0][0]).resolve())
    assert rec.key_hint == data["train"][0][0][:-4].replace("/", "_")
    assert [(s.name, s.role) for s in source.splits] == [("train", "train"), ("test", "test")]


def test_official_records_keep_the_list_order(tmp_path):
    data = tiny_data()
    source = open_nuswide(nuswide_official(tmp_path / "raw", data=data), NusOptions())
    assert {s.name: [(r.source_id, r.positives) for r in s.records] for s in source.splits} == data
    assert all(r.negatives is None for s in source.splits for r in s.records)
    assert source.notes["listed"] == {"train": 30, "test": 12}
    assert source.notes["concepts"] == "ConceptsList/Concepts81.txt"


@pytest.mark.parametrize("where", [".", "ConceptsList", "Groundtruth"])
def test_concepts_file_in_each_place(tmp_path, where):
    root = nuswide_official(tmp_path / "raw", concepts_at=where)
    assert open_nuswide(root, NusOptions()).classes == NUS_CONCEPTS


def test_layout_option_picks_one_when_both_are_there(tmp_path):
    data = tiny_data(8, 4)
    root = nuswide_official(tmp_path / "raw", 0, data)
    other = nuswide_formatted(tmp_path / "f", 0, data)
    for p in other.glob("*.npy"):
        shutil.copy(p, root)
    assert open_nuswide(root, NusOptions()).notes["layout"] == "official"
    assert open_nuswide(root, NusOptions("formatted")).notes["layout"] == "formatted"
    with pytest.raises(WsmlError, match="official or formatted"):
        open_nuswide(root, NusOptions("cole"))


# -- missing images -------------------------------------------------------------------------------


def test_missing_images_are_skipped_counted_and_listed(tmp_path):
    data = tiny_data()
    root, out = nuswide_official(tmp_path / "raw", 3, data), tmp_path / "out"
    result = shard(root, out)
    assert result.exit_code == 0, result.output
    for name, n in (("train", 30), ("test", 12)):  # said, with where they are listed
        listed = f"{out}/labels/official/{name}-missing.parquet"
        assert f"3 of {n} images of official split {name} are missing" in result.output
        assert listed in result.output and Path(listed).is_file()
    m = open_shard_set(out).manifest
    gone = absent(data, 3)
    for name, n in (("train", 30), ("test", 12)):
        entry = m["official_splits"][name]
        assert entry["records"] == n and entry["missing"] == gone[name]
        assert entry.get("missing_count", 3) == 3
    assert m["splits"]["train"]["num_samples"] + m["splits"]["val"]["num_samples"] == 27
    assert m["splits"]["val"]["num_samples"] == round(0.2 * 27)  # split over present images
    assert official_tables(out) == present(data, 3)
    info = CliRunner().invoke(cli.main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "train 27 of 30 present" in info.output and "test 9 of 12 present" in info.output


def test_all_images_missing_fails(tmp_path):
    root, out = nuswide_official(tmp_path / "raw", 0), tmp_path / "out"
    for p in (root / "Flickr").rglob("*.jpg"):
        p.unlink()
    assert_refused(shard(root, out), out, "all image file(s)", "missing")


def test_no_flickr_folder_is_named(tmp_path):
    root, out = nuswide_official(tmp_path / "raw", 0), tmp_path / "out"
    shutil.rmtree(root / "Flickr")
    assert_refused(shard(root, out), out, str(root / "Flickr"))


# -- the real files -------------------------------------------------------------------------------


@needs_real
def test_concepts_and_groups_match_the_real_files(tmp_path):
    assert tuple(REAL_CONCEPTS.read_text().split()) == NUS_CONCEPTS
    assert tuple((HSPNET / "nuswide_labels.txt").read_text().split()) == NUS_CONCEPTS
    names = (HSPNET / "nuswide_super_labels.txt").read_text().split()
    assert names == ["activity", "program", "scene", "people", "object", "graphics"]
    index = np.load(HSPNET / "nuswide_super_labels_index.npy")
    assert index.shape == (81,) and tuple(names[int(i)] for i in index) == NUS_GROUPS
    root, out = nuswide_official(tmp_path / "raw", 0), tmp_path / "out"
    m = convert("nuswide", root, out, {}, {}, workers=1)
    assert m["groups"] == list(NUS_GROUPS) and len(set(m["groups"])) == 6


@needs_real
def test_real_formatted_list_converts(tmp_path):
    """nus_val.txt (0-based ids over the 81 concepts) as a formatted test split of file names
    relative to Flickr/: every id is in range and the labels come through unchanged."""
    lines = NUS_VAL.read_text().split("\n")
    assert len(lines) == 50720
    rows = []
    for line in lines:
        name, _, ids = line.partition(",")
        pos = tuple(sorted(int(i) for i in ids.split()))
        assert name.endswith(".jpg") and all(0 <= i < 81 for i in pos)
        rows.append((name, pos))
    assert max(len(p) for _, p in rows) > 1
    data = {"train": tiny_data(10, 0)["train"], "test": [r for r in rows[:40] if r[1]]}
    root = nuswide_formatted(tmp_path / "raw", 0, data, prefix="")
    out = tmp_path / "out"
    convert("nuswide", root, out, {}, {}, workers=1)
    assert official_tables(out) == present(data, 0)


# -- reading the label files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["1\n0\n1\n", "1\r\n0\r\n1\r\n", "1 \r\n0 \r\n1 ", "1\n0\n1\n\n \n", " 1\t\n0\n1"]
)
def test_label_file_variants(tmp_path, text):
    path = tmp_path / "Labels_x_Train.txt"
    path.write_bytes(text.encode())
    assert _read_label_file(path, 3, tmp_path / "list.txt").tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    "text, where",
    [
        ("10\n\n1\n", ":1: expected a label 0 or 1, got '10'"),
        ("1\n\n0\n1", ":2: expected a label 0 or 1, got an empty line"),
        ("1\n0\n1\n0\n", " has 4 lines, but"),
        ("1\n0\n", " has 2 lines, but"),
        ("1\n1.0\n0\n", ":2: expected a label 0 or 1, got '1.0'"),
        ("\n1\n0\n1", ":1: expected a label 0 or 1, got an empty line"),
    ],
)
def test_label_file_faults_are_located(tmp_path, text, where):
    path = tmp_path / "Labels_x_Train.txt"
    path.write_bytes(text.encode())
    with pytest.raises(WsmlError) as e:
        _read_label_file(path, 3, tmp_path / "list.txt")
    assert f"{path}{where}" in str(e.value)


def test_label_file_fast_path_agrees_with_the_line_reader(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "Labels_x_Train.txt"
    for ending in ("\n", "\r\n", " \r\n", "  \n"):
        values = rng.integers(0, 2, 500)
        path.write_text("".join(f"{v}{ending}" for v in values), newline="")
        assert _read_label_file(path, 500, path).tolist() == values.tolist()
        assert _read_label_lines(path, 500, path).tolist() == values.tolist()


# -- bad input ------------------------------------------------------------------------------------


def _official(tmp_path) -> Path:
    return nuswide_official(tmp_path / "raw", 0, tiny_data(10, 5))


def _formatted(tmp_path) -> Path:
    return nuswide_formatted(tmp_path / "raw", 0, tiny_data(10, 5))


def test_neither_layout_names_the_expected_files(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    (root / "Flickr").mkdir(parents=True)
    assert_refused(
        shard(root, out), out, "ImageList/TrainImagelist.txt", "formatted_train_images.npy"
    )


@pytest.mark.parametrize(
    "rel",
    [
        "ImageList/TestImagelist.txt",
        f"{GT}/Labels_zebra_Test.txt",
        f"{GT}/Labels_airport_Train.txt",
        "ConceptsList/Concepts81.txt",
    ],
)
def test_official_missing_file_is_named(tmp_path, rel):
    root, out = _official(tmp_path), tmp_path / "out"
    (root / rel).unlink()
    name = "Concepts81.txt" if "Concepts" in rel else str(root / rel)
    assert_refused(shard(root, out), out, name)


def test_forced_layout_names_what_it_lacks(tmp_path):
    root, out = _formatted(tmp_path), tmp_path / "out"
    assert_refused(shard(root, out, "-o", "layout=official"), out, str(root / "ImageList"))


@pytest.mark.parametrize("rel", ["formatted_val_labels.npy", "formatted_train_images.npy"])
def test_formatted_missing_file_is_named(tmp_path, rel):
    root, out = _formatted(tmp_path), tmp_path / "out"
    (root / rel).unlink()
    assert_refused(shard(root, out), out, str(root / rel))


def test_label_file_of_another_length(tmp_path):
    root, out = _official(tmp_path), tmp_path / "out"
    path = root / GT / "Labels_dog_Test.txt"
    path.write_text("0\n" * 4)
    assert_refused(shard(root, out), out, str(path), "has 4 lines", "lists 5 images")


@pytest.mark.parametrize("bad, line", [("2", 3), ("-1", 2), ("", 2), ("0 1", 4)])
def test_label_value_other_than_0_or_1(tmp_path, bad, line):
    root, out = _official(tmp_path), tmp_path / "out"
    path = root / GT / "Labels_sky_Train.txt"
    values = ["0"] * 10
    values[line - 1] = bad
    path.write_text("\r\n".join(values) + "\r\n")
    assert_refused(shard(root, out), out, f"{path}:{line}:")


def test_concept_list_with_an_unknown_concept(tmp_path):
    root, out = _official(tmp_path), tmp_path / "out"
    path = root / "ConceptsList" / "Concepts81.txt"
    path.write_bytes(path.read_bytes().replace(b"tiger", b"lion"))
    assert_refused(shard(root, out), out, f"{path}:68:", "'lion'")


def test_image_list_with_a_malformed_line(tmp_path):
    root, out = _official(tmp_path), tmp_path / "out"
    path = root / "ImageList" / "TrainImagelist.txt"
    lines = path.read_text().splitlines()
    lines[6] = ""
    path.write_text("\r\n".join(lines) + "\r\n")
    assert_refused(shard(root, out), out, f"{path}:7:")


def test_image_list_with_a_duplicate(tmp_path):
    root, out = _official(tmp_path), tmp_path / "out"
    path = root / "ImageList" / "TrainImagelist.txt"
    lines = path.read_text().splitlines()
    lines[5] = lines[2]
    path.write_text("\n".join(lines) + "\n")
    assert_refused(shard(root, out), out, f"{path}:6:", "listed twice (first at line 3)")


def test_empty_image_list(tmp_path):
    root, out = _official(tmp_path), tmp_path / "out"
    path = root / "ImageList" / "TestImagelist.txt"
    path.write_text("\r\n")
    for p in (root / GT).glob("*_Test.txt"):
        p.write_text("")
    assert_refused(shard(root, out), out, str(path), "no images")


def test_image_in_both_splits(tmp_path):
    root, out = _official(tmp_path), tmp_path / "out"
    train, test = (root / "ImageList" / f"{s}Imagelist.txt" for s in ("Train", "Test"))
    lines = test.read_text().splitlines()
    lines[0] = train.read_text().splitlines()[0]
    test.write_text("\n".join(lines))
    assert_refused(shard(root, out), out, "both the train and the test split")


def test_formatted_lengths_differ(tmp_path):
    root, out = _formatted(tmp_path), tmp_path / "out"
    labels = root / "formatted_train_labels.npy"
    np.save(labels, np.load(labels)[:7])
    assert_refused(
        shard(root, out), out, "formatted_train_images.npy has 10", str(labels), "7 label"
    )


@pytest.mark.parametrize("shape", [(10, 80), (10,), (10, 81, 1)])
def test_formatted_labels_not_n_by_81(tmp_path, shape):
    root, out = _formatted(tmp_path), tmp_path / "out"
    labels = root / "formatted_train_labels.npy"
    np.save(labels, np.zeros(shape, np.float32))
    assert_refused(shard(root, out), out, str(labels), "81")


@pytest.mark.parametrize("value", [0.5, -1.0, np.nan, 81.0])
def test_formatted_label_values_other_than_0_or_1(tmp_path, value):
    root, out = _formatted(tmp_path), tmp_path / "out"
    labels = root / "formatted_val_labels.npy"
    y = np.load(labels)
    y[3, 42] = value
    np.save(labels, y)
    assert_refused(shard(root, out), out, str(labels), "row 3, column 42 (person)")


def test_formatted_images_not_strings_or_pickled(tmp_path):
    root, out = _formatted(tmp_path), tmp_path / "out"
    images = root / "formatted_train_images.npy"
    np.save(images, np.arange(10))
    assert_refused(shard(root, out), out, str(images), "1-D array of image paths")
    np.save(images, np.array([f"actor/{i}.jpg" for i in range(10)], dtype=object))
    assert_refused(shard(root, out), out, str(images), "pickled")
    images.write_bytes(b"<html>404</html>")
    assert_refused(shard(root, out), out, str(images), "not a .npy file")


def test_formatted_bad_or_duplicate_path(tmp_path):
    root, out = _formatted(tmp_path), tmp_path / "out"
    images = root / "formatted_val_images.npy"
    paths = np.load(images)
    paths[4] = "../outside.jpg"
    np.save(images, paths)
    assert_refused(shard(root, out), out, f"{images} row 4")
    paths[4] = paths[1]
    np.save(images, paths)
    assert_refused(shard(root, out), out, f"{images} row 4", "listed twice (first at row 1)")
