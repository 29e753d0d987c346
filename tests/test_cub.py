"""The ``cub`` converter (Cole et al.'s ``format_cub.py`` protocol, METHODS.md §0.1): both real
layouts, labels = is_present of the 312 attributes, species column, official split, HSPNet's
20 attribute parts as groups, the real metadata files, and every kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from shards.base.errors import WsmlError
from shards.convert.convert import convert
from shards.converters.cub import (
    CubOptions,
    attribute_part,
    open_cub,
    read_attribute_labels,
    read_images,
    read_numbered_names,
    read_species,
    read_split,
)
from shards.shardset import open_shard_set
from tests.support.cli_checks import assert_refused as refused
from tests.support.cli_checks import shard_cli
from tests.support.layouts_cub import (
    SPECIES,
    attribute_names,
    cub_base,
    cub_layout,
    write_attribute_labels,
)
from tests.support.raw_datasets import REAL

REAL_CUB = REAL / "cub"
REAL_BASE = REAL_CUB / "CUB_200_2011"
HSPNET = REAL_CUB / "refs" / "jameslahm__HSPNet"
needs_real = pytest.mark.skipif(
    not (REAL_BASE / "images.txt").is_file(), reason=f"real CUB fixture not found at {REAL_CUB}"
)
N_ATTR = 312


def plain_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def expected(base: Path) -> dict:
    """What the raw files say, read plainly (an implementation independent of the converter)."""
    presence: dict[str, set[int]] = {}
    for image_id, attr, is_present, *_ in plain_rows(
        base / "attributes" / "image_attribute_labels.txt"
    ):
        presence.setdefault(image_id, set())
        if is_present == "1":
            presence[image_id].add(int(attr) - 1)
    return {
        "images": [i for i, _ in plain_rows(base / "images.txt")],
        "train": {i for i, t in plain_rows(base / "train_test_split.txt") if t == "1"},
        "species": {i: int(c) - 1 for i, c in plain_rows(base / "image_class_labels.txt")},
        "positives": {i: sorted(p) for i, p in presence.items()},
    }


# -- conversion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_both_layouts_convert(tmp_path, nested):
    root = cub_layout(tmp_path / "raw", nested=nested)
    want = expected(cub_base(root, nested))
    manifest = convert("cub", root, tmp_path / "out", {}, {}, workers=1)
    ss = open_shard_set(tmp_path / "out")
    assert ss.classes == attribute_names() and len(ss.classes) == N_ATTR
    assert manifest["groups"] == [attribute_part(a) for a in attribute_names()]
    assert manifest["complete_labels"] is True
    assert manifest["source"]["species"] == list(SPECIES)
    assert manifest["source"]["layout"] == ("nested" if nested else "flat")
    seen = {}
    for split in ss.splits:
        t = ss.label_table(split).to_pydict()
        full = ss.full_labels(split)
        for row, sid in enumerate(t["source_id"]):
            assert t["positives"][row] == want["positives"][sid]
            assert t["species"][row] == want["species"][sid]
            assert np.flatnonzero(full[row] == 1).tolist() == want["positives"][sid]
            assert (full[row] != 0).all()  # complete labels: every other attribute is negative
            seen[sid] = split
        assert all("CUB_200_2011/images/" in p for p in t["path"])
    assert sorted(seen, key=int) == want["images"]
    train_ids = [i for i in want["images"] if i in want["train"]]
    n_val = round(0.2 * len(train_ids))
    assert sum(s == "val" for s in seen.values()) == n_val
    assert sum(s == "train" for s in seen.values()) == len(train_ids) - n_val
    assert [i for i, s in seen.items() if s == "test"] == [
        i for i in want["images"] if i not in want["train"]
    ]
    assert manifest["official_splits"]["train"]["role"] == "train"
    assert manifest["official_splits"]["test"]["role"] == "test"


def test_source_records(tmp_path):
    root = cub_layout(tmp_path / "raw")
    source = open_cub(root, CubOptions())
    train, test = source.splits
    assert (train.name, train.role, test.name, test.role) == ("train", "train", "test", "test")
    assert [r.source_id for r in train.records] == [str(i) for i in range(1, 19) if i % 3]
    assert [r.source_id for r in test.records] == [str(i) for i in range(3, 19, 3)]
    first = train.records[0]
    assert first.key_hint == "Black_Footed_Albatross_0001_790001"
    assert Path(first.path).is_file() and Path(first.path).is_absolute()
    assert first.negatives is None and first.extra == (0,)
    assert source.extra_columns == (("species", "int32"),)
    assert test.records[-1].extra == (2,)


def test_root_at_the_cub_folder_itself(tmp_path):
    root = cub_layout(tmp_path / "raw")
    source = open_cub(root / "CUB_200_2011", CubOptions())  # attributes.txt one level up
    assert source.notes["layout"] == "folder"
    assert sum(len(s.records) for s in source.splits) == 18


def test_attributes_txt_beside_images_txt(tmp_path):
    root = cub_layout(tmp_path / "raw")
    (root / "attributes.txt").rename(root / "CUB_200_2011" / "attributes.txt")
    assert len(open_cub(root, CubOptions()).classes) == N_ATTR


def test_fingerprint_follows_the_labels(tmp_path):
    root = cub_layout(tmp_path / "raw")
    before = open_cub(root, CubOptions()).fingerprint
    assert open_cub(root, CubOptions()).fingerprint == before
    path = root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    _edit(path, 1, "1 1 1 4 0.0" if path.read_text()[4] == "0" else "1 1 0 4 0.0")
    assert open_cub(root, CubOptions()).fingerprint != before


# -- groups: HSPNet's 20 attribute parts ---------------------------------------------------------


@pytest.mark.parametrize(
    "name, part",
    [
        ("has_bill_shape::dagger", "bill"),
        ("has_upper_tail_color::grey", "upper"),
        ("has_under_tail_color::black", "under"),
        ("has_upperparts_color::blue", "upperparts"),
        ("has_size::large_(16_-_32_in)", "size"),
        ("has_shape::duck-like", "shape"),
        ("has_primary_color::brown", "primary"),
        ("has_eye_color::red", "eye"),
    ],
)
def test_attribute_part(name, part):
    assert attribute_part(name) == part


@needs_real
def test_groups_are_hspnets_parts():
    names = read_numbered_names(REAL_CUB / "attributes.txt", "attribute")
    parts = [attribute_part(n) for n in names]
    super_labels = (HSPNET / "cub_super_labels.txt").read_text().split()
    index = np.load(HSPNET / "cub_super_labels_index.npy")
    assert len(super_labels) == 20 and sorted(set(parts)) == sorted(super_labels)
    assert index.shape == (N_ATTR,)
    assert parts == [super_labels[k] for k in index]  # same names, same partition


# -- the real metadata files ---------------------------------------------------------------------


@needs_real
def test_real_metadata_files_parse():
    names = read_numbered_names(REAL_CUB / "attributes.txt", "attribute")
    assert len(names) == N_ATTR
    assert names[0] == "has_bill_shape::curved_(up_or_down)"
    assert names[-1] == "has_wing_pattern::multi-colored"
    species = read_numbered_names(REAL_BASE / "classes.txt", "species")
    assert len(species) == 200 and species[0] == "001.Black_footed_Albatross"
    images = read_images(REAL_BASE / "images.txt")
    ids = list(images)
    assert len(ids) == 11_788 and ids == list(range(1, 11_789))
    is_train = read_split(REAL_BASE / "train_test_split.txt", ids, REAL_BASE / "images.txt")
    assert (int(is_train.sum()), int((~is_train).sum())) == (5_994, 5_794)
    labels = read_species(REAL_BASE / "image_class_labels.txt", ids, REAL_BASE / "images.txt", 200)
    assert labels.min() == 0 and labels.max() == 199 and len(np.unique(labels)) == 200
    for k, rel in enumerate(images.values()):  # the folder names the species
        assert rel.split("/")[0] == species[labels[k]]
    # the formatted order (Cole: images.txt order) is HSPNet's list order
    for file, keep in (("cub_train.txt", True), ("cub_val.txt", False)):
        listed = [
            line.split(",")[0] for line in (HSPNET / "dataset" / file).read_text().split("\n")
        ]
        ours = [rel for k, rel in enumerate(images.values()) if is_train[k] == keep]
        assert [p for p in listed if p] == ours


@pytest.fixture(scope="module")
def real_sized(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The real metadata and 5 images in the flat layout, with a generated full-size
    image_attribute_labels.txt (11,788 x 312 rows; the real one is not public)."""
    if not (REAL_BASE / "images.txt").is_file():
        pytest.skip(f"real CUB fixture not found at {REAL_CUB}")
    root = tmp_path_factory.mktemp("cub-real") / "raw"
    base = root / "CUB_200_2011"
    shutil.copytree(REAL_BASE, base, ignore=shutil.ignore_patterns("attributes"))
    shutil.copy(REAL_CUB / "attributes.txt", root / "attributes.txt")
    rng = np.random.default_rng(1)
    present = rng.random((11_788, N_ATTR)) < 0.1
    present[:, 0] |= ~present.any(1)
    _write_large_labels(base, present)
    return root, present


