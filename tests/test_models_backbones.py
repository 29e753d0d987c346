"""timm backbones as feature extractors: random only when asked, local files (classifier keys
dropped), fast clear failure offline, unknown names with close matches."""

from __future__ import annotations

import time

import pytest
import torch

from models.backbones import create_backbone, list_backbones
from models.weights import WeightsUnavailableError
from shards.base.errors import WsmlError


def _features(model: torch.nn.Module, size: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))


def test_random_only_when_asked():
    model, info = create_backbone("resnet18", weights="none")
    assert _features(model).shape == (2, info.feature_dim) == (2, 512)
    assert not model.training
    assert info.weights == "none" and info.weights_sha256 is None
    assert info.input_size == (3, 224, 224) and info.mean == (0.485, 0.456, 0.406)
    _, same = create_backbone("resnet18", pretrained=False)
    assert same.weights == "none"
    with pytest.raises(WsmlError, match="contradicts"):
        create_backbone("resnet18", pretrained=False, weights="/some/file.pt")


def test_resnet50_feature_dim():
    model, info = create_backbone("resnet50", weights="none")
    assert info.feature_dim == 2048 and _features(model, 32).shape == (2, 2048)


def test_local_file_with_classifier(tmp_path):
    import timm

    full = timm.create_model("resnet18", pretrained=False).eval()  # with its 1000-class fc
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    model, info = create_backbone("resnet18", weights=str(path))
    assert info.weights == f"file:{path}" and len(info.weights_sha256) == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(
            model(x), full.forward_head(full.forward_features(x), pre_logits=True)
        )


def test_wrong_file_is_refused(tmp_path):
    import timm

    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(WsmlError, match=r"resnet34.pth do not fit the model: unexpected"):
        create_backbone("resnet18", weights=path)
    with pytest.raises(WsmlError, match="not found: .*missing.pth"):
        create_backbone("resnet18", weights=tmp_path / "missing.pth")


def test_offline_hub_fails_fast_with_hint():
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is not set: a hub request would wait for the network")
    start = time.perf_counter()
    try:
        create_backbone("resnet18")
    except WeightsUnavailableError as e:
        message = str(e)
    else:
        pytest.skip("resnet18 weights are in the local hub cache")
    assert time.perf_counter() - start < 10
    assert "resnet18" in message and "--weights" in message and "efficientnet-lite0" in message


def test_unknown_name_lists_close_matches():
    with pytest.raises(WsmlError, match="unknown backbone 'resnet51'. Did you mean .*resnet50"):
        create_backbone("resnet51", weights="none")
    with pytest.raises(WsmlError, match="Did you mean .*efficientnet-lite0"):
        create_backbone("efficientnet_lite00", weights="none")
    assert list_backbones() == ["efficientnet-lite0"]
