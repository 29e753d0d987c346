"""Bad input to ``cli.py shard``: each gives ``Error: ...`` naming the file or id, exit code 1, no
traceback, and no output folder that could be mistaken for a complete shard set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

import cli
from tests.support.cli_checks import assert_refused, shard_cli
from tests.support.raw_datasets import (
    CORRUPTIONS,
    REAL_COCO_JSON,
    REAL_VOC2007,
    coco_image_path,
    coco_json,
    flat_jpeg_bytes,
    make_coco_fixed,
    make_voc_devkit,
    real_coco2014,
    real_voc2007,
    tree_digest,
    write_coco_json,
)

needs_real_voc = pytest.mark.skipif(
    not REAL_VOC2007.is_dir(), reason=f"real VOC2007 fixture not found at {REAL_VOC2007}"
)
needs_real_coco = pytest.mark.skipif(
    not REAL_COCO_JSON.is_file(), reason=f"real COCO fixture not found at {REAL_COCO_JSON}"
)


def shard(root: Path, out: Path, *extra: str, dataset: str = "coco") -> Result:
    return shard_cli(root, out, *extra, dataset=dataset)


@pytest.fixture
def coco(tmp_path) -> Path:
    return make_coco_fixed(tmp_path / "raw", n_train=10, n_test=5)


@pytest.fixture
def voc(tmp_path) -> Path:
    make_voc_devkit(tmp_path / "raw", [f"tv{i:02d}" for i in range(8)], ["te00", "te01", "te02"])
    return tmp_path / "raw"


# -- a missing root ------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["coco", "coco2014", "voc", "voc2007", "voc2012"])
def test_missing_root(tmp_path, dataset):
    root, out = tmp_path / "nowhere", tmp_path / "out"
    assert_refused(shard(root, out, dataset=dataset), str(root), "does not exist", out=out)


def test_root_is_a_file(tmp_path):
    root, out = tmp_path / "raw.zip", tmp_path / "out"
    root.write_bytes(b"PK")
    assert_refused(shard(root, out), str(root), "not a folder", out=out)


# -- a wrong layout ------------------------------------------------------------------------------


def _voc2007(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2007"


VOC_LAYOUTS = {
    # Annotations/ and JPEGImages/ without ImageSets/ (the example)
    "no-imagesets": (lambda r: shutil.rmtree(_voc2007(r) / "ImageSets"), "ImageSets/Main"),
    "no-jpegimages": (lambda r: shutil.rmtree(_voc2007(r) / "JPEGImages"), "JPEGImages"),
    "no-test-list": (lambda r: (_voc2007(r) / "ImageSets/Main/test.txt").unlink(), "test.txt"),
    "no-annotations": (lambda r: shutil.rmtree(_voc2007(r) / "Annotations"), "Annotations"),
    "no-vocdevkit": (lambda r: _voc2007(r).rename(r / "VOC2012"), "VOC2007"),
    "xml-missing": (lambda r: (_voc2007(r) / "Annotations/tv03.xml").unlink(), "tv03.xml"),
    "xml-invalid": (
        lambda r: (_voc2007(r) / "Annotations/tv03.xml").write_text("<annotation><obj"),
        "tv03.xml",
    ),
    "list-not-utf8": (
        lambda r: (_voc2007(r) / "ImageSets/Main/test.txt").write_bytes(b"te00\nte\xff01\n"),
        "test.txt, line 2",
    ),
    "xml-unknown-class": (
        lambda r: (_voc2007(r) / "Annotations/tv03.xml").write_text(
            "<annotation><object><name>unicorn</name></object></annotation>"
        ),
        "unicorn",
    ),
}


@pytest.mark.parametrize("case", sorted(VOC_LAYOUTS))
def test_wrong_voc_layout(voc, tmp_path, case):
    damage, named = VOC_LAYOUTS[case]
    damage(voc)
    out = tmp_path / "out"
    assert_refused(shard(voc, out, dataset="voc2007"), named, out=out)


# the VOC2007 fixture read by the generic ``voc`` converter
GENERIC_VOC2007 = ("-o", "year=2007", "-o", "train_set=trainval", "-o", "test_set=test")


def test_voc_lists_without_classes_in_annotations(voc, tmp_path):
    """Generic ``voc`` reads its classes from the XMLs; an image list naming no objects fails."""
    main = _voc2007(voc) / "ImageSets" / "Main"
    for xml in (_voc2007(voc) / "Annotations").glob("*.xml"):
        xml.write_text("<annotation></annotation>")
    out = tmp_path / "out"
    result = shard(voc, out, *GENERIC_VOC2007, dataset="voc")
    assert_refused(result, "no classes found", out=out)
    assert main.is_dir()


def _undecodable_file_name(root: Path) -> None:
    path = root / "annotations/instances_train.json"
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "img\udcff.jpg"  # json.dumps writes the escape \udcff
    path.write_text(json.dumps(data))


def _drop_images_dir(root: Path) -> None:
    shutil.rmtree(root / "val")


COCO_LAYOUTS = {
    "no-annotations-dir": (lambda r: shutil.rmtree(r / "annotations"), "annotations"),
    "no-test-json": (lambda r: (r / "annotations/instances_val.json").unlink(), "instances_<val"),
    "two-train-jsons": (
        lambda r: shutil.copy(
            r / "annotations/instances_train.json", r / "annotations/instances_train_extra.json"
        ),
        "instances_train_extra.json",
    ),
    "no-image-folder": (_drop_images_dir, "instances_val.json"),
    "invalid-json": (
        lambda r: (r / "annotations/instances_train.json").write_text("{ not json"),
        "instances_train.json",
    ),
    "top-level-list": (
        lambda r: (r / "annotations/instances_train.json").write_text("[]"),
        "top level is a JSON list",
    ),
    "not-utf8": (
        lambda r: (r / "annotations/instances_train.json").write_bytes(b'{\n"images": "\xff"}'),
        "instances_train.json, line 2",
    ),
    "file-name-not-utf8": (_undecodable_file_name, "image id 1"),
    "not-instances": (
        lambda r: (r / "annotations/instances_train.json").write_text('{"images": []}'),
        "'annotations'",
    ),
}


@pytest.mark.parametrize("case", sorted(COCO_LAYOUTS))
def test_wrong_coco_layout(coco, tmp_path, case):
    damage, named = COCO_LAYOUTS[case]
    damage(coco)
    out = tmp_path / "out"
    assert_refused(shard(coco, out), named, out=out)


def test_coco2014_on_a_generic_coco_root(coco, tmp_path):
    out = tmp_path / "out"
    assert_refused(shard(coco, out, dataset="coco2014"), "instances_train2014.json", out=out)


def test_voc_on_a_coco_root(coco, tmp_path):
    out = tmp_path / "out"
    assert_refused(shard(coco, out, dataset="voc2007"), "VOC2007", out=out)


def test_different_categories_in_train_and_test(coco, tmp_path):
    data = coco_json(coco, "val")
    data["categories"] = data["categories"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in (1, 3)]
    write_coco_json(coco / "annotations" / "instances_val.json", **data)
    out = tmp_path / "out"
    assert_refused(shard(coco, out), "instances_train.json", "instances_val.json", out=out)


# -- a missing image file ------------------------------------------------------------------------


def test_missing_image_coco(coco, tmp_path):
    gone = coco_image_path(coco, 4)
    gone.unlink()
    out = tmp_path / "out"
    assert_refused(shard(coco, out), str(gone), "missing", out=out)


def test_missing_image_in_the_test_split(coco, tmp_path):
    """The train split's scan was cached under _progress/ before the test split failed."""
    gone = coco_image_path(coco, 1003, "val")
    gone.unlink()
    out = tmp_path / "out"
    assert_refused(shard(coco, out), str(gone), out=out)


