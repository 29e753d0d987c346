"""``cli.py cache-clip`` and ``cli.py cache-features`` end to end on a tiny shard set: a tiny
open_clip config with random weights, a local checkpoint file, row alignment against the label
table, resume after SIGKILL, two torchrun processes, the offline failure, the bundled
EfficientNet-Lite0, unknown names, and that nothing half-written is ever read."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

import cli
from shards import cache_writer as writer
from shards import caches
from shards.base.errors import WsmlError
from shards.convert.convert import convert
from shards.shardset import open_shard_set
from tests.support.raw_datasets import REPO, make_coco

TAG = "wsml-tiny-clip__none"
TINY = ("--model", "wsml-tiny-clip", "--chunk-size", "4")  # 12 + 3 + 5 chunks
ROWS = {"train": 48, "val": 12, "test": 20}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(*args) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def cache_tiny(shards: Path, *extra) -> Result:
    return run("cache-clip", "--shards", shards, *TINY, "--pretrained", "none", *extra)


def arrays(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


def assert_error(result: Result, *names: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for name in names:
        assert name in result.output, f"{name!r} not in: {result.output}"


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    make_coco(root / "raw", n_train=60, n_val=20)
    convert("coco", root / "raw", root / "set", {}, {}, workers=1)
    return root / "set"


@pytest.fixture
def fresh(shard_set: Path, tmp_path: Path) -> Path:
    """A copy of the shard set without embeddings."""
    ignore = shutil.ignore_patterns("embeddings")
    return Path(shutil.copytree(shard_set, tmp_path / "set", ignore=ignore))


@pytest.fixture(scope="module")
def reference(shard_set: Path, tmp_path_factory) -> dict:
    """An uninterrupted one-process run: its output, meta and array bytes."""
    copy = Path(shutil.copytree(shard_set, tmp_path_factory.mktemp("ref") / "set"))
    result = cache_tiny(copy)
    assert result.exit_code == 0, result.output
    folder = copy / "embeddings" / TAG
    return {"root": copy, "output": result.output, "meta": caches.get_cache(copy, TAG)} | {
        "arrays": arrays(folder)
    }


def test_cache_clip_whole_command(reference):
    root, meta = reference["root"], reference["meta"]
    assert f"embeddings/{TAG}: train 48, val 12, test 20 rows, dim 32" in reference["output"]
    assert set(reference["arrays"]) == {"train.npy", "val.npy", "test.npy", "text.npy"}
    assert sorted(p.name for p in (root / "embeddings" / TAG).iterdir()) == [
        "meta.json", "test.npy", "text.npy", "train.npy", "val.npy",
    ]  # fmt: skip
    assert meta["kind"] == "clip" and meta["model"] == "wsml-tiny-clip"
    assert meta["pretrained"] == "none" and meta["weights_sha256"] is None and meta["dim"] == 32
    assert meta["preprocess"]["size"] == 32 and meta["preprocess"]["interpolation"] == "bicubic"
    assert meta["open_clip_version"] and meta["normalized"] and meta["loader"] in ("dali", "torch")
    assert meta["precision"] == "float32 (images and class texts)"  # one precision for both
    assert meta["text"]["classnames"] == ["class0", "class1", "class2", "class3"]
    assert len(meta["text"]["templates"]) == 10
    for split, n in ROWS.items():
        assert meta["splits"][split]["rows"] == n
        a = caches.read_split(root, TAG, split)
        assert a.dtype == np.float16 and a.shape == (n, 32)
        assert np.allclose(np.linalg.norm(a.astype(np.float32), axis=1), 1, atol=2e-3)
    text = caches.read_text(root, TAG)
    assert text.shape == (4, 32) and text.dtype == np.float16

    again = cache_tiny(root)  # same settings: nothing to do
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    other = cache_tiny(root, "--template", "a blurry {}.")
    assert_error(other, "other settings", "text", "--overwrite")
    assert caches.get_cache(root, TAG)["text"]["templates"] == meta["text"]["templates"]
    redo = cache_tiny(root, "--template", "a blurry {}.", "--splits", "val", "--overwrite")
    assert redo.exit_code == 0, redo.output
    meta2 = caches.get_cache(root, TAG)
    assert meta2["text"]["templates"] == ["a blurry {}."] and list(meta2["splits"]) == ["val"]
    assert not (root / "embeddings" / TAG / "train.npy").exists()


def tar_images(root: Path, split: str) -> dict[int, bytes]:
    """Label-table row -> JPEG bytes, read from the split's tars."""
    out = {}
    for tar in open_shard_set(root).shard_paths(split):
        with tarfile.open(tar) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        for name, data in members.items():
            if name.endswith(".row"):
                out[int.from_bytes(data, "little", signed=True)] = members[name[:-4] + ".jpg"]
    return out


