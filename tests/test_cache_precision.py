"""Predict and export rebuild a cache's encoder in the cache's precision (issue 23, item 3):
under the autocast dtype its ``meta.json`` records (a GPU cache: bfloat16 features, float16
CLIP) and rounded to the stored float16, so the rebuilt encoder gives what the cache holds.
A GPU is stood in for by the CPU's own autocast: the same kernels, so the values are equal."""

from __future__ import annotations

import pytest
import torch

from models.backbones import create_backbone
from models.cache import create_feature_encoder, precision_name
from models.rebuild import INIT_SEED, CachePrecision, create_cache_encoder
from pipelines.distributed import seeded


def cache_meta(compute: torch.dtype | None) -> dict:
    """meta.json as cache_run writes it for test_resnet (random weights), made in ``compute``."""
    encoder = create_feature_encoder("test_resnet", weights="none", preset="backbone",
                                     image_size=32)  # fmt: skip
    record = {**encoder.record, "precision": precision_name(compute, "features")}
    return {**encoder.identity, **record, "tag": encoder.tag, "dtype": "float16"}


def cached(x: torch.Tensor, compute: torch.dtype | None) -> torch.Tensor:
    """What the cache holds for images ``x``: the backbone's features under ``compute``'s
    autocast, stored as float16."""
    with seeded(INIT_SEED):
        model, _ = create_backbone("test_resnet", weights="none")
    with torch.inference_mode(), torch.autocast("cpu", dtype=compute, enabled=bool(compute)):
        return model.eval()(x).float().half()


@pytest.mark.parametrize("compute", [None, torch.bfloat16, torch.float16])
def test_the_rebuilt_encoder_gives_what_the_cache_holds(compute):
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    meta = cache_meta(compute)
    assert CachePrecision.read(meta) == CachePrecision(compute, torch.float16)
    encoder, _ = create_cache_encoder(meta, meta["tag"])
    with torch.no_grad():
        got = encoder(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, cached(x, compute).float(), rtol=0, atol=0)
    if compute is not None:  # what ignoring the recorded precision cost (before issue 23)
        fp32, _ = create_cache_encoder(cache_meta(None), meta["tag"])
        with torch.no_grad():
            off = (fp32(x) - got).abs().max() / got.abs().max()
        assert off > 1e-4


def test_a_cache_from_before_the_precision_was_recorded_is_float32():
    assert CachePrecision.read({}) == CachePrecision(None, None)
    assert CachePrecision.read({"precision": "float32 (features)", "dtype": "float16"}) == (
        CachePrecision(None, torch.float16)
    )


def test_an_export_traces_without_autocast():
    """An exported graph carries no autocast (ONNX Runtime has no bfloat16 CPU kernels): it
    computes in float32 and keeps the float16 rounding."""
    meta = cache_meta(torch.bfloat16)
    encoder, _ = create_cache_encoder(meta, meta["tag"])
    x = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(encoder, x, check_trace=False)
    assert "autocast" not in str(traced.inlined_graph)
    fp32, _ = create_cache_encoder(cache_meta(None), meta["tag"])
    with torch.no_grad():
        torch.testing.assert_close(traced(x), fp32(x), rtol=0, atol=0)
