"""HSPNet (METHODS.md §6): the adjacency on a hand-made similarity matrix, the GCN, the prompt
assembly against open_clip's own text path on the tiny CLIP, a frozen text tower under an
optimiser step, SPLC summed over the batch by hand, the protocol's defaults, and an end-to-end
run on the tiny shard set that evaluate_run re-scores."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.clip import create_clip, encode_class_texts, register_tiny_clip
from models.hspnet import (
    HierarchicalGcn,
    HspNet,
    PromptTextEncoder,
    create_hspnet,
    hierarchy_adjacency,
)
from shards.base.errors import WsmlError
from tests.support.train_fixtures import get_shards, read_metrics, read_summary
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.context import cpu_threads
from train.methods import create_config, get_method
from train.optim import create_optimizer
from train.run import evaluate_run, train

CLASSES = ["dog", "cat", "car", "bus", "person"]
GROUPS = ["animal", "animal", "vehicle", "vehicle", "person"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_clip(register_tiny_clip(), "none")


def test_adjacency_by_hand():
    s = torch.tensor(
        [[1.0, 0.9, 0.5, 0.2], [0.9, 1.0, 0.3, 0.6], [0.5, 0.3, 1.0, 0.4], [0.2, 0.6, 0.4, 1.0]]
    )
    # floor(0.75 * 4) = 3 kept per row (the diagonal among them), so two neighbours each;
    # they share 0.2 in proportion to their similarity, the diagonal is 0.8
    want = torch.tensor(
        [
            [0.8, 0.2 * 0.9 / 1.4, 0.2 * 0.5 / 1.4, 0.0],
            [0.2 * 0.9 / 1.5, 0.8, 0.0, 0.2 * 0.6 / 1.5],
            [0.2 * 0.5 / 0.9, 0.0, 0.8, 0.2 * 0.4 / 0.9],
            [0.0, 0.2 * 0.6 / 1.0, 0.2 * 0.4 / 1.0, 0.8],
        ]
    )
    assert torch.allclose(hierarchy_adjacency(s), want, atol=1e-7)
    half = hierarchy_adjacency(s, reweight_p=0.5)
    assert half[0].tolist() == pytest.approx([0.5, 0.5 * 0.9 / 1.4, 0.5 * 0.5 / 1.4, 0.0])
    # two groups keep floor(1.5) = 1 entry, the diagonal: no neighbours (the release: NaN)
    two = hierarchy_adjacency(torch.tensor([[1.0, 0.3], [0.3, 1.0]]))
    assert torch.allclose(two, torch.tensor([[0.8, 0.0], [0.0, 0.8]]))
    # a negative similarity counts as 0: row 0 keeps 0.5 only, row 2 keeps nothing positive
    neg = torch.tensor([[1.0, -0.2, 0.5, -0.9], [-0.2, 1.0, 0.1, 0.3], [0.5, 0.1, 1.0, -0.1],
                        [-0.9, 0.3, -0.1, 1.0]])  # fmt: skip
    got = hierarchy_adjacency(neg)
    assert got[0].tolist() == pytest.approx([0.8, 0.0, 0.2, 0.0])
    assert got[3].tolist() == pytest.approx([0.0, 0.2, 0.0, 0.8])
    assert torch.isfinite(got).all()


def test_gcn_formula_shapes_and_gradients():
    torch.manual_seed(0)
    gcn = HierarchicalGcn(6).double()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    adj = hierarchy_adjacency(torch.rand(5, 5, dtype=torch.float64) + torch.eye(5))
    out = gcn(x, adj)
    g = gcn.gamma.item()  # 0.9 in float32
    assert out.shape == (5, 6) and g == pytest.approx(0.9)
    assert [tuple(w.weight.shape) for w in gcn.layers] == [(6, 12), (12, 12), (12, 6)]
    w1, w2, w3 = (layer.weight.detach() for layer in gcn.layers)
    lrelu = lambda t: torch.where(t > 0, t, 0.2 * t)  # noqa: E731
    h = adj @ lrelu(adj @ lrelu(adj @ x.detach() @ w1) @ w2) @ w3
    assert torch.allclose(out, g * h + (1 - g) * x.detach(), atol=1e-12)
    out.sum().backward()
    # d sum(out) / d gamma = sum(h - x)
    assert gcn.gamma.grad.item() == pytest.approx(float((h - x.detach()).sum()), rel=1e-9)
    assert all(layer.weight.grad.abs().sum() > 0 for layer in gcn.layers)
    assert x.grad.shape == x.shape


def test_text_encoder_on_embeddings_is_open_clips(tiny):
    text = PromptTextEncoder(tiny.model)
    tokens = tiny.tokenizer(["a photo of a dog.", "x", "a much longer prompt about a bus here."])
    with torch.no_grad():
        ours = text(text.token_embedding(tokens), tokens)
        theirs = tiny.model.encode_text(tokens)
    assert ours.shape == (3, 32) and torch.allclose(ours, theirs, atol=1e-5)


def test_model_logits_are_ten_cosines_of_assembled_prompts(tiny):
    torch.manual_seed(1)
    model = HspNet(tiny.model, tiny.tokenizer, CLASSES, GROUPS)
    assert model.parents == ["animal", "vehicle", "person"]
    assert model.parent_index.tolist() == [0, 0, 1, 1, 2]
    # a meta-net that always gives the embeddings of "a photo of a" makes every class prompt
    # "a photo of a <class>.", which open_clip can encode from its tokens
    ctx = tiny.model.token_embedding(tiny.tokenizer(["a photo of a"]))[0, 1:5]  # (4, W)
    with torch.no_grad():
        model.meta_net[2].weight.zero_()
        model.meta_net[2].bias.copy_(ctx.flatten())
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        prompts = tiny.tokenizer([f"a photo of a {c}." for c in CLASSES])
        text = F.normalize(model.gcn(tiny.model.encode_text(prompts), model.child_adj), dim=-1)
        image = F.normalize(tiny.model.encode_image(images), dim=-1)
    assert logits.shape == (3, 5)
    assert torch.allclose(logits, 10 * image @ text.T, atol=1e-5)
    # the adjacencies come from the plain prompts' CLIP similarities
    plain = encode_class_texts(tiny.model, tiny.tokenizer, CLASSES, ("a photo of a {}.",))
    assert torch.allclose(model.child_adj, hierarchy_adjacency(plain @ plain.T), atol=1e-6)
    assert {"child_adj", "parent_adj", "parent_index"} <= set(model.state_dict())


def test_text_tower_frozen_image_tower_trains(tiny):
    torch.manual_seed(2)
    model = create_hspnet(register_tiny_clip(), CLASSES, GROUPS, weights="none")
    assert model.weights_info["weights"] == "none" and model.training
    assert model.pretrained_cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    cfg = create_config("hspnet", "voc", {"lr": "1e-2"})
    groups = model.param_groups(cfg)
    assert [g["name"] for g in groups] == ["no-decay", "decay", "gcn-no-decay", "gcn-decay"]
    assert [g["lr"] for g in groups] == [1e-2, 1e-2, 7e-4, 7e-4]
    assert [g["weight_decay"] for g in groups] == [0.0, 1e-4, 0.0, 1e-4]
    assert groups[2]["params"] == [model.gcn.gamma]
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not any(p.requires_grad or id(p) in grouped for p in model.text.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = get_method("hspnet").create(4, 5, cfg)
    batch = {"input": torch.randn(4, 3, 32, 32), "row": torch.arange(4)}
    batch["observed"] = torch.eye(4, 5, dtype=torch.int8)
    opt = create_optimizer(groups, cfg)
    out = method.training_step(model, batch, epoch=1, step=0, autocast=contextlib.nullcontext)
    out["loss"].backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("text.") for k in changed)
    assert any(k.startswith("visual.") for k in changed)
    assert {"gcn.gamma", "meta_net.0.weight", "gcn.layers.0.weight"} <= changed


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_splc_summed_by_hand():
    # row 0: positive 0, unknown p = .8 and .25; row 1: positive 1, unknown p = .5 and .7
    z = torch.tensor(
        [[math.log(3), math.log(4), -math.log(3)], [0.0, math.log(4), math.log(7 / 3)]]
    )
    observed = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.int8)
    batch = {"row": torch.tensor([0, 1]), "observed": observed}
    pos = lambda z: -((1 - sig(z - 1)) ** 2) * math.log(sig(z - 1))  # margin 1, gamma 2  # noqa: E731
    neg = lambda p: -(p**2) * math.log(1 - p)  # noqa: E731
    common = pos(math.log(3)) + pos(math.log(4)) + neg(0.25) + neg(0.5)
    info = get_method("hspnet")
    voc = info.create(2, 3, info.create_config("voc"))  # change_epoch 2: the release's 3rd epoch
    for epoch in (1, 2):
        out = voc(z, batch, epoch=epoch, step=0)
        assert float(out["loss"]) == pytest.approx(common + neg(0.8) + neg(0.7), rel=1e-6)
        assert float(out["corrected"]) == 0
    # p .8 and .7 > tau .6: positives without margin, (1 - p)^2 (-log p)
    corrected = common - 0.2**2 * math.log(0.8) - 0.3**2 * math.log(0.7)
    out = voc(z, batch, epoch=3, step=0)
    assert float(out["loss"]) == pytest.approx(corrected, rel=1e-6)  # a sum, not a mean
    assert float(out["corrected"]) == 2
    coco = info.create(2, 3, info.create_config("coco"))  # change_epoch 1: corrections from epoch 2
    assert float(coco(z, batch, epoch=2, step=0)["loss"]) == pytest.approx(corrected, rel=1e-6)


def test_protocol_defaults_and_options():
    want = {
        "voc": (1e-4, 7e-4, 2, 0.9956),
        "coco": (1e-4, 5e-4, 1, 0.99969),
        "nus": (1e-4, 5e-4, 3, 0.999787),
        "cub": (1e-3, 5e-3, 1, 0.995787),
    }
    for family, values in want.items():
        c = create_config("hspnet", family)
        assert (c.lr, c.gcn_lr, c.change_epoch, c.ema) == values, family
        assert (c.batch_size, c.epochs, c.schedule, c.schedule_epochs) == (128, 60, "onecycle", 80)
        assert (c.tau, c.margin, c.gamma, c.n_ctx, c.reweight_p) == (0.6, 1.0, 2.0, 4, 0.2)
        assert (c.weight_decay, c.optimizer, c.pretrained) == (1e-4, "adam", "openai")
    # the release's EMA: 0.82 per epoch over its hard-coded steps per epoch
    for family, steps in (("coco", 641), ("nus", 931), ("voc", 45), ("cub", 47)):
        assert create_config("hspnet", family).ema == pytest.approx(0.82 ** (1 / steps), abs=1e-6)
    info = get_method("hspnet")
    assert info.settings == ("e2e",) and info.run_defaults == {
        "backbone": "RN50",
        "preset": "clip224",
    }
    with pytest.raises(WsmlError, match="e2e setting only"):
        info.check_setting("linear")
    with pytest.raises(WsmlError, match="n_ctx"):
        create_config("hspnet", "voc", {"n_ctx": "0"})


def tiny_run(shards, out, image_size: int, **options) -> RunConfig:
    """One epoch of HSPNet on the random-weight tiny CLIP (32 px), batch 16."""
    return RunConfig(
        str(shards), "hspnet", setting="e2e", backbone=register_tiny_clip(), weights="none",
        image_size=image_size, loader="torch", out=str(out),
        method_options={"epochs": "1", "batch_size": "16", **options},
    )  # fmt: skip


@pytest.mark.slow
def test_e2e_smoke_and_rescore(tmp_path_factory, tmp_path):
    config = tiny_run(get_shards(tmp_path_factory), tmp_path / "run", 32, lr="1e-3")
    with cpu_threads(1):
        summary = train(config)
    (line,) = read_metrics(tmp_path / "run")
    assert line["step"] == 160 // 16 and math.isfinite(line["train"]["loss"])
    assert set(line["lr"]) == {"no-decay", "decay", "gcn-no-decay", "gcn-decay"}
    assert summary == read_summary(tmp_path / "run") and summary["method"] == "hspnet"
    result = evaluate_run(str(tmp_path / "run"), "test")
    assert result["mAP"] == pytest.approx(summary["test"]["mAP"], abs=1e-6)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert ckpt["config"]["backbone"]["weights"] == "none"
    assert ckpt["config"]["run"]["preset"] == "clip224"
    assert torch.allclose(ckpt["model"]["parent_adj"], torch.tensor([[0.8, 0.0], [0.0, 0.8]]))
    # used: predict gives the run's test predictions; the export (class features folded) the
    # network's probabilities
    from train.use.export import export_run, run_exported
    from train.use.inference import load_network
    from train.use.predict import PredictOptions, run_predict

    out = tmp_path / "p.parquet"
    got = run_predict(tmp_path / "run", out, PredictOptions(shards=config.shards)).probs
    want = np.load(tmp_path / "run" / "predictions" / "test.npy")
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    path, _ = export_run(tmp_path / "run", "torchscript")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net = torch.sigmoid(load_network(tmp_path / "run").net(x)).numpy()
    np.testing.assert_allclose(run_exported(path, x), net, atol=1e-5, rtol=0)


def test_wrong_input_size_is_refused_before_training(tmp_path_factory, tmp_path):
    """CLIP's towers take one size: another is refused naming it, and no run folder is left."""
    config = tiny_run(get_shards(tmp_path_factory), tmp_path / "run", 48)
    with pytest.raises(WsmlError, match=r"takes 32x32 images only; preset center48 makes 48x48"):
        train(config)
    assert not (tmp_path / "run" / "config.json").exists()


def test_inference_module_folds_the_class_features(tiny):
    """predict and export run the image tower and one product with constant class features:
    the same logits, and no text tower in the exported graph."""
    model = HspNet(tiny.model, tiny.tokenizer, CLASSES, GROUPS).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        folded = model.inference_module()
        assert torch.allclose(folded(x), model(x), atol=1e-5)
        traced = torch.jit.trace(folded, x, check_trace=False)
    names = [n for n, _ in traced.named_parameters()]
    assert names and all(n.startswith("visual.") for n in names)
    assert "token_embedding" not in traced.code