def _write_large_labels(base: Path, present: np.ndarray) -> None:
    tails = [[f" {a} {p} 3 {a % 20}.5\n" for p in (0, 1)] for a in range(1, N_ATTR + 1)]
    chunks = []
    for i, row in enumerate(present.tolist(), 1):
        head = str(i)
        chunks.append("".join(head + tails[a][p] for a, p in enumerate(row)))
    end = chunks[2274].index("\n")  # the real file's quirk: a line with extra fields
    chunks[2274] = chunks[2274][:end] + " 0 7" + chunks[2274][end:]
    (base / "attributes").mkdir(exist_ok=True)
    (base / "attributes" / "image_attribute_labels.txt").write_text("".join(chunks))


def test_real_metadata_with_full_size_labels(real_sized):
    root, present = real_sized
    source = open_cub(root, CubOptions())
    train, test = source.splits
    assert (len(train.records), len(test.records)) == (5_994, 5_794)
    assert len(source.notes["species"]) == 200 and len(set(source.groups)) == 20
    for split in (train, test):
        for r in split.records[::97]:
            assert list(r.positives) == np.flatnonzero(present[int(r.source_id) - 1]).tolist()
    by_id = {r.source_id: r for s in source.splits for r in s.records}
    assert by_id["1"].key_hint == "Black_Footed_Albatross_0046_18"
    assert Path(by_id["1"].path).is_file()
    assert by_id["11788"].extra == (199,)