def test_local_checkpoint_file_and_row_alignment(fresh, reference, tmp_path):
    import io

    import open_clip
    from PIL import Image

    from models.cache import INIT_SEED
    from models.clip import create_clip, encode_images

    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)  # the weights --pretrained none gives
        tiny = create_clip("wsml-tiny-clip", "none")
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    result = run("cache-clip", "--shards", fresh, *TINY, "--pretrained", ckpt)
    assert result.exit_code == 0, result.output
    tag = f"wsml-tiny-clip__file-{sha[:12]}"
    meta = caches.get_cache(fresh, tag)
    assert meta["pretrained"] == "file" and meta["weights_sha256"] == sha
    assert meta["weights_source"] == str(ckpt)
    assert arrays(fresh / "embeddings" / tag) == reference["arrays"]  # the same embeddings

    # cached row i is the image of label-table row i, preprocessed by open_clip's own transform
    p = tiny.preprocess
    transform = open_clip.image_transform(
        p.image_size, False, p.mean, p.std, p.resize_mode, p.interpolation
    )
    images = tar_images(fresh, "train")
    batch = [transform(Image.open(io.BytesIO(images[i])).convert("RGB")) for i in range(48)]
    direct = encode_images(tiny.model, torch.stack(batch)).numpy()
    cached = caches.read_split(fresh, tag, "train").astype(np.float32)
    sims = direct @ cached.T  # (48, 48) cosine similarities
    assert (sims.argmax(axis=1) == np.arange(48)).all()
    assert np.diag(sims).min() > 0.98