def test_missing_image_voc_then_fixed(voc, tmp_path):
    gone = _voc2007(voc) / "JPEGImages" / "tv05.jpg"
    saved = gone.read_bytes()
    gone.unlink()
    out = tmp_path / "out"
    assert_refused(shard(voc, out, dataset="voc2007"), str(gone), out=out)
    info = CliRunner().invoke(cli.main, ["info", str(out)])
    assert info.exit_code == 1 and "does not exist" in info.output
    gone.write_bytes(saved)  # fixed: the same command now succeeds
    result = shard(voc, out, dataset="voc2007")
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()


def test_failure_into_an_existing_empty_folder_leaves_it_empty(coco, tmp_path):
    coco_image_path(coco, 2).unlink()
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(shard(coco, out), "train_000002.jpg", out=out, fresh=False)
    assert list(out.iterdir()) == []


# -- a truncated or corrupt JPEG -----------------------------------------------------------------


REASONS = {
    "truncated": "truncated JPEG",
    "random-bytes": "not a JPEG",
    "empty": "empty file",
    "html-page": "not a JPEG",
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_jpeg_fails_by_default(coco, tmp_path, kind):
    bad = coco_image_path(coco, 3)
    CORRUPTIONS[kind](bad)
    out = tmp_path / "out"
    result = shard(coco, out)
    assert_refused(result, str(bad), "(id 3)", REASONS[kind], "--on-bad skip", out=out)
    assert "object at 0x" not in result.output  # a reason, not a repr


@needs_real_voc
@pytest.mark.parametrize("kind", ["truncated", "empty"])
def test_corrupt_real_voc_jpeg_fails(tmp_path, kind):
    root = real_voc2007(tmp_path / "raw")
    bad = _voc2007(root) / "JPEGImages" / "000003.jpg"
    CORRUPTIONS[kind](bad)
    out = tmp_path / "out"
    assert_refused(shard(root, out, dataset="voc2007"), str(bad), "000003", out=out)


def _broken_scan_data() -> bytes:
    """A JPEG whose header and EOI are intact but whose entropy-coded data is broken: the
    structural check passes; only a full decode finds it."""
    data = flat_jpeg_bytes((64, 48), 3)
    sos = data.find(b"\xff\xda")
    start = sos + 2 + ((data[sos + 2] << 8) | data[sos + 3])
    return data[: start + 5] + b"\xff\xc8" * 10 + data[start + 5 :]


def test_check_decode_finds_broken_image_data(coco, tmp_path):
    bad = coco_image_path(coco, 5)
    bad.write_bytes(_broken_scan_data())
    out = tmp_path / "out"
    assert_refused(shard(coco, out, "--check", "decode"), str(bad), "does not decode", out=out)
    # the default structural check lets it through; verify (which always decodes) names it
    assert shard(coco, out).exit_code == 0
    result = CliRunner().invoke(cli.main, ["verify", str(out), "--workers", "1"])
    assert result.exit_code == 1
    assert "image train_000005 does not decode" in result.output


@pytest.mark.parametrize("kind", ["truncated", "random-bytes", "empty"])
def test_on_bad_skip_lists_the_skipped_key(coco, tmp_path, kind):
    bad = coco_image_path(coco, 3)
    CORRUPTIONS[kind](bad)
    out = tmp_path / "out"
    result = shard(coco, out, "--on-bad", "skip", "--max-bad", "0.2")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad image(s)" in result.output

    manifest = json.loads((out / "manifest.json").read_text())
    skipped = manifest["official_splits"]["train"]["skipped"]
    assert [(s["id"], s["path"]) for s in skipped] == [("3", str(bad))]
    assert skipped[0]["reason"]
    assert manifest["official_splits"]["val"]["skipped"] == []
    assert sum(s["num_samples"] for n, s in manifest["splits"].items() if n != "test") == 9

    for name in ("train", "val", "test"):
        table = pq.read_table(out / "labels" / f"{name}.parquet")
        assert "3" not in table["source_id"].to_pylist()
        assert "train_000003" not in table["key"].to_pylist()
    official = pq.read_table(out / "labels" / "official" / "train.parquet").to_pylist()
    (row,) = [r for r in official if r["source_id"] == "3"]
    assert row["split"] is None and row["row"] is None  # kept for the field's order, not placed

    info = CliRunner().invoke(cli.main, ["info", str(out)])
    assert info.exit_code == 0 and "skipped: train 1" in info.output
    verify = CliRunner().invoke(cli.main, ["verify", str(out), "--workers", "1"])
    assert verify.exit_code == 0, verify.output


def test_on_bad_skip_fails_above_max_bad(coco, tmp_path):
    bad = coco_image_path(coco, 3)
    CORRUPTIONS["truncated"](bad)
    out = tmp_path / "out"
    result = shard(coco, out, "--on-bad", "skip")  # 1 of 10 > the default 1 %
    assert_refused(result, "1 of 10", "--max-bad", str(bad), out=out)
    result = shard(coco, out, "--on-bad", "skip", "--max-bad", "0.05")
    assert_refused(result, "--max-bad 0.05", out=out)


def test_on_bad_skip_max_bad_counts_per_split(coco, tmp_path):
    """1 of 10 train images passes --max-bad 0.1; 1 of 5 test images does not."""
    CORRUPTIONS["empty"](coco_image_path(coco, 3))
    bad = coco_image_path(coco, 1002, "val")
    CORRUPTIONS["empty"](bad)
    out = tmp_path / "out"
    result = shard(coco, out, "--on-bad", "skip", "--max-bad", "0.1")
    assert_refused(result, "1 of 5", "val split", str(bad), out=out)


# -- duplicate ids -------------------------------------------------------------------------------


def test_duplicate_coco_image_ids(coco, tmp_path):
    data = coco_json(coco, "train")
    twin = dict(data["images"][2], file_name="another.jpg")
    data["images"].append(twin)
    path = write_coco_json(coco / "annotations" / "instances_train.json", **data)
    out = tmp_path / "out"
    assert_refused(shard(coco, out), "duplicate id '3'", str(path), out=out)


def test_duplicate_coco_category_ids(coco, tmp_path):
    for split in ("train", "val"):
        data = coco_json(coco, split)
        data["categories"].append({"id": 3, "name": "wolf", "supercategory": "animal"})
        write_coco_json(coco / "annotations" / f"instances_{split}.json", **data)
    out = tmp_path / "out"
    assert_refused(shard(coco, out), "duplicate id '3'", "categories", out=out)


@needs_real_coco
def test_duplicate_image_id_in_real_coco(tmp_path):
    root = real_coco2014(tmp_path / "raw")
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["images"].append(dict(data["images"][0]))
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    dup = f"duplicate id '{data['images'][0]['id']}'"
    assert_refused(shard(root, out, dataset="coco2014"), dup, str(path), out=out)


def test_duplicate_voc_id_in_a_list(voc, tmp_path):
    lst = _voc2007(voc) / "ImageSets" / "Main" / "trainval.txt"
    lst.write_text(lst.read_text() + "tv04\n")
    out = tmp_path / "out"
    assert_refused(shard(voc, out, dataset="voc2007"), "duplicate id 'tv04'", str(lst), out=out)


def test_duplicate_voc_id_in_a_per_class_list(voc, tmp_path):
    main = _voc2007(voc) / "ImageSets" / "Main"
    ids = main.joinpath("trainval.txt").read_text().split()
    for c in ("dog", "person"):
        lines = [f"{i} {1 if k % 2 else -1}" for k, i in enumerate(ids)] + [f"{ids[1]} 1"]
        main.joinpath(f"{c}_trainval.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = shard(voc, out, *GENERIC_VOC2007, dataset="voc")
    assert_refused(result, f"duplicate id '{ids[1]}'", "_trainval.txt", out=out)


@needs_real_voc
def test_duplicate_id_in_real_voc_list(tmp_path):
    root = real_voc2007(tmp_path / "raw")
    lst = _voc2007(root) / "ImageSets" / "Main" / "test.txt"
    lst.write_text(lst.read_text() + "000002\n")
    out = tmp_path / "out"
    assert_refused(shard(root, out, dataset="voc2007"), "duplicate id '000002'", str(lst), out=out)


# -- an annotation with an unknown category id ---------------------------------------------------


def test_unknown_category_id(coco, tmp_path):
    data = coco_json(coco, "train")
    data["annotations"].append({"id": 999, "image_id": 4, "category_id": 42})
    path = write_coco_json(coco / "annotations" / "instances_train.json", **data)
    out = tmp_path / "out"
    result = shard(coco, out)
    assert_refused(result, "annotation 999", "image 4", "category id 42", str(path), out=out)


def test_annotation_of_unknown_image_id(coco, tmp_path):
    data = coco_json(coco, "val")
    data["annotations"].append({"id": 555, "image_id": 77, "category_id": 1})
    path = write_coco_json(coco / "annotations" / "instances_val.json", **data)
    out = tmp_path / "out"
    assert_refused(shard(coco, out), "annotation 555", "image id 77", str(path), out=out)


@needs_real_coco
def test_unknown_category_id_in_real_coco(tmp_path):
    root = real_coco2014(tmp_path / "raw")
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    ann = data["annotations"][0]
    ann["category_id"] = 91  # COCO's ids run 1..90 with gaps; 91 is not one
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    result = shard(root, out, dataset="coco2014")
    needles = (f"annotation {ann['id']}", f"image {ann['image_id']}", "category id 91")
    assert_refused(result, *needles, out=out)


# -- an output folder holding a different dataset ------------------------------------------------


def test_out_holding_a_different_dataset(coco, voc, tmp_path):
    out = tmp_path / "out"
    assert shard(coco, out).exit_code == 0
    before = tree_digest(out)
    result = shard(voc, out, dataset="voc2007")
    assert_refused(result, str(out), "different shard set", "--overwrite", out=None)
    assert tree_digest(out) == before  # the existing, complete set is untouched


def test_out_holding_the_same_dataset_with_other_options(coco, tmp_path):
    out = tmp_path / "out"
    assert shard(coco, out).exit_code == 0
    before = tree_digest(out)
    assert_refused(shard(coco, out, "--shard-samples", "3"), "different shard set", out=None)
    assert tree_digest(out) == before


def test_rerun_on_a_complete_folder_is_a_no_op(coco, tmp_path):
    out = tmp_path / "out"
    first = shard(coco, out)
    assert first.exit_code == 0, first.output
    before = tree_digest(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = shard(coco, out)
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output
    assert tree_digest(out) == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes


def test_out_holding_a_corrupt_manifest(coco, tmp_path):
    out = tmp_path / "out"
    assert shard(coco, out).exit_code == 0
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])  # cut short by hand
    before = tree_digest(out)
    assert_refused(shard(coco, out), str(manifest), "not valid JSON", "--overwrite", out=None)
    assert tree_digest(out) == before
    result = shard(coco, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(cli.main, ["verify", str(out), "--workers", "1"]).exit_code == 0


def test_out_is_a_non_empty_foreign_folder(coco, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(flat_jpeg_bytes())
    (out / "notes.txt").write_text("mine")
    before = tree_digest(out)
    for extra in ((), ("--overwrite",), ("--resume",)):
        result = shard(coco, out, *extra)
        assert_refused(result, str(out), "not empty", out=out, fresh=False)
        assert tree_digest(out) == before  # --overwrite never deletes what is not ours


def test_out_is_a_file(coco, tmp_path):
    out = tmp_path / "out.tar"
    out.write_bytes(b"x")
    assert_refused(shard(coco, out), str(out), "not a folder")
    assert out.read_bytes() == b"x"


def test_out_holding_an_interrupted_conversion_of_another_dataset(coco, tmp_path):
    out = tmp_path / "out"
    (out / "_progress").mkdir(parents=True)
    (out / "_progress" / "identity.json").write_text('{"identity": "someone else"}')
    assert_refused(shard(coco, out), str(out), "interrupted conversion", out=out, fresh=False)
    info = CliRunner().invoke(cli.main, ["info", str(out)])
    assert info.exit_code == 1 and "did not finish" in info.output


def test_resume_without_an_interrupted_conversion(coco, tmp_path):
    out = tmp_path / "out"
    assert_refused(shard(coco, out, "--resume"), "--resume", str(out), out=out)


def test_overwrite_replaces_our_own_shard_set(coco, voc, tmp_path):
    out = tmp_path / "out"
    assert shard(coco, out, "--shard-samples", "2").exit_code == 0
    assert len(list(out.glob("train-*.tar"))) > 1
    (out / "README.txt").write_text("kept")  # not a name the writer owns
    result = shard(voc, out, "--overwrite", dataset="voc2007")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "voc2007"
    listed = {s["tar"] for sp in manifest["splits"].values() for s in sp["shards"]}
    assert {p.name for p in out.glob("*.tar")} == listed  # no stale coco shards
    assert (out / "README.txt").read_text() == "kept"
    verify = CliRunner().invoke(cli.main, ["verify", str(out), "--workers", "1"])
    assert verify.exit_code == 0, verify.output


def test_overwrite_then_bad_input_keeps_the_existing_set(coco, voc, tmp_path):
    """Images are checked before --overwrite removes anything: bad input loses nothing."""
    out = tmp_path / "out"
    assert shard(coco, out).exit_code == 0
    before = tree_digest(out)
    bad = _voc2007(voc) / "JPEGImages" / "tv02.jpg"
    CORRUPTIONS["truncated"](bad)
    result = shard(voc, out, "--overwrite", dataset="voc2007")
    assert_refused(result, str(bad), out=None)
    assert tree_digest(out) == before
    info = CliRunner().invoke(cli.main, ["info", str(out)])
    assert info.exit_code == 0 and "coco" in info.output


def test_overwrite_with_a_wrong_layout_keeps_the_existing_set(coco, tmp_path):
    """The source is opened (and its layout checked) before --overwrite removes anything."""
    out = tmp_path / "out"
    assert shard(coco, out).exit_code == 0
    before = tree_digest(out)
    result = shard(tmp_path / "nowhere", out, "--overwrite")
    assert_refused(result, "does not exist", out=None)
    assert tree_digest(out) == before
