"""BoostLU (Kim et al. 2023): the CAM head's logits by hand, the plain CAM head equal to the linear
head on pooled features, the options' refusals, and an e2e LL-Ct + BoostLU run that evaluates."""

from __future__ import annotations

import pytest
import torch
import torchvision  # noqa: F401  (imported once here, not in every epoch's loader workers)
from torch import nn

from models.heads import CamClassifier, Classifier
from shards.base.errors import WsmlError
from tests.support.train_fixtures import get_shards, read_summary
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.context import cpu_threads
from train.run import evaluate_run, train


class Maps(nn.Module):
    """A backbone whose feature map is its input (timm's forward_features / pooled forward)."""

    def forward_features(self, x):
        return x

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_boostlu_logits_by_hand():
    model = CamClassifier(Maps(), feature_dim=1, num_classes=1, alpha=5.0)
    with torch.no_grad():
        model.head.weight.fill_(1.0)
        model.head.bias.fill_(-1.0)
    x = torch.tensor([[[[3.0, 0.0], [1.0, -2.0]]]])  # CAM = x - 1 = [[2, -1], [0, -3]]
    # positive CAM values x 5: [[10, -1], [0, -3]], mean 6 / 4
    assert model(x).item() == pytest.approx(1.5)
    model.alpha = 1.0
    assert model(x).item() == pytest.approx(-0.5)  # plain CAM: mean of x - 1


def test_plain_cam_head_equals_the_linear_head():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 3)
    cam = CamClassifier(Maps(), 6, 3, alpha=1.0)
    linear = Classifier(Maps(), 6, 3)
    with torch.no_grad():
        linear.head.weight.copy_(cam.head.weight[:, :, 0, 0])
        linear.head.bias.copy_(cam.head.bias)
    torch.testing.assert_close(cam(x), linear(x))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"features": "tag", "head": "cam"}, "--setting e2e"),
        ({"setting": "e2e", "boostlu_alpha": 5.0}, "--head cam"),
        ({"setting": "e2e", "head": "cam", "boostlu_alpha": 0.0}, "boostlu_alpha must be > 0"),
        ({"setting": "e2e", "head": "mlp"}, "linear, cam"),
    ],
)
def test_refused_options(kw, message):
    with pytest.raises(WsmlError, match=message):
        RunConfig("shards", "ll-ct", **kw)


@pytest.mark.slow
def test_e2e_ll_ct_with_boostlu(tmp_path_factory, tmp_path):
    shards = get_shards(tmp_path_factory)
    config = RunConfig(
        str(shards), "ll-ct", setting="e2e", backbone="test_resnet", weights="none",
        image_size=32, loader="torch", head="cam", boostlu_alpha=5.0, out=str(tmp_path / "run"),
        method_options={"epochs": "1", "lr": "1e-3", "batch_size": "16"},
    )  # fmt: skip
    with cpu_threads(1):
        summary = train(config)
    assert summary == read_summary(tmp_path / "run")
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert ckpt["model"]["head.weight"].dim() == 4  # the 1x1 convolution of the CAM head
    result = evaluate_run(str(tmp_path / "run"), "test")  # rebuilt with the same head and alpha
    assert result["mAP"] == pytest.approx(summary["test"]["mAP"], abs=1e-6)