def test_missing_images_are_counted(real_sized, tmp_path):
    """Only 5 of the 11,788 real images exist: the count is named and nothing is written."""
    root, _ = real_sized
    out = tmp_path / "out"
    base = root / "CUB_200_2011"
    images = read_images(base / "images.txt")
    is_train = read_split(base / "train_test_split.txt", list(images), base / "images.txt")
    on_disk = [(base / "images" / rel).is_file() for rel in images.values()]
    present_train = int(np.sum(is_train & np.array(on_disk)))
    assert present_train == 3  # of the 5 real images, ids 2, 4 and 5 are train images
    assert_refused(shard(root, out), f"{5_994 - present_train} image file(s)", "train", out=out)


def test_full_size_labels_parse(real_sized):
    """A real-sized label file (11,788 x 312 rows) parses to the matrix it was made from; its
    speed is a benchmark matter, not asserted here."""
    root, present = real_sized
    path = root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    got = read_attribute_labels(path, list(range(1, 11_789)), N_ATTR)
    assert (got == present).all()


# -- bad input -----------------------------------------------------------------------------------


def shard(root: Path, out: Path, *extra: str) -> Result:
    return shard_cli(root, out, *extra, dataset="cub")


def assert_refused(result: Result, *names: str, out: Path) -> None:
    """Exit 1, one ``Error:`` line naming ``names``, no traceback, nothing written."""
    refused(result, *names, out=out)


