"""Local weight files: nesting and prefixes, clear errors naming the path, sha256, the message
for weights that cannot be had."""

from __future__ import annotations

import hashlib

import pytest
import torch

from models.weights import (
    WeightsUnavailableError,
    file_sha256,
    load_weights,
    looks_like_path,
    read_state_dict,
    weights_unavailable,
)
from shards.base.errors import WsmlError


@pytest.fixture
def tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}},
        lambda sd: {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model+module", "compiled"],
)
def test_read_state_dict_unwraps(tmp_path, tiny, wrap):
    path = tmp_path / "w.pt"
    torch.save(wrap(tiny.state_dict()), path)
    got = read_state_dict(path)
    assert list(got) == list(tiny.state_dict())
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    load_weights(fresh, got, source=str(path))
    assert torch.equal(fresh[0].weight, tiny[0].weight)


def test_safetensors(tmp_path, tiny):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(tiny.state_dict(), str(path))
    assert set(read_state_dict(path)) == set(tiny.state_dict())


def test_missing_and_bad_files_are_named(tmp_path):
    with pytest.raises(WsmlError, match="not found: .*nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(WsmlError, match="not a file"):
        read_state_dict(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WsmlError, match="cannot read weights file .*junk.pt"):
        read_state_dict(junk)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(WsmlError, match="no state dict of tensors"):
        read_state_dict(tmp_path / "meta.pt")


def test_mismatch_lists_keys(tiny):
    sd = tiny.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["0.bias"]
    with pytest.raises(WsmlError, match=r"missing \(1\): 0.bias; unexpected \(1\): extra.weight"):
        load_weights(tiny, sd, source="x.pt")
    load_weights(
        tiny,
        {**tiny.state_dict(), "extra.weight": torch.zeros(1)},
        source="x",
        ignore_prefixes=("extra.",),
    )


def test_sha256(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_unavailable_message_says_how_to_pass_a_file():
    err = weights_unavailable("model x", OSError("no network"), "--weights PATH")
    assert isinstance(err, WeightsUnavailableError) and isinstance(err, WsmlError)
    assert "no network" in str(err) and "--weights PATH" in str(err) and "'none'" in str(err)


def test_looks_like_path():
    assert looks_like_path("/a/b") and looks_like_path("w.safetensors") and looks_like_path("x.bin")
    assert not looks_like_path("laion2b_s34b_b79k") and not looks_like_path("openai")
