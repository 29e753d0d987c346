"""``predict`` and ``export`` as an application uses them: every kind of image file predicted as
its shard counterpart, ``--on-bad skip`` over every failure of one image, where predictions came
from, sweeps, a run whose data moved, a run folder that cannot be written, file names that are
not UTF-8, and an application that has only ``preprocess.py`` and the exported model."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

import shards
from pipelines.folder import FolderBatches, list_images
from shards.base.fileio import sha256_file
from shards.convert.source import LABEL_SEPARATOR
from shards.shardset import open_shard_set
from tests.support.cli_checks import assert_refused
from tests.support.image_kinds import png16, reencoded
from tests.support.predict_runs import get_predict_setup, invoke, probs_of, resized_photos
from train.use.inference import load_network
from train.use.predict import read_provenance

RECODED_ATOL = 2e-3  # a PNG's shard holds the JPEG (q90) of its pixels: JPEG's loss, no more


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    return get_predict_setup(tmp_path_factory)


def copy_run(setup, name: str, to: Path) -> Path:
    shutil.copytree(setup[name], to)
    (to / "thresholds.json").unlink(missing_ok=True)  # an export may have written them
    return to


def by_name(table, column: str) -> dict[str, np.ndarray]:
    names = [Path(p).stem for p in table.column(column).to_pylist()]
    return dict(zip(names, probs_of(table), strict=True))


@pytest.mark.parametrize("name", ["linear", "e2e"])
def test_every_kind_of_file_predicts_as_its_shard(setup, tmp_path, name):
    """The raw test split (16-bit, palette and RGBA PNGs, grey and CMYK JPEGs, each EXIF
    orientation) as a folder: each image equal to its shard counterpart."""
    shard_out, folder_out = tmp_path / "s.parquet", tmp_path / "f.parquet"
    run = setup[name]
    assert invoke("predict", "--run", run, "--shards", setup["shards"], "--out", shard_out)
    result = invoke("predict", "--run", run, setup["raw_test"], "--out", folder_out,
                    "--batch-size", 8)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output
    want = by_name(pq.read_table(shard_out), "key")
    got = by_name(pq.read_table(folder_out), "path")
    assert got.keys() == want.keys() and len(got) == 30
    assert {k: v for k, v in setup["kinds"].items() if reencoded(v)}  # the kinds are there
    for key, probs in got.items():
        kind = setup["kinds"].get(key, "plain")
        atol = RECODED_ATOL if reencoded(kind) else 1e-6
        np.testing.assert_allclose(probs, want[key], atol=atol, rtol=0, err_msg=kind)
    grey16 = next(k for k, v in setup["kinds"].items() if v == "grey16")
    alone = tmp_path / "alone.parquet"  # a 16-bit PNG alone: the same inputs, not 257x
    assert invoke("predict", "--run", run, setup["raw_test"] / f"{grey16}.png", "--out", alone)
    np.testing.assert_allclose(probs_of(pq.read_table(alone))[0], got[grey16], atol=1e-6)


def test_on_bad_skip_covers_every_failure(setup, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted(setup["images"].rglob("*.jpg"))[:3]:
        shutil.copy(src, folder / src.name)
    (folder / "a-not-an-image.jpg").write_bytes(b"<html>not found</html>")
    (folder / "b-empty.png").write_bytes(b"")
    good = png16(np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 99)
    (folder / "c-truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "d-grey16.png").write_bytes(good)  # not a failure
    bomb = bytearray(png16(np.zeros((2, 2), np.uint16)))
    bomb[16:24] = (40_000).to_bytes(4, "big") * 2  # declares 40000 x 40000: Pillow refuses
    (folder / "e-bomb.png").write_bytes(bytes(bomb))
    out = tmp_path / "p.csv"
    for batch in ("32", "2"):  # here, and in worker processes
        assert_refused(invoke("predict", "--run", setup["linear"], folder, "--out", out,
                              "--batch-size", batch), "a-not-an-image.jpg", "--on-bad skip")  # fmt: skip
        assert not out.exists()
    result = invoke("predict", "--run", setup["linear"], folder, "--out", out, "--on-bad", "skip",
                    "--batch-size", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "skipped 4 that could not be read" in result.output
    for name in ("a-not-an-image.jpg", "b-empty.png", "c-truncated.png", "e-bomb.png"):
        line = next(x for x in result.output.splitlines() if name in x and x.startswith("  "))
        assert "(" in line  # with its reason
    paths = pcsv.read_csv(out).column("path").to_pylist()
    assert "d-grey16.png" in [Path(p).name for p in paths] and len(paths) == 4


def test_predictions_say_where_they_come_from(setup, tmp_path):
    run = copy_run(setup, "linear", tmp_path / "run")
    for out in (tmp_path / "p.parquet", tmp_path / "p.csv"):
        result = invoke("predict", "--run", run, setup["images"], "--out", out,
                        "--threshold", "val-f1")  # fmt: skip
        assert result.exit_code == 0, result.output
        record = read_provenance(out)
        stored = json.loads((run / "thresholds.json").read_text())
        assert record["run"] == str(run.resolve()) and record["member"] is None
        assert record["config_sha256"] == sha256_file(run / "config.json")
        assert record["checkpoint_sha256"] == sha256_file(run / "checkpoint-best.pt")
        assert record["threshold"] == {"kind": "val-f1", "values": stored["thresholds"]}
        assert record["classes"] == open_shard_set(setup["shards"]).classes
        assert record["wsml_version"] == shards.__version__
        assert record["label_separator"] == LABEL_SEPARATOR == ";"
        assert record["source"] == {"images": 30} and record["method"] == "an"
    assert (tmp_path / "p.csv.json").is_file() and not (tmp_path / "p.parquet.json").exists()
    table = pcsv.read_csv(tmp_path / "p.csv")
    first = next(x for x in result.output.splitlines() if x.startswith("digits_val"))
    shown = first.split()[-1]
    assert shown == (table.column("labels").to_pylist()[0] or "-")  # ';' on both
    result = invoke("predict", "--run", run, setup["images"], "--out", tmp_path / "k.parquet",
                    "--top-k", 2)  # fmt: skip
    assert read_provenance(tmp_path / "k.parquet")["threshold"] == {"kind": "top-k", "values": 2}


def test_a_sweep_predicts_and_exports_its_pick_and_kept_members(setup, tmp_path):
    sweep = setup["sweep"]
    summary = json.loads((sweep / "summary.json").read_text())
    out = tmp_path / "p.parquet"
    result = invoke("predict", "--run", sweep, "--shards", setup["shards"], "--out", out)
    assert result.exit_code == 0, result.output
    want = np.load(sweep / "predictions" / "test.npy")
    np.testing.assert_allclose(probs_of(pq.read_table(out)), want, atol=1e-4)  # float16 cache
    assert read_provenance(out)["member"] == summary["chosen"]
    other = next(n for n in summary["members"] if n != summary["chosen"])
    m = summary["members"][other]
    member = f"lr={m['lr']:g},batch={m['batch_size']}"
    args = ("predict", "--run", sweep, "--shards", setup["shards"], "--out", out)
    result = invoke(*args, "--member", member)
    assert result.exit_code == 0, result.output
    want = np.load(sweep / "members" / other / "predictions" / "test.npy")
    np.testing.assert_allclose(probs_of(pq.read_table(out)), want, atol=1e-4)
    assert read_provenance(out)["member"] == other
    assert_refused(invoke(*args, "--member", "lr=0.5"), "no member", "lr=0.01,batch=8")
    assert_refused(invoke(*args, "--member", "lr=x"), "--member", "lr")
    result = invoke("export", "--run", sweep, "--out", tmp_path / "m.pt", "--member", member)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.pt.json").read_text())["run"]["member"] == other
    thin = tmp_path / "thin"  # a sweep trained without --keep-members
    shutil.copytree(sweep, thin)
    for ckpt in (thin / "members").glob("*/checkpoint-best.pt"):
        ckpt.unlink()
    thin_args = ("predict", "--run", thin, setup["images"], "--out", out)
    assert_refused(invoke(*thin_args, "--member", member), other, "--keep-members")
    result = invoke(*thin_args, "--threshold", "val-f1")  # the pick's val predictions are kept
    assert result.exit_code == 0 and "on test: CF1" in result.output, result.output
    (thin / "checkpoint-best.pt").unlink()  # a sweep from before sweeps kept their pick
    assert_refused(invoke(*thin_args), "kept no weights", summary["chosen"])
    assert_refused(invoke("predict", "--run", setup["linear"], setup["images"], "--out", out,
                          "--member", member), "--sweep")  # fmt: skip


def test_a_run_whose_data_moved(setup, tmp_path):
    """A linear run keeps its encoder's recipe: predict and export need no shard set; what
    does need one (val-f1 thresholds, e2e runs) says to pass --shards, and works with it."""
    out = tmp_path / "p.parquet"
    moved = {}
    for name in ("linear", "e2e"):
        moved[name] = copy_run(setup, name, tmp_path / name)
        config = json.loads((moved[name] / "config.json").read_text())
        config["run"]["shards"] = str(tmp_path / "gone")
        (moved[name] / "config.json").write_text(json.dumps(config))
    result = invoke("predict", "--run", moved["linear"], setup["images"], "--out", out)
    assert result.exit_code == 0, result.output
    want = tmp_path / "want.parquet"
    assert invoke("predict", "--run", setup["linear"], setup["images"], "--out", want)
    np.testing.assert_array_equal(probs_of(pq.read_table(out)), probs_of(pq.read_table(want)))
    val_f1 = ("predict", "--run", moved["linear"], setup["images"], "--out", out,
              "--threshold", "val-f1")  # fmt: skip
    assert_refused(invoke(*val_f1), "--shards")
    assert invoke(*val_f1, "--shards", setup["shards"]).exit_code == 0
    e2e = ("predict", "--run", moved["e2e"], setup["images"], "--out", out)
    assert_refused(invoke(*e2e), "--shards")
    assert invoke(*e2e, "--shards", setup["shards"]).exit_code == 0
    bare = copy_run(setup, "linear", tmp_path / "bare")
    config = json.loads((bare / "config.json").read_text())
    config["run"]["shards"] = str(tmp_path / "gone")
    (bare / "config.json").write_text(json.dumps(config))
    result = invoke("export", "--run", bare, "--out", tmp_path / "m.pt")
    assert result.exit_code == 0 and "no per-class thresholds" in result.output, result.output
    assert json.loads((tmp_path / "m.pt.json").read_text())["thresholds"]["per_class"] is None
    result = invoke(
        "export", "--run", bare, "--out", tmp_path / "m.pt", "--shards", setup["shards"]
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "m.pt.json").read_text())["thresholds"]["per_class"]) == 10


def test_val_f1_on_a_run_folder_that_cannot_be_written(setup, tmp_path):
    """The predictions are written and the thresholds used; then the run says that
    thresholds.json could not be saved, and exits 0."""
    run = copy_run(setup, "linear", tmp_path / "run")
    (run / "thresholds.json").mkdir()  # the OS refuses to write the file, even to root
    out = tmp_path / "p.parquet"
    result = invoke("predict", "--run", run, setup["images"], "--out", out, "--threshold", "val-f1")
    assert result.exit_code == 0, result.output
    assert "could not save" in result.output and "thresholds.json" in result.output
    assert "on test: CF1" in result.output and out.is_file()
    assert read_provenance(out)["threshold"]["kind"] == "val-f1"
    assert not list(run.glob("*.wsml-tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_val_f1_on_a_read_only_run_folder(setup, tmp_path):
    run = copy_run(setup, "linear", tmp_path / "run")
    run.chmod(0o555)
    try:
        out = tmp_path / "p.parquet"
        result = invoke("predict", "--run", run, setup["images"], "--out", out,
                        "--threshold", "val-f1")  # fmt: skip
        assert result.exit_code == 0 and "could not save" in result.output, result.output
        assert out.is_file()
    finally:
        run.chmod(0o755)


def test_file_names_that_are_not_utf8(setup, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted(setup["images"].rglob("*.jpg"))[0]
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    with open(latin1, "wb") as f:
        f.write(src.read_bytes())
    shutil.copy(src, folder / "plain.jpg")
    # an argument that is not UTF-8 is refused before any work, by the command group
    bad_out = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"pr\xe9ds.csv"))
    result = invoke("predict", "--run", setup["linear"], folder, "--out", bad_out)
    assert result.exit_code == 2 and "--out" in result.output, result.output
    out = tmp_path / "p.parquet"
    result = invoke("predict", "--run", setup["linear"], folder, "--out", out)
    assert result.exit_code == 0, result.output
    assert "caf\\xe9.jpg" in result.output
    assert os.path.isfile(out)
    table = pq.read_table(tmp_path / "p.parquet")
    assert [Path(p).name for p in table.column("path").to_pylist()] == ["caf\\xe9.jpg", "plain.jpg"]
    probs = probs_of(table)
    np.testing.assert_array_equal(probs[0], probs[1])  # the same image


def test_an_application_with_only_preprocess_py_and_the_model(setup, tmp_path):
    """Non-square, resized photos (and the raw kinds) through preprocess.py alone: the
    pixels predict reads, and through the exported TorchScript and ONNX models predict's
    probabilities, to 1e-5."""
    sources = sorted(setup["raw_test"].iterdir())
    photos = resized_photos(tmp_path / "photos", sources[14:26]) + sources[:14]
    for name in ("linear", "e2e"):
        run = copy_run(setup, name, tmp_path / name)
        preds = tmp_path / f"{name}.parquet"
        assert invoke("predict", "--run", run, *photos, "--out", preds).exit_code == 0
        want = probs_of(pq.read_table(preds))
        app = tmp_path / f"app-{name}"
        app.mkdir()
        result = invoke("export", "--run", run, "--out", app / "model.pt")
        assert result.exit_code == 0, result.output
        sidecar = json.loads((app / "model.pt.json").read_text())
        assert len(sidecar["thresholds"]["per_class"]) == 10  # computed at export
        assert (run / "thresholds.json").is_file()
        check_preprocess_alone(app / "preprocess.py")
        x = run_app(app, photos, "torchscript")
        pixels = next(iter(FolderBatches(list_images(photos), load_network(run).preset, 64)))
        np.testing.assert_allclose(x, pixels["image"].numpy(), atol=1e-6, rtol=0)
        model = torch.jit.load(str(app / "model.pt"))
        with torch.no_grad():
            got = torch.sigmoid(model(torch.from_numpy(x))).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        result = invoke("export", "--run", run, "--format", "onnx", "--out", app / "model.onnx")
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(run_app(app, photos, "onnx"), want, atol=1e-5, rtol=0)


def check_preprocess_alone(path: Path) -> None:
    """preprocess.py imports Pillow, numpy and the standard library only."""
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}  # fmt: skip
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names <= {"__future__", "sys", "numpy", "PIL"}, names


APP = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import preprocess
x = preprocess.load_batch(sys.argv[4:])
if sys.argv[3] == "onnx":
    import onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1] + "/model.onnx", providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": x})[0]
    x = 1 / (1 + np.exp(-logits.astype(np.float64)))
mine = {"shards", "pipelines", "models", "train", "cli"} & set(sys.modules)
assert not mine, mine
np.save(sys.argv[2], x)
"""


def run_app(app: Path, photos: list[Path], fmt: str) -> np.ndarray:
    """An application in its own interpreter (-I: no user site, no PYTHONPATH, run from its
    folder): preprocess.py, then (onnx) onnxruntime; returns its inputs or probabilities."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = app / f"{fmt}.npy"
    cmd = [sys.executable, "-I", "-c", APP, str(app), str(out), fmt, *map(str, photos)]
    proc = subprocess.run(cmd, cwd=app, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return np.load(out)
