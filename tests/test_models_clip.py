"""CLIP through open_clip with a tiny run-time config: embeddings, local checkpoints, provenance,
fast offline failure and the choices listed on bad names."""

from __future__ import annotations

import hashlib
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F

from models.clip import (
    DEFAULT_TEMPLATES,
    create_clip,
    encode_class_texts,
    encode_images,
    register_tiny_clip,
)
from models.weights import WeightsUnavailableError
from shards.base.errors import WsmlError

CLASSES = ["person", "dog", "potted plant", "bird with a curved (up or down) bill"]


@pytest.fixture(scope="module")
def tiny():
    return create_clip("wsml-tiny-clip", "none")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_register_is_idempotent():
    assert register_tiny_clip() == register_tiny_clip() == "wsml-tiny-clip"
    assert "wsml-tiny-clip" in open_clip.list_models()
    assert register_tiny_clip("wsml-tiny-clip-2") in open_clip.list_models()
    with pytest.raises(WsmlError, match="already registered with another config"):
        register_tiny_clip("ViT-B-32")


def test_tiny_model_preprocess_and_provenance(tiny):
    assert not tiny.model.training
    assert tiny.preprocess.image_size == (32, 32)
    assert tiny.preprocess.interpolation == "bicubic" and tiny.preprocess.resize_mode == "shortest"
    assert tiny.preprocess.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert tiny.provenance.pretrained == "none" and tiny.provenance.sha256 is None
    assert tiny.provenance.open_clip_version == open_clip.__version__
    assert tiny.tokenizer(["a photo of a dog."]).shape == (1, 77)


def test_text_embeddings_are_a_normalised_template_mean(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    emb = encode_class_texts(model, tokenizer, CLASSES)
    assert emb.shape == (len(CLASSES), 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(CLASSES)), atol=1e-5)
    small_batches = encode_class_texts(model, tokenizer, CLASSES, batch_size=3)
    assert torch.allclose(emb, small_batches, atol=1e-5)
    with torch.no_grad():  # by hand for one class
        each = F.normalize(
            model.encode_text(tokenizer([t.format("dog") for t in DEFAULT_TEMPLATES]))
        )
    assert torch.allclose(emb[1], F.normalize(each.mean(0), dim=0), atol=1e-5)
    one = encode_class_texts(model, tokenizer, ["dog"], ["a photo of a {}."])
    with torch.no_grad():
        assert torch.allclose(
            one, F.normalize(model.encode_text(tokenizer(["a photo of a dog."]))), atol=1e-5
        )
    with pytest.raises(WsmlError, match="exactly one"):
        encode_class_texts(model, tokenizer, CLASSES, ["a photo"])
    with pytest.raises(WsmlError, match="no class names"):
        encode_class_texts(model, tokenizer, [])


def test_image_embeddings(tiny, images):
    emb = encode_images(tiny.model, images, batch_size=4)
    assert emb.shape == (6, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize("nested", [False, True])
def test_local_checkpoint_round_trip(tmp_path, tiny, images, nested):
    state = tiny.model.state_dict()
    if nested:  # as open_clip's training script saves it, from a DDP model
        state = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    loaded = create_clip("wsml-tiny-clip", str(path))
    assert torch.equal(encode_images(loaded.model, images), encode_images(tiny.model, images))
    texts = encode_class_texts(loaded.model, loaded.tokenizer, CLASSES)
    assert torch.equal(texts, encode_class_texts(tiny.model, tiny.tokenizer, CLASSES))
    assert loaded.provenance.pretrained == "file" and loaded.provenance.source == str(path)
    assert loaded.provenance.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_local_files(tmp_path, tiny):
    with pytest.raises(WsmlError, match="not found: .*absent.pt"):
        create_clip("wsml-tiny-clip", str(tmp_path / "absent.pt"))
    partial = {k: v for k, v in tiny.model.state_dict().items() if not k.startswith("visual.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(WsmlError, match="cannot load CLIP weights from .*partial.pt"):
        create_clip("wsml-tiny-clip", str(tmp_path / "partial.pt"))


def test_offline_tag_fails_fast_and_says_how_to_pass_a_file():
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is not set: a hub request would wait for the network")
    start = time.perf_counter()
    try:
        create_clip("ViT-B-32", "laion2b_s34b_b79k")
    except WeightsUnavailableError as e:
        message = str(e)
    else:
        pytest.skip("the weights are in the local hub cache")
    assert time.perf_counter() - start < 10
    assert "laion2b_s34b_b79k" in message and "ViT-B-32" in message
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in message


def test_unknown_names_list_choices():
    with pytest.raises(WsmlError, match="unknown CLIP model 'ViT-B-33'. Did you mean ViT-B-32"):
        create_clip("ViT-B-33", "none")
    with pytest.raises(WsmlError, match="unknown pretrained tag 'laion2b' .*laion2b_s34b_b79k"):
        create_clip("ViT-B-32", "laion2b")
    with pytest.raises(WsmlError, match="no published weights"):
        create_clip("wsml-tiny-clip", "openai")
