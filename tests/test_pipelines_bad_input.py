"""Bad input to ``create_loader``: each is a ``WsmlError`` whose message names the file or the
thing that is wrong (and, for names, the choices), never a crash deep inside DALI or a worker."""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.torch_loader import start_workers
from shards.base.errors import WsmlError
from shards.caches import write_cache
from tests.support.pipelines_data import (
    BACKENDS,
    REGIME,
    TAG,
    TINY_PRESET,
    get_shard_set,
    open_loader,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return get_shard_set(tmp_path_factory)


@pytest.fixture
def copy(root, tmp_path) -> Path:
    """A copy of the shard set to damage."""
    return Path(shutil.copytree(root, tmp_path / "shards"))


def load(root: Path, split: str = "val", **kw):
    args = dict(regime=REGIME, batch_size=4, preset=TINY_PRESET, rank=0, world_size=1)
    return open_loader(root, split, **{**args, "num_threads": 1, **kw})


def refused(*names: str, **kw) -> str:
    """Builds a loader that must be refused; returns the message after checking it names
    every one of ``names``."""
    with pytest.raises(WsmlError) as err:
        load(**kw)
    message = str(err.value)
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    return message


def test_no_manifest(copy):
    (copy / "manifest.json").unlink()
    refused(str(copy), "manifest.json", "cli.py shard", root=copy)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ext", ["tar", "idx"])
def test_missing_shard_file(copy, backend, ext):
    (copy / f"val-000001.{ext}").unlink()
    refused(str(copy / f"val-000001.{ext}"), "missing", root=copy, backend=backend)


@pytest.mark.parametrize("ext", ["tar", "idx"])
def test_checksum_mismatch_with_verify_on_load(copy, ext):
    path = copy / f"val-000000.{ext}"
    data = bytearray(path.read_bytes())
    if ext == "tar":  # one byte inside the first image (its data starts after a 512-byte header)
        data[512 + 100] ^= 0xFF
    else:
        data += b"\n"
    path.write_bytes(bytes(data))
    refused(str(path), "sha256", root=copy, verify_on_load=True)
    load(copy)  # without verify_on_load the tars are not hashed


def drop_image(tar: Path, index: Path, sample: int) -> str:
    """Rewrite ``tar`` without the ``.jpg`` member of its ``sample``-th sample (keeping its
    ``.row``) and write its index as DALI's wds2idx does (v1.2); returns that sample's key."""
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    keys = list(dict.fromkeys(m.name.split(".")[0] for m, _ in members))
    key = keys[sample]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            if m.name != f"{key}.jpg":
                t.addfile(m, io.BytesIO(data))
    lines = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            name, ext = m.name.split(".", 1)
            lines.setdefault(name, []).append(f"{ext} {m.offset_data} {m.size} {m.name}")
    index.write_text(f"v1.2 {len(lines)}\n" + "".join(" ".join(v) + "\n" for v in lines.values()))
    manifest = tar.parent / "manifest.json"  # its new size, or the loader refuses it at once
    m = json.loads(manifest.read_text())
    for split in m["splits"].values():
        for entry in split["shards"]:
            if entry["tar"] == tar.name:
                entry["bytes"] = tar.stat().st_size
    manifest.write_text(json.dumps(m))
    return key


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_without_its_image(copy, backend):
    key = drop_image(copy / "val-000001.tar", copy / "val-000001.idx", 1)
    loader = load(copy, backend=backend)  # (the manifest's digests are not checked by default)
    with pytest.raises(WsmlError) as err:
        list(loader)
    message = str(err.value)
    assert str(copy) in message
    if backend == "torch":  # the tar, the sample and the missing member
        assert "val-000001.tar" in message and key in message and ".jpg" in message
        del err
        gc.collect()  # closing the DataLoader after a worker's error takes torch 5 s: count it here
        assert "Traceback" not in message  # the worker's error, not torch's re-raise of it
    else:  # DALI names the index of the tar whose sample lacks its image
        assert "val-000001.idx" in message, message


def test_unknown_regime(root):
    refused("partial-p0.9", "single-positive", "cli.py observe", root=root, regime="partial-p0.9")


def test_unknown_preset(root):
    message = refused("cole-448", "Did you mean cole448", root=root, preset="cole-448")
    assert "asl448, clip224, cole448, puzzle512" in message


def test_unknown_backend(root):
    refused("'jax'", "Choices: dali, torch", root=root, backend="jax")


def test_unknown_split(root):
    refused("'valid'", "train, val, test", root=root, split="valid")


def test_embeddings_never_cached(root):
    refused("'clip-b32'", f"cached: {TAG}", "cache-clip", root=root, embeddings="clip-b32")


def test_embeddings_of_another_length(copy):
    write_cache(copy, "short", {"val": np.zeros((5, 3), np.float32)})
    refused("'short'", "5 rows", "12", root=copy, embeddings="short")


@pytest.mark.parametrize("rank,world", [(2, 2), (-1, 2), (0, 0)])
def test_rank_outside_the_world(root, rank, world):
    refused(f"rank {rank}", f"size {world}", root=root, rank=rank, world_size=world)


WITHOUT_DALI = """
import importlib.abc, sys

class NoDali(importlib.abc.MetaPathFinder):  # a machine where DALI does not install
    def find_spec(self, name, path, target=None):
        if name.split(".")[:2] == ["nvidia", "dali"]:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoDali())
from pipelines.loader import LoaderOptions, create_loader
from pipelines.presets import center_crop_preset
from shards.base.errors import WsmlError

preset = center_crop_preset(int(sys.argv[3]), interpolation="bilinear")
args = dict(regime=sys.argv[2], batch_size=4, preset=preset)
loader = create_loader(sys.argv[1], "val", **args, options=LoaderOptions(num_threads=1))
print("backend", loader.backend, "batches", sum(1 for _ in loader))
try:
    create_loader(sys.argv[1], "val", **args, options=LoaderOptions(backend="dali"))
except WsmlError as e:
    print("refused:", e)
"""


def test_auto_falls_back_to_torch_without_dali(root):
    """Without DALI, backend="auto" says so in one line and uses the fallback; asking for
    DALI by name is refused with what to do instead."""
    import subprocess
    import sys

    from tests.support.raw_datasets import REPO

    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_DALI, str(root), REGIME, str(TINY_PRESET.size)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    notices = [ln for ln in out.stderr.splitlines() if "DALI is not installed" in ln]
    assert len(notices) == 1
    assert "backend torch batches" in out.stdout
    assert "refused:" in out.stdout and "--loader torch" in out.stdout


def test_unknown_cpu_resize(root):
    refused("cpu_resize", "torch or dali", root=root, cpu_resize="pil")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_tar_names_the_tar(copy, backend):
    path = copy / "val-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: 512 + 300])  # inside the first sample's image
    refused(str(path), root=copy, backend=backend)


class _Finalized:
    """Garbage of the parent process that says which process finalized it."""

    def __init__(self, log: Path):
        self.log, self.me = log, self  # a cycle: only a full collection finds it

    def __del__(self):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")


class _Collecting(torch.utils.data.IterableDataset):
    """Each worker runs a full collection, as a long epoch eventually does."""

    def __iter__(self):
        gc.collect()
        yield os.getpid()


def test_torch_workers_never_collect_the_parents_garbage(tmp_path):
    """Objects this process left as garbage (a DALI pipeline of an earlier run, a test's) are
    never collected in a torch loader's forked worker: a DALI pipeline's ``__del__`` there waits
    forever for threads the fork did not copy (a whole test suite once hung so). Every loader
    starts its workers through ``start_workers``, which forks them with the heap frozen."""
    log = tmp_path / "finalized"
    loader = torch.utils.data.DataLoader(_Collecting(), batch_size=None, num_workers=2)
    gc.disable()  # this process collects nothing until its workers have forked
    try:
        _Finalized(log)  # garbage at once
        batches = start_workers(loader)
    finally:
        gc.enable()
    workers = {int(pid) for pid in batches}
    assert len(workers) == 2 and os.getpid() not in workers
    gc.collect()  # the parent finalizes it, once its heap is no longer frozen
    finalized = {int(x) for x in log.read_text().split()}
    assert finalized == {os.getpid()}