def _edit(path: Path, line: int, text: str | None) -> None:
    """Replace (or with None delete) 1-based line ``line`` of ``path``."""
    lines = path.read_text().splitlines(keepends=True)
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


LABELS = "attributes/image_attribute_labels.txt"


def _row(image: int, attribute: int) -> int:
    """Line of (image, attribute) in the tiny layout's image_attribute_labels.txt."""
    return (image - 1) * N_ATTR + attribute


BAD = {
    # a wrong layout: the missing file is named
    "no-images-txt": (lambda b: (b / "images.txt").unlink(), ["CUB_200_2011/images.txt"]),
    "no-split": (lambda b: (b / "train_test_split.txt").unlink(), ["train_test_split.txt"]),
    "no-class-labels": (
        lambda b: (b / "image_class_labels.txt").unlink(),
        ["image_class_labels.txt"],
    ),
    "no-classes": (lambda b: (b / "classes.txt").unlink(), ["classes.txt"]),
    "no-attribute-names": (lambda b: (b.parent / "attributes.txt").unlink(), ["attributes.txt"]),
    "no-attribute-labels": (lambda b: (b / LABELS).unlink(), ["image_attribute_labels.txt"]),
    "no-images-folder": (lambda b: shutil.rmtree(b / "images"), ["images", "does not exist"]),
    "two-layouts": (
        lambda b: shutil.copytree(b, b / "CUB_200_2011"),
        ["CUB_200_2011/CUB_200_2011/images.txt", "point --root"],
    ),
    # label files of inconsistent lengths
    "split-short": (
        lambda b: _edit(b / "train_test_split.txt", 18, None),
        ["train_test_split.txt", "lists 17 images", "18", "id 18"],
    ),
    "class-labels-long": (
        lambda b: _append(b / "image_class_labels.txt", "19 1\n"),
        ["image_class_labels.txt:19", "unknown image id 19"],
    ),
    "labels-empty": (
        lambda b: (b / LABELS).write_text("\n"),
        ["image_attribute_labels.txt", "has 0 rows"],
    ),
    "labels-truncated": (
        lambda b: _edit(b / LABELS, _row(18, 312), None),
        ["image_attribute_labels.txt", "5615 rows", "image id 18"],
    ),
    "labels-row-dropped": (
        lambda b: _edit(b / LABELS, _row(4, 100), None),
        [f"image_attribute_labels.txt:{_row(4, 100)}", "expected image id 4 attribute id 100"],
    ),
    "labels-extra-rows": (
        lambda b: _append(b / LABELS, "18 1 0 1 0.0\n"),
        [f"image_attribute_labels.txt:{_row(18, 312) + 1}", "more rows"],
    ),
    # unknown ids
    "labels-unknown-image": (
        lambda b: _edit(b / LABELS, _row(5, 7), "99 7 1 3 1.0"),
        [f"image_attribute_labels.txt:{_row(5, 7)}", "unknown image id 99"],
    ),
    "labels-unknown-attribute": (
        lambda b: _edit(b / LABELS, _row(5, 7), "5 313 1 3 1.0"),
        [f"image_attribute_labels.txt:{_row(5, 7)}", "unknown attribute id 313"],
    ),
    "unknown-species": (
        lambda b: _edit(b / "image_class_labels.txt", 4, "4 999"),
        ["image_class_labels.txt:4", "unknown species id"],
    ),
    "split-unknown-image": (
        lambda b: _edit(b / "train_test_split.txt", 6, "60 1"),
        ["train_test_split.txt:6", "unknown image id 60"],
    ),
    # malformed lines
    "images-malformed": (
        lambda b: _edit(b / "images.txt", 3, "3"),
        ["images.txt:3", "expected '<image id> <value>'"],
    ),
    "images-duplicate-id": (
        lambda b: _edit(b / "images.txt", 5, "4 001.Black_footed_Albatross/x.jpg"),
        ["images.txt:5", "duplicate image id 4", "line 4"],
    ),
    "classes-out-of-order": (
        lambda b: _edit(b / "classes.txt", 2, "5 002.Laysan_Albatross"),
        ["classes.txt:2", "expected species id 2"],
    ),
    "attribute-names-malformed": (
        lambda b: _edit(b.parent / "attributes.txt", 7, "seven has_bill_shape::cone"),
        ["attributes.txt:7"],
    ),
    "split-not-binary": (
        lambda b: _edit(b / "train_test_split.txt", 2, "2 yes"),
        ["train_test_split.txt:2", "is_train must be 0 or 1"],
    ),
    "labels-non-integer": (
        lambda b: _edit(b / LABELS, _row(3, 30), "3 30 x 3 1.0"),
        [f"image_attribute_labels.txt:{_row(3, 30)}", "3 30 x"],
    ),
    "labels-too-few-fields": (
        lambda b: _edit(b / LABELS, _row(2, 9), "2 9"),
        [f"image_attribute_labels.txt:{_row(2, 9)}", "expected 'image_id attribute_id"],
    ),
    "labels-not-binary": (
        lambda b: _edit(b / LABELS, _row(6, 1), "6 1 2 3 1.0"),
        [f"image_attribute_labels.txt:{_row(6, 1)}", "is_present must be 0 or 1, got 2"],
    ),
    # image files
    "image-missing": (
        lambda b: next((b / "images").rglob("*_0002_*.jpg")).unlink(),
        ["1 image file(s) of the train split are missing", "_0002_"],
    ),
    "all-images-missing": (
        lambda b: [p.unlink() for p in (b / "images").rglob("*.jpg")],
        ["all image file(s) of the train split are missing"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(tmp_path, case):
    damage, names = BAD[case]
    root = cub_layout(tmp_path / "raw")
    damage(cub_base(root))
    out = tmp_path / "out"
    assert_refused(shard(root, out), *names, out=out)


def test_a_good_layout_passes_the_cli(tmp_path):
    root = cub_layout(tmp_path / "raw", nested=True)
    result = shard(root, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_extra_fields_on_a_line_are_ignored(tmp_path):
    root = cub_layout(tmp_path / "raw")
    path = cub_base(root) / LABELS
    assert len(path.read_text().splitlines()[_row(2, 2) - 1].split()) == 7  # the layout's quirk
    _edit(path, _row(1, 1), "1\t1   1 4 0.0 extra fields\r")  # tabs, runs of spaces, CRLF
    got = read_attribute_labels(path, list(range(1, 19)), N_ATTR)
    assert got[0, 0] and got.shape == (18, N_ATTR)


def test_crlf_label_files(tmp_path):
    root = cub_layout(tmp_path / "raw")
    base = cub_base(root)
    for name in ("images.txt", "train_test_split.txt", "image_class_labels.txt", LABELS):
        (base / name).write_bytes((base / name).read_bytes().replace(b"\n", b"\r\n"))
    plain = expected(base)
    source = open_cub(root, CubOptions())
    for r in source.splits[0].records:
        assert list(r.positives) == plain["positives"][r.source_id]


def test_empty_attribute_names_file(tmp_path):
    root = cub_layout(tmp_path / "raw")
    (root / "attributes.txt").write_text("\n")
    with pytest.raises(WsmlError, match="lists no attribute"):
        open_cub(root, CubOptions())


def test_rewritten_labels_change_what_is_read(tmp_path):
    root = cub_layout(tmp_path / "raw")
    base = cub_base(root)
    present = np.zeros((18, N_ATTR), dtype=bool)
    present[:, 5] = True
    write_attribute_labels(base, present)
    source = open_cub(root, CubOptions())
    assert all(r.positives == (5,) for s in source.splits for r in s.records)
