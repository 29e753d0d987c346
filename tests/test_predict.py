"""``cli.py predict`` and ``cli.py export`` on a tiny shard set with a real CLIP cache (the
random-weight tiny CLIP; tests/support/predict_runs.py): a linear run on it, a zero-shot run and an e2e
run (tiny ResNet, 32 px). Predictions equal the runs' own, loose JPEGs give what their shards
give, exports give the network's probabilities, and every bad input is refused with nothing
written."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from models.backbones import create_backbone
from models.heads import EncoderHead
from pipelines.folder import FolderBatches, list_images
from shards.shardset import open_shard_set
from tests.support.cli_checks import assert_refused
from tests.support.predict_runs import TAG, get_predict_setup, invoke, probs_of
from train.runfolder import BEST, selected_weights
from train.settings import get_setting
from train.use.export import run_exported
from train.use.inference import NetworkOptions, TrainedRun, load_network, read_run
from train.use.thresholds import best_f1_threshold


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    return get_predict_setup(tmp_path_factory)


def test_predict_on_shards_equals_the_runs_predictions(setup, tmp_path):
    ss = open_shard_set(setup["shards"])
    for name, atol in (("e2e", 1e-6), ("linear", 1e-4)):  # linear: the cache is float16
        out = tmp_path / f"{name}.parquet"
        result = invoke("predict", "--run", setup[name], "--shards", setup["shards"], "--out", out)
        assert result.exit_code == 0, result.output
        assert "30 images in" in result.output and "images/s" in result.output
        table = pq.read_table(out)
        want = np.load(setup[name] / "predictions" / "test.npy")
        np.testing.assert_allclose(probs_of(table), want, atol=atol, rtol=0)
        assert table.column("row").to_pylist() == list(range(30))
        assert table.column("key").to_pylist() == ss.label_table("test").column("key").to_pylist()
        clean = [[ss.classes[c] for c in np.nonzero(r == 1)[0]] for r in ss.full_labels("test")]
        assert [sorted(x) for x in table.column("clean_labels").to_pylist()] == [
            sorted(x) for x in clean
        ]
        at_half = [sorted(ss.classes[c] for c in np.nonzero(p >= 0.5)[0]) for p in probs_of(table)]
        assert [sorted(x) for x in table.column("labels").to_pylist()] == at_half


@pytest.mark.parametrize("name", ["linear", "e2e"])
def test_each_setting_rebuilds_its_finished_run(setup, tmp_path, name):
    """Setting.create_network: the checkpoint's selected weights in the setting's network. A
    linear run's needs no shard set (its encoder from config.json's recipe; --shards points
    nowhere); an e2e run's is planned against the shard set where it is now."""
    folder, saved, config = read_run(setup[name])
    ckpt = folder.load_checkpoint(BEST)
    shards = setup["shards"] if name == "e2e" else tmp_path / "nowhere"
    trained = TrainedRun(config, saved, ckpt, NetworkOptions(shards=str(shards)))
    net, preset = get_setting(config.setting).create_network(trained)
    if name == "linear":
        assert isinstance(net, EncoderHead) and "shard_set" not in vars(trained)
        got = net.classifier.state_dict()
    else:
        assert trained.plan.config.shards == str(open_shard_set(shards).root)
        assert preset.size == 32
        got = net.state_dict()
    want = selected_weights(ckpt)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    with torch.no_grad():
        out = net.eval()(torch.zeros(2, 3, preset.size, preset.size))
    assert tuple(out.shape) == (2, len(saved["classes"]))


def test_an_e2e_network_keeps_the_shard_set_its_setting_opened(setup):
    """predict's thresholds read the validation labels of the shard set the e2e setting planned
    against: the same object, not a second opening (a linear run opens none until asked)."""
    e2e = load_network(setup["e2e"], NetworkOptions(shards=str(setup["shards"])))
    assert "shards" in vars(e2e) and e2e.shards.root == open_shard_set(setup["shards"]).root
    assert "shards" not in vars(load_network(setup["linear"]))


def test_predict_on_a_folder_of_the_same_jpegs(setup, tmp_path):
    shards_out, folder_out = tmp_path / "s.parquet", tmp_path / "f.csv"
    run = setup["linear"]
    assert invoke("predict", "--run", run, "--shards", setup["shards"], "--out", shards_out)
    args = ("predict", "--run", run, setup["images"], "--out", folder_out, "--top-k", 2)
    result = invoke(*args, "--batch-size", 8)  # 30 images: decoded by worker processes
    assert result.exit_code == 0, result.output
    table = pcsv.read_csv(folder_out)
    paths = table.column("path").to_pylist()
    assert [Path(p).stem for p in paths] == pq.read_table(shards_out).column("key").to_pylist()
    probs = probs_of(table)
    np.testing.assert_allclose(probs, probs_of(pq.read_table(shards_out)), atol=1e-6)
    classes = open_shard_set(setup["shards"]).classes
    top2 = [";".join(classes[c] for c in np.argsort(-p, kind="stable")[:2]) for p in probs]
    assert table.column("labels").to_pylist() == top2
    assert Path(paths[0]).name in result.output  # the first rows on the terminal