def test_resume_after_kill(fresh, reference):
    folder = fresh / "embeddings" / TAG
    cmd = [sys.executable, "cli.py", "cache-clip", "--shards", str(fresh), *TINY]
    proc = subprocess.Popen(
        [*cmd, "--pretrained", "none"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while not any((writer.read_progress(folder) or {"done": {}})["done"].values()):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no chunk done in 90 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sum(len(c) for c in writer.read_progress(folder)["done"].values())
    assert 1 <= done < 20

    # nothing half-written is read
    assert not (folder / "meta.json").exists() and TAG not in caches.list_caches(fresh)
    assert {p.name for p in folder.glob("*.npy")} == set()
    with pytest.raises(WsmlError, match="no cached embeddings"):
        caches.read_split(fresh, TAG, "train")
    from pipelines.loader import create_loader

    with pytest.raises(WsmlError, match="no cached embeddings"):
        create_loader(fresh, "val", regime="full", batch_size=4, preset="clip224", embeddings=TAG)

    assert_error(cache_tiny(fresh, "--template", "a {}."), "unfinished", "--overwrite")
    resumed = cache_tiny(fresh)
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed with {done} of 20 chunks done" in resumed.output
    assert arrays(folder) == reference["arrays"]  # byte for byte
    assert sorted(p.name for p in folder.iterdir()) == sorted([*reference["arrays"], "meta.json"])


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_one_loader_reads_a_splits_chunks(fresh, reference, backend):
    """Issue 23: the cache writer builds one DALI graph per split, not one per chunk (its
    reader walks from chunk to chunk), and gives the same bytes."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    from models.cache import cache_clip

    out = cache_clip(fresh, model="wsml-tiny-clip", pretrained="none", device="cpu",
                     backend=backend, chunk_size=4)  # fmt: skip
    assert out["chunks"] == 20 and out["graph_builds"] == (3 if backend == "dali" else 0)
    if backend == reference["meta"]["loader"]:  # the reference: DALI where it is installed
        assert arrays(fresh / "embeddings" / TAG) == reference["arrays"]


def test_torchrun_two_processes_give_the_same_arrays(fresh, reference):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["cli.py", "cache-clip", "--shards", str(fresh), *TINY, "--pretrained", "none"]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("embedded 80 images") == 1 and "2 processes" in done.stdout
    assert caches.get_cache(fresh, TAG)["produced"]["world_size"] == 2
    assert arrays(fresh / "embeddings" / TAG) == reference["arrays"]


def test_offline_failure_is_fast_and_clear(fresh):
    t0 = time.monotonic()
    result = run("cache-clip", "--shards", fresh)  # ViT-B-32 laion2b_s34b_b79k by default
    assert time.monotonic() - t0 < 10
    assert_error(result, "ViT-B-32", "laion2b_s34b_b79k", "HF_HUB_OFFLINE", "--pretrained /")
    assert "none" in result.output and not (fresh / "embeddings").exists()


def test_cache_features_efficientnet_lite0_offline(fresh):
    from models.efficientnet_lite0 import get_weights_file

    args = ("--backbone", "efficientnet-lite0", "--preset", "backbone", "--image-size", "64")
    result = run("cache-features", "--shards", fresh, *args, "--splits", "val")
    assert result.exit_code == 0, result.output
    embedded, whole = re.findall(r"(\d+\.\d)s", result.output)  # the embedding, the command
    assert float(whole) >= float(embedded) and "with loading the model" in result.output
    tag = "efficientnet-lite0__in1k__backbone64"
    meta = caches.get_cache(fresh, tag)
    assert meta["kind"] == "features" and meta["dim"] == 1280 and not meta["normalized"]
    assert meta["weights_sha256"] == hashlib.sha256(get_weights_file().read_bytes()).hexdigest()
    assert meta["preprocess"]["mean"] == [0.5, 0.5, 0.5] and meta["preprocess"]["size"] == 64
    a = caches.read_split(fresh, tag, "val").astype(np.float32)
    assert a.shape == (12, 1280) and np.isfinite(a).all() and (a >= 0).all() and a.std() > 0
    assert "text" not in meta

    # a registered preset's geometry with the backbone's normalisation; random weights, L2
    args = ("--backbone", "resnet18", "--weights", "none", "--preset", "clip224", "--normalize")
    result = run("cache-features", "--shards", fresh, *args, "--splits", "val")
    assert result.exit_code == 0, result.output
    meta = caches.get_cache(fresh, "resnet18__none__clip224__l2")
    assert meta["dim"] == 512 and meta["normalized"] and meta["preprocess"]["size"] == 224
    assert meta["preprocess"]["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize(
    "args, code, names",
    [
        (("cache-clip", "--model", "ViT-B-3"), 2, ["ViT-B-32", "Choices"]),
        (
            ("cache-clip", "--model", "ViT-B-32", "--pretrained", "laion3b"),
            1,
            ["laion2b_s34b_b79k"],
        ),
        (("cache-clip", *TINY, "--pretrained", "none", "--splits", "tarin"), 1, ["train"]),
        (("cache-clip", *TINY, "--pretrained", "none", "--template", "a"), 1, ["{}"]),
        (("cache-features", "--backbone", "resnet5"), 2, ["resnet50", "efficientnet-lite0"]),
        (("cache-features", "--backbone", "resnet18", "--preset", "cole"), 2, ["cole448"]),
        (("cache-features", "--backbone", "resnet18", "--image-size", "64"), 1, ["backbone"]),
    ],
)
def test_bad_names_and_options_fail_before_any_work(fresh, args, code, names):
    result = run(args[0], "--shards", fresh, *args[1:])
    assert_error(result, *names, code=code)
    assert not (fresh / "embeddings").exists()


def test_help_imports_neither_torch_nor_dali():
    code = (
        "import sys; from click.testing import CliRunner; import cli\n"
        "for a in (['cache-clip', '--help'], ['cache-features', '--help'],"
        " ['bench', 'cache-clip', '--help']):\n"
        "    r = CliRunner().invoke(cli.main, a)\n"
        "    assert r.exit_code == 0 and 'Usage:' in r.output, r.output\n"
        "heavy = [m for m in ('torch', 'nvidia.dali', 'pyarrow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bench_cache_clip_smoke(tmp_path):
    args = ("--images", "40", "--model", "wsml-tiny-clip", "--batch-size", "16")
    result = run("bench", "cache-clip", *args, "--workdir", tmp_path)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("wsml-tiny-clip"))
    assert len(line.split()) == 7 and all(float(x) > 0 for x in line.split()[3:])
    assert not (tmp_path / "loader-shards" / "embeddings").exists()  # its cache is removed


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from shards import cache_writer as writer
from shards.base.errors import WsmlError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
folder = Path(sys.argv[1])
for make in (lambda: writer.create_partial(folder, "train", 4096, 512),
             lambda: writer.write_chunk(folder, "train", 0, np.arange(4096),
                                     np.ones((4096, 512), np.float16))):
    try:
        make()
    except WsmlError as e:
        print("Error:", e)
"""


def test_a_full_disk_is_an_ordinary_error_before_any_writing(tmp_path):
    """The memory-mapped array and a chunk file reserve their space when they are created:
    a file system without room (here a 1 MiB file-size limit, so EFBIG) is a clear error
    instead of a SIGBUS when the map is written."""
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert "cannot reserve 4,194,432 bytes for" in lines[0] and "train.npy.partial" in lines[0]
    assert "File too large" in lines[0] and "free space" in lines[0]
    assert "train-000000.npz" in lines[1]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing half-written
