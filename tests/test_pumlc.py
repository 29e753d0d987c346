"""PU-MLC (METHODS.md §7): the variational PU loss and the mixup regulariser against float64
hand computations of the formulas, its training step (one forward, deterministic draws), the
local-global convolution ResNet (shapes, G ~ 0 at start, frozen parts, BatchNorm frozen) and the
protocol defaults."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from models.backbones import create_backbone
from models.lgc import GlobalBranch, LgcNet, LocalGlobalConv, create_lgc_net
from shards.base.errors import WsmlError
from train.methods import ModelSpec, create_config, get_method
from train.methods.pumlc import mixup_inputs, mixup_regularizer, pu_weights, vpu_loss
from train.optim import param_groups

INFO = get_method("pu-mlc")


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# The variational PU loss

Z = [[1.0, -0.5, 0.2], [0.0, 0.5, 0.8], [-1.0, 2.0, -0.4]]
# class 0: positives rows 0, 2; class 1: none (one negative); class 2: row 1 (row 0 negative)
OBS = [[1, 0, -1], [0, -1, 1], [1, 0, 0]]


def hand_vpu(z, obs, alpha, gamma):
    """(tau, w, loss) in float64, straight from the formula."""
    n, classes = len(z), len(z[0])
    tau, w, loss = [], [], 0.0
    for c in range(classes):
        col = [z[i][c] for i in range(n)]
        mean = sum(col) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in col) / n)  # population std
        t = min(alpha * std, 1.0)
        s = [sig(v / t) for v in col]
        m = sum(s) / n
        tau.append(t)
        w.append(m**gamma)
        loss += m**gamma * math.log(m + 1e-10)
        pos = [s[i] for i in range(n) if obs[i][c] == 1]
        if pos:
            loss -= sum(math.log(p + 2e-10) for p in pos) / len(pos)
    return tau, w, loss


def test_vpu_loss_by_hand():
    z, obs = torch.tensor(Z), torch.tensor(OBS, dtype=torch.int8)
    for alpha, gamma in ((1.0, 0.55), (2.0, 0.85), (0.5, 0.0)):
        tau, w, loss = hand_vpu(Z, OBS, alpha, gamma)
        got_tau, got_w = pu_weights(z, alpha, gamma)
        assert got_tau.tolist() == pytest.approx(tau, rel=1e-6)
        assert got_w.tolist() == pytest.approx(w, rel=1e-6)
        assert float(vpu_loss(z, obs, alpha, gamma)) == pytest.approx(loss, rel=1e-6)
    # std of class 1 is 1.027 > 1: tau clamped at 1 with alpha 1; class 0: sqrt(2/3)
    assert pu_weights(z, 1.0, 0.55)[0].tolist() == pytest.approx(
        [math.sqrt(2 / 3), 1.0, 0.48989795]
    )


def test_method_forward_is_the_vpu_loss_and_ignores_negatives():
    method = INFO.create(3, 3, INFO.create_config("coco"))
    batch = {"row": torch.arange(3), "observed": torch.tensor(OBS, dtype=torch.int8)}
    out = method(torch.tensor(Z), batch, epoch=1, step=0)
    assert float(out["loss"]) == pytest.approx(hand_vpu(Z, OBS, 1.0, 0.55)[2], rel=1e-6)
    unknown = {**batch, "observed": torch.tensor(OBS, dtype=torch.int8).clamp(min=0)}
    assert torch.equal(method(torch.tensor(Z), unknown, epoch=1, step=0)["loss"], out["loss"])


def test_classes_without_positives_have_only_the_unlabeled_term():
    none = [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]
    tau, w, loss = hand_vpu(Z, none, 1.0, 0.55)
    unlabeled = 0.0
    for c in range(3):
        m = sum(sig(Z[i][c] / tau[c]) for i in range(3)) / 3
        unlabeled += w[c] * math.log(m + 1e-10)
    assert loss == pytest.approx(unlabeled)
    got = vpu_loss(torch.tensor(Z), torch.tensor(none, dtype=torch.int8), 1.0, 0.55)
    assert float(got) == pytest.approx(unlabeled, rel=1e-6)


def test_no_gradient_through_tau_and_w():
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    vpu_loss(z, torch.tensor(OBS), 1.0, 0.55).backward()
    tau, w, _ = hand_vpu(Z, OBS, 1.0, 0.55)
    # d/dz_nc with tau_c and w_c constant: s(1-s)/tau (w / (N (m + eps)) - [n in P] / (|P| (s + 2eps)))
    for c in range(3):
        s = [sig(Z[i][c] / tau[c]) for i in range(3)]
        m = sum(s) / 3
        npos = sum(OBS[i][c] == 1 for i in range(3))
        for i in range(3):
            want = w[c] / (3 * (m + 1e-10))
            if OBS[i][c] == 1:
                want -= 1 / (npos * (s[i] + 2e-10))
            want *= s[i] * (1 - s[i]) / tau[c]
            assert z.grad[i, c].item() == pytest.approx(want, rel=1e-9), (i, c)


def test_constant_class_and_single_sample_stay_finite():
    z = torch.tensor([[0.0, 1.0], [0.0, 2.0]], requires_grad=True)  # class 0: std 0
    loss = vpu_loss(z, torch.tensor([[1, 0], [0, 1]]), 1.0, 0.55)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert torch.isfinite(vpu_loss(torch.tensor([[0.3, -2.0]]), torch.tensor([[1, 0]]), 1.0, 0.5))


# ---------------------------------------------------------------------------------------------
# The mixup regulariser

ZM = [[0.5, -1.0], [2.0, 0.0], [9.0, 9.0], [-0.5, 1.5], [1.0, -2.0]]  # N = 5: h = 2, row 2 unused
OBSM = [[1, 0], [0, -1], [1, 1], [0, 1], [-1, 0]]
ZMIX = [[0.3, -0.7], [1.2, 0.4]]


def test_mixup_regularizer_by_hand():
    lam, perm = 0.7, [1, 0]
    soft = [[1.0 if OBSM[i][c] == 1 else sig(ZM[i][c]) for c in range(2)] for i in range(5)]
    want = 0.0
    for k in range(2):  # pair k: first-half row perm[k] with last-half row 3 + k
        for c in range(2):
            t = lam * soft[perm[k]][c] + (1 - lam) * soft[3 + k][c]
            want += (math.log(t + 1e-10) - math.log(sig(ZMIX[k][c]) + 1e-10)) ** 2
    want /= 2
    z = torch.tensor(ZM, dtype=torch.float64, requires_grad=True)
    reg = mixup_regularizer(
        z, torch.tensor(ZMIX, dtype=torch.float64), torch.tensor(OBSM), lam, torch.tensor(perm)
    )
    assert float(reg.detach()) == pytest.approx(want, rel=1e-12)
    reg.backward()
    # soft targets keep their gradient (unknown and negative entries of paired rows alike);
    # positives and the unpaired middle row get none
    grad = (z.grad.abs() > 0).tolist()
    assert grad == [[False, True], [True, True], [False, False], [True, False], [True, True]]


def test_mixup_inputs_pair_permuted_first_half_with_last_half():
    x = torch.arange(5.0).reshape(5, 1, 1, 1) * torch.ones(5, 3, 2, 2)
    mixed = mixup_inputs(x, 0.25, torch.tensor([1, 0]))
    assert mixed[:, 0, 0, 0].tolist() == [0.25 * 1 + 0.75 * 3, 0.25 * 0 + 0.75 * 4]


class Counting(nn.Module):
    """A tiny image model that counts its forward calls."""

    def __init__(self, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


def test_training_step_adds_mixup_with_one_forward_and_per_step_draws():
    cfg = INFO.create_config("coco")
    method = INFO.create(6, 3, cfg, generator=torch.Generator().manual_seed(5))
    twin = INFO.create(6, 3, cfg, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, 4, generator=g)
    obs = torch.tensor([[1, 0, -1], [0, 1, 0], [0, 0, 1], [1, -1, 0], [0, 1, 0], [-1, 0, 1]])
    batch = {"input": x, "observed": obs.to(torch.int8), "row": torch.arange(6)}
    net = Counting(3)
    out = method.training_step(net, batch, epoch=1, step=7, autocast=contextlib.nullcontext)
    assert net.calls == 1 and set(out) == {"loss", "vpu", "mixup"}
    lam, perm = method.mixup_draw(7, 3)
    assert 0 < lam < 1 and sorted(perm.tolist()) == [0, 1, 2]
    lam2, perm2 = twin.mixup_draw(7, 3)  # a function of (seed, step): resume and ranks agree
    assert lam2 == lam and torch.equal(perm2, perm)
    assert method.mixup_draw(8, 3)[0] != lam
    with torch.no_grad():
        z, zmix = net(x), net(mixup_inputs(x, lam, perm))
        vpu = vpu_loss(z, obs, cfg.alpha, cfg.gamma)
        reg = mixup_regularizer(z, zmix, obs, lam, perm)
    assert float(out["vpu"]) == pytest.approx(float(vpu), rel=1e-6)
    assert float(out["mixup"]) == pytest.approx(float(reg), rel=1e-6)
    assert float(out["loss"].detach()) == pytest.approx(float(vpu + reg), rel=1e-6)
    off = INFO.create(6, 3, INFO.create_config("coco", {"mix_alpha": "0"}))
    out = off.training_step(net, batch, epoch=1, step=7, autocast=contextlib.nullcontext)
    assert float(out["mixup"]) == 0.0 and float(out["loss"].detach()) == pytest.approx(
        float(vpu), rel=1e-6
    )


def test_non_finite_mixed_logits_raise():
    method = INFO.create(4, 3, INFO.create_config("coco"))

    class Bad(nn.Module):
        def forward(self, x):
            z = x.flatten(1)[:, :3].clone()
            z[4:] = float("inf")  # the mixed half only
            return z

    batch = {"input": torch.randn(4, 3, 2, 2), "observed": torch.ones(4, 3, dtype=torch.int8)}
    with pytest.raises(WsmlError, match="pu-mlc: non-finite .* step 3"):
        method.training_step(Bad(), batch, epoch=2, step=3, autocast=contextlib.nullcontext)


# ---------------------------------------------------------------------------------------------
# The local-global convolution network


def global_branch_by_hand(gb: GlobalBranch, x: torch.Tensor) -> torch.Tensor:
    """G of METHODS.md §7.2 with loops over heads and places, float64."""
    gb = copy.deepcopy(gb).double().eval()
    x = x.double()
    n, c, h, w = x.shape
    heads, per = gb.num_heads, c // gb.num_heads

    def conv1x1(layer, t):
        return torch.einsum("oi,nihw->nohw", layer.weight[:, :, 0, 0], t) + layer.bias.view(
            1, -1, 1, 1
        )

    u = conv1x1(gb.reduce, x).clamp(min=0)
    ctx = torch.cat([u, u.mean((2, 3), keepdim=True).expand_as(u)], 1)
    a, b, v = conv1x1(gb.aggregate, ctx), conv1x1(gb.broadcast, ctx), conv1x1(gb.value, x)
    y = x.clone()
    for i in range(n):
        for k in range(heads):
            weights = torch.softmax(a[i, k].flatten(), 0).view(h, w)
            vec = (v[i, k * per : (k + 1) * per] * weights).sum((1, 2))  # (C/heads,)
            gate = torch.sigmoid(b[i, k])  # (H, W)
            y[i, k * per : (k + 1) * per] += vec.view(-1, 1, 1) * gate
    stride = gb.proj.stride
    p = conv1x1(gb.proj, y[:, :, :: stride[0], :: stride[1]])
    bn = gb.norm
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (p - bn.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.bias.view(
        1, -1, 1, 1
    )


def test_global_branch_by_hand_and_shapes():
    torch.manual_seed(0)
    gb = GlobalBranch(16, 24, stride=2).eval()
    nn.init.normal_(gb.norm.weight)  # visible output
    nn.init.normal_(gb.norm.bias)
    x = torch.randn(2, 16, 7, 9)
    out = gb(x)
    assert out.shape == (2, 24, 4, 5)
    assert nn.Conv2d(16, 24, 3, stride=2, padding=1)(x).shape == out.shape
    assert torch.allclose(out.double(), global_branch_by_hand(gb, x), atol=1e-5)
    with pytest.raises(WsmlError, match="divisible by 8 heads"):
        GlobalBranch(12, 12)


def test_global_branch_starts_near_zero():
    torch.manual_seed(0)
    gb = GlobalBranch(32, 32)
    assert gb.norm.bias.abs().max() == 0 and 0 < gb.norm.weight.std() < 3e-4
    conv = nn.Conv2d(32, 32, 3, padding=1)
    lgc = LocalGlobalConv(conv).eval()
    x = torch.randn(2, 32, 6, 6)
    assert (lgc(x) - conv(x)).abs().max() < 1e-3 * conv(x).abs().max()


@pytest.fixture(scope="module")
def pair():
    """(plain test_resnet, the same weights wrapped with LGC and a head). timm zero-initialises
    the last BatchNorm of every block, which (frozen) would cut the residual branches off: give
    every BatchNorm weight 1, as pretrained weights would have some."""
    torch.manual_seed(0)
    plain, info = create_backbone("test_resnet", weights="none")
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    model = LgcNet(copy.deepcopy(plain), info.feature_dim, 5, {"weights": info.weights})
    return plain.eval(), model


def test_every_3x3_conv_of_the_stages_is_wrapped(pair):
    plain, model = pair
    stages = ("layer1", "layer2", "layer3", "layer4")
    want = [
        f"backbone.{name}"
        for name, m in plain.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and name.startswith(stages)
    ]
    assert len(want) == 7 and model.wrapped == want
    for name in want:
        assert isinstance(model.get_submodule(name), LocalGlobalConv)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and ".layer" in name:
            assert name.endswith(".conv"), name  # only inside a LocalGlobalConv
    assert isinstance(model.backbone.conv1[0], nn.Conv2d)  # the 3-channel stem stays plain


def test_wrapped_network_starts_as_the_plain_one(pair):
    plain, model = pair
    model.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = plain(x), model.backbone(x)
        assert (got - want).abs().max() < 1e-3 * want.abs().max()
        zeroed = copy.deepcopy(model)
        for m in zeroed.modules():
            if isinstance(m, GlobalBranch):
                m.norm.weight.zero_()
        assert torch.equal(zeroed.backbone(x), want)
        assert model(x).shape == (3, 5)


def test_trainable_split_and_gradients(pair):
    _, model = pair
    model = copy.deepcopy(model).train()
    for name, p in model.named_parameters():
        trained = "global_branch" in name or name.startswith(("backbone.layer4.", "head."))
        assert p.requires_grad == trained, name
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    g = model.backbone.layer1[0].conv1.global_branch.value.weight.grad
    assert g.abs().sum() > 0  # an early global branch learns through the frozen layers
    groups = param_groups(model, model.head, INFO.create_config("coco"))
    assert sorted(g["name"] for g in groups) == [
        "backbone", "backbone-no-decay", "head", "head-no-decay"
    ]  # fmt: skip
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters())
    for g in groups:
        assert g["lr"] == 1e-4
        assert g["weight_decay"] == (1e-4 if all(p.ndim > 1 for p in g["params"]) else 0.0)


def test_batchnorm_stays_in_eval_mode(pair):
    _, model = pair
    model = copy.deepcopy(model)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.training and model.head.training and len(norms) > 20
    assert not any(m.training for m in norms)
    before = copy.deepcopy(model.state_dict())
    model(torch.randn(4, 3, 32, 32))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched


def test_build_model_from_spec_and_errors():
    spec = ModelSpec(None, ("a", "b"), INFO.create_config("coco"), "test_resnet", "none", 0)
    model = INFO.create_model(spec)
    assert isinstance(model, LgcNet) and model.head.out_features == 2
    assert model.weights_info == {"backbone": "test_resnet", "weights": "none", "sha256": None}
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(WsmlError, match="timm ResNet"):
        create_lgc_net("test_vit", 2, weights="none")


# ---------------------------------------------------------------------------------------------
# Protocol


def test_defaults_per_dataset_and_overrides():
    coco = create_config("pu-mlc", "coco2014")
    assert (coco.lr, coco.batch_size, coco.epochs, coco.ema) == (1e-4, 70, 40, 0.9997)
    assert (coco.alpha, coco.gamma, coco.mix_alpha) == (1.0, 0.55, 0.3)
    assert (coco.schedule, coco.schedule_epochs, coco.weight_decay) == ("onecycle", 80, 1e-4)
    voc = create_config("pu-mlc", "voc2007")
    assert (voc.lr, voc.batch_size, voc.epochs, voc.ema) == (4e-5, 90, 55, 0.991)
    assert (voc.alpha, voc.gamma) == (2.0, 0.85)
    assert create_config("pu-mlc", "nuswide") == coco == create_config("pu-mlc", "cub")
    cfg = create_config("pu-mlc", "voc", {"alpha": "1.5", "gamma": "0.6", "mix_alpha": "0"})
    assert (cfg.alpha, cfg.gamma, cfg.mix_alpha, cfg.lr) == (1.5, 0.6, 0.0, 4e-5)
    with pytest.raises(WsmlError, match="alpha must be > 0"):
        create_config("pu-mlc", None, {"alpha": "0"})
    assert INFO.settings == ("e2e",) and "partial" in INFO.regimes
    assert INFO.run_defaults == {"backbone": "resnet101", "preset": "asl448"}
    with pytest.raises(WsmlError, match="e2e setting only"):
        INFO.check_setting("linear")


def test_efficientnet_stages_are_wrapped_and_only_the_last_trains():
    """The same wrapping on timm's EfficientNet family (the demo's EfficientNet-Lite0): every 3x3
    conv of the blocks (depthwise ones included; the 3-channel stem stays plain), the last block
    and conv_head train, and the wrapped net equals the plain one with G's BN weight at 0."""
    plain, info = create_backbone("efficientnet-lite0", weights="none")
    model = LgcNet(copy.deepcopy(plain), info.feature_dim, 3)
    convs = [
        n for n, m in plain.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and n.startswith("blocks.")
    ]  # fmt: skip
    assert len(convs) > 5 and [w.removeprefix("backbone.") for w in model.wrapped] == [
        f"{n}" for n in convs
    ]
    assert isinstance(model.backbone.conv_stem, nn.Conv2d)
    last = f"blocks.{len(plain.blocks) - 1}."
    for name, p in model.backbone.named_parameters():
        trains = "global_branch." in name or name.startswith((last, "conv_head.", "bn2."))
        assert p.requires_grad == trains, name
    for m in model.modules():
        if isinstance(m, GlobalBranch):
            nn.init.zeros_(m.norm.weight)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.backbone(x), plain.eval()(x), atol=1e-6)