def f1_of(scores: np.ndarray, positive: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    total = predicted.sum() + positive.sum()
    return 2 * (positive & predicted).sum() / total if total else 0.0


def test_val_f1_thresholds_stored_once_and_reported(setup, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(setup["linear"], run)
    result = invoke("predict", "--run", run, setup["images"], "--threshold", "val-f1",
                    "--out", tmp_path / "p.parquet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on test: CF1" in result.output and "fewer than 3 val positives" in result.output
    stored = json.loads((run / "thresholds.json").read_text())
    ss = open_shard_set(setup["shards"])
    val, labels = np.load(run / "predictions" / "val.npy"), ss.full_labels("val") == 1
    assert stored["min_positives"] == 3 and stored["rule"] == "val-f1"
    for c, name in enumerate(ss.classes):
        t, record = stored["thresholds"][name], stored["classes"][name]
        f1_at = functools.partial(f1_of, val[:, c], labels[:, c])
        assert record["val_positives"] == labels[:, c].sum() and record["threshold"] == t
        assert record["val_f1"] == pytest.approx(100 * f1_at(t))
        if labels[:, c].sum() < 3:
            assert name in stored["global"] and t == 0.5 and record["fallback"]
            assert name in result.output.split("val positives")[1].splitlines()[0]
            continue
        assert not record["fallback"] and t > val[:, c].min()  # never every val image
        cuts = [u for u in np.unique(val[:, c]) if u > val[:, c].min()] + [2.0]
        assert f1_at(t) == pytest.approx(max(f1_at(u) for u in cuts))
    before = (run / "thresholds.json").read_bytes()
    again = invoke("predict", "--run", run, setup["images"], "--threshold", "val-f1",
                   "--out", tmp_path / "p.parquet")  # fmt: skip
    assert again.exit_code == 0 and "on test" not in again.output
    assert (run / "thresholds.json").read_bytes() == before


def test_best_f1_threshold_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    positive = np.array([True, False, True, True, False])
    # >= 0.6: tp 3, predicted 4, positives 3 -> F1 6/7 (>= 0.9: 2/4; >= 0.7: 4/6)
    t, f1 = best_f1_threshold(scores, positive)
    assert t == pytest.approx(0.4) and f1 == pytest.approx(6 / 7)
    # every image positive would be best (F1 1): that cut is never taken; >= 0.6 gives 6/7
    t, f1 = best_f1_threshold(scores, np.ones(5, bool))
    assert t == pytest.approx(0.4) and f1 == pytest.approx(8 / 9)
    assert best_f1_threshold(np.full(4, 0.3), np.array([True, False, True, True])) is None


@pytest.mark.parametrize("name", ["linear", "e2e"])
def test_export_round_trips(setup, tmp_path, name):
    run = load_network(setup[name])
    x = next(iter(FolderBatches(list_images([setup["images"]]), run.preset, 64)))["image"]
    want = torch.sigmoid(run.net(x)).detach().numpy()
    if name == "e2e":  # the checkpoint's own test predictions, images in the same order
        np.testing.assert_allclose(want, np.load(setup[name] / "predictions/test.npy"), atol=1e-6)
    formats = ["torchscript"]
    try:
        import onnxruntime  # noqa: F401

        formats.append("onnx")
    except ImportError:
        pass
    for fmt in formats:
        out = tmp_path / f"m.{'pt' if fmt == 'torchscript' else 'onnx'}"
        result = invoke("export", "--run", setup[name], "--format", fmt, "--out", out)
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(run_exported(out, x), want, atol=1e-5, rtol=0)
        sidecar = json.loads(Path(f"{out}.json").read_text())
        assert sidecar["classes"] == run.classes
        pre = sidecar["preprocessing"]
        assert pre["size"] == 32 and pre["mean"] == list(run.preset.mean)
        assert sidecar["thresholds"]["global"] == 0.5


def test_zeroshot_run_predicts_and_exports(setup, tmp_path):
    out = tmp_path / "z.parquet"
    result = invoke(
        "predict", "--run", setup["zeroshot"], "--shards", setup["shards"], "--out", out
    )
    assert result.exit_code == 0, result.output
    want = np.load(setup["zeroshot"] / "predictions" / "test.npy")
    # logits are 100 x cos: the rebuilt encoder rounds as the float16 cache did (issue 23)
    np.testing.assert_allclose(probs_of(pq.read_table(out)), want, atol=1e-4, rtol=0)
    result = invoke("export", "--run", setup["zeroshot"], "--out", tmp_path / "z.pt")
    assert result.exit_code == 0, result.output


def test_bad_input_is_refused_with_nothing_written(setup, tmp_path):
    out = tmp_path / "p.parquet"
    bad = tmp_path / "imgs"
    shutil.copytree(setup["images"], bad)
    (bad / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    shutil.copytree(setup["linear"], run)
    (run / "thresholds.json").unlink(missing_ok=True)  # export writes them
    args = ("predict", "--run", run, bad, "--out", out, "--threshold", "val-f1")
    assert_refused(invoke(*args), "broken.jpg", "--on-bad")
    assert_refused(invoke(*args, "--batch-size", 8), "broken.jpg")  # from a worker
    assert not (run / "thresholds.json").exists()
    result = invoke(
        "predict", "--run", run, bad, "--out", out, "--on-bad", "skip", "--batch-size", 8
    )
    assert result.exit_code == 0 and "skipped 1" in result.output and "broken.jpg" in result.output
    assert len(pq.read_table(out)) == 30
    out.unlink()
    (tmp_path / "empty").mkdir()
    assert_refused(invoke("predict", "--run", run, tmp_path / "empty", "--out", out), "no images")
    no_ckpt = tmp_path / "no-ckpt"
    shutil.copytree(run, no_ckpt)
    (no_ckpt / "checkpoint-best.pt").unlink()
    assert_refused(invoke("predict", "--run", no_ckpt, bad, "--out", out), "no checkpoint")
    assert_refused(invoke("export", "--run", no_ckpt), "no checkpoint")
    assert_refused(invoke("export", "--run", run, "--classes", 80), "10 classes", "80")
    for name in ("linear", "e2e"):  # a config of 9 classes beside a checkpoint of 10
        nine = tmp_path / f"nine-{name}"
        shutil.copytree(setup[name], nine)
        config = json.loads((nine / "config.json").read_text())
        config["classes"] = config["classes"][:9]
        (nine / "config.json").write_text(json.dumps(config))
        assert_refused(invoke("export", "--run", nine), "9 classes")
        assert not (nine / "model.pt").exists()
    assert_refused(invoke("predict", "--run", setup["toy"], bad, "--out", out), "'toy'", "rebuilt")
    offline = tmp_path / "offline"  # a cache of pretrained weights this machine cannot get
    shutil.copytree(run, offline)
    meta = json.loads((setup["shards"] / "embeddings" / TAG / "meta.json").read_text())
    meta.update(model="ViT-B-32", pretrained="laion2b_s34b_b79k", weights_sha256="0" * 64)
    vit = setup["shards"] / "embeddings" / "vit"
    vit.mkdir(exist_ok=True)
    (vit / "meta.json").write_text(json.dumps(meta))
    config = json.loads((offline / "config.json").read_text())
    config["run"]["features"] = "vit"
    config["encoder"] = {k: v for k, v in meta.items() if k != "splits"}  # the run's recipe
    (offline / "config.json").write_text(json.dumps(config))
    assert_refused(invoke("predict", "--run", offline, bad, "--out", out), "--weights PATH")
    del config["encoder"]  # a run from before runs kept the recipe: the cache's meta.json
    (offline / "config.json").write_text(json.dumps(config))
    assert_refused(invoke("predict", "--run", offline, bad, "--out", out), "--weights PATH")
    no_val = tmp_path / "no-val"
    shutil.copytree(run, no_val)
    (no_val / "predictions" / "val.npy").unlink()
    args = ("predict", "--run", no_val, bad, "--out", out, "--threshold", "val-f1")
    assert_refused(invoke(*args), "val-f1", "validation")
    assert_refused(invoke("predict", "--run", run, bad, "--out", tmp_path / "p.txt"), ".csv")
    assert_refused(invoke("predict", "--run", tmp_path, bad, "--out", out), "no config.json")
    assert not out.exists() and not list(tmp_path.glob("*.parquet*"))
    assert not (no_ckpt / "model.pt").exists() and not (run / "model.pt").exists()
    assert invoke("export", "--run", run, "--format", "tflite").exit_code == 2


def test_a_cache_made_from_a_weights_file_needs_that_file(setup, tmp_path):
    run, out = setup["file"], tmp_path / "p.parquet"
    args = ("predict", "--run", run, "--shards", setup["shards"], "--out", out)
    assert_refused(invoke(*args), "local weights file", "--weights PATH")
    other, _ = create_backbone("test_resnet", weights="none")
    torch.save(other.state_dict(), tmp_path / "other.pt")
    assert_refused(invoke(*args, "--weights", tmp_path / "other.pt"), "not those")
    assert not out.exists()
    result = invoke(*args, "--weights", setup["weights"])
    assert result.exit_code == 0, result.output
    want = np.load(run / "predictions" / "test.npy")
    np.testing.assert_allclose(probs_of(pq.read_table(out)), want, atol=1e-3, rtol=0)
