"""OASS (Xu et al. 2022): key points on hand-made maps, the quadrant cut and stitch (against the
release's per-cut F.interpolate procedure, and an identity round trip), the alpha_re schedule,
MLSML by hand, the fused class-specific instance logits against torch's BatchNorm2d, the teacher's
EMA sequence and its place in the method's state, and an e2e run that evaluate_run re-scores."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision  # noqa: F401  (imported once here, not in every epoch's loader workers)
from torch import nn

from models.oass import OassNet
from shards.base.errors import WsmlError
from shards.lists import LabelLists
from tests.support.train_fixtures import get_shards, read_metrics, read_summary
from train.checkpoints import read_checkpoint
from train.config import RunConfig
from train.context import cpu_threads
from train.methods import create_config, get_method
from train.methods.oass import (
    alpha_re_at,
    cut_crops,
    find_keypoints,
    local_peaks,
    plan_cuts,
    stitch,
    teacher_decay,
)
from train.run import evaluate_run, train

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Key points. Peaks on a zero background (64 x 64), min_distance 2, radius 30:
PEAKS = {  # (row, col): value
    (10, 20): 0.9,  # the global max
    (30, 40): 0.8,  # 28.3 px from it
    (2, 47): 0.5,  # 28.2 px; the release's typo (row vs the max's column) gives 32.4: out
    (12, 50): 0.3,  # 30.1 px: out
    (11, 28): 0.2,  # 8.1 px
    (14, 22): 0.1,  # 6th by value: never among the top 5
}


def peak_map(peaks=PEAKS, size=64) -> torch.Tensor:
    m = torch.zeros(size, size)
    for (r, c), v in peaks.items():
        m[r, c] = v
    return m


def keypoint(strategy, maps, **kw):
    kw = {"topk": 5, "min_distance": 2, "radius": 30.0, **kw}
    return find_keypoints(maps, strategy, **kw).tolist()


def test_keypoints_on_a_hand_made_map():
    m = peak_map()[None]
    assert keypoint("max", m) == keypoint("cmax", m) == [[10, 20]]
    # ctopk: top 5 = all but (14, 22); within 30 px: (10,20), (30,40), (2,47), (11,28)
    # rows (10+30+2+11)/4 = 13.25 -> 13, cols (20+40+47+28)/4 = 33.75 -> 33
    assert keypoint("ctopk", m) == [[13, 33]]
    # ctopk-w: weights .9 .8 .5 .3 .2 (sum 2.7), no radius
    rows = (0.9 * 10 + 0.8 * 30 + 0.5 * 2 + 0.3 * 12 + 0.2 * 11) / 2.7  # 14.74
    cols = (0.9 * 20 + 0.8 * 40 + 0.5 * 47 + 0.3 * 50 + 0.2 * 28) / 2.7  # 34.85
    assert keypoint("ctopk-w", m) == [[math.floor(rows), math.floor(cols)]] == [[14, 34]]
    # k = 1: the global max only
    assert keypoint("ctopk", m, topk=1) == keypoint("ctopk-w", m, topk=1) == [[10, 20]]


def test_keypoint_fallbacks_to_the_centre():
    edge = peak_map({(0, 30): 1.0, (20, 20): 0.5})  # argmax on row 0
    border_only = peak_map({(1, 30): 1.0})  # a peak within min_distance of the border
    flat = torch.zeros(64, 64)
    maps = torch.stack([edge, border_only, flat])
    assert keypoint("cmax", maps) == [[32, 32], [1, 30], [32, 32]]
    # edge: (0, 30) is in the border, (20, 20) is 22.4 px from the max: kept
    assert keypoint("ctopk", maps) == [[20, 20], [32, 32], [32, 32]]
    far = peak_map({(20, 20): 1.0, (60 - 2, 60 - 2): 0.9})  # 53.7 px: only the max counts
    assert keypoint("ctopk", far[None]) == [[20, 20]]
    zero_col = peak_map({(20, 2): 1.0, (20, 3): 0.0})  # floor(mean) with col 2 is fine
    assert keypoint("ctopk-w", zero_col[None]) == [[20, 2]]
    with pytest.raises(WsmlError, match="keypoint must be one of"):
        find_keypoints(flat[None], "centre")


def test_local_peaks_equal_a_brute_force_window_max():
    g = torch.Generator().manual_seed(2)
    maps = (torch.rand(2, 20, 23, generator=g) * 4).round() / 4  # plateaus and ties
    d = 2
    got = local_peaks(maps, d)
    for k in range(2):
        low = maps[k].min()
        for r in range(20):
            for c in range(23):
                window = maps[k, max(0, r - d) : r + d + 1, max(0, c - d) : c + d + 1]
                inner = d <= r < 20 - d and d <= c < 23 - d
                want = inner and maps[k, r, c] == window.max() and maps[k, r, c] > low
                assert bool(got[k, r, c]) == want, (k, r, c)


def test_plan_cuts_max_and_per_class():
    cam = torch.full((2, 3, 8, 8), -1.0)  # raw CAM on an 8 x 8 grid (128 px input, stride 16)
    cam[0, 0, 1, 2] = 5.0  # image 0: class 0 peaks at grid (1, 2), class 2 at (5, 6), lower
    cam[0, 2, 5, 6] = 2.0
    cam[1, 1, 2, 2] = 4.0  # image 1: class 1 peaks at grid (2, 2)
    positive = torch.tensor([[True, False, True], [False, True, False]])
    cfg = create_config("oass", None, {"keypoint": "cmax"})
    cuts = plan_cuts(cam, positive, (128, 128), cfg)
    assert cuts.image.tolist() == [0, 0, 1]
    assert cuts.target.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    # bilinear (align_corners False) upsampling x16 puts each cell's peak at 16 i + 7.5 between
    # two equal pixels: the first maximal pixel is (16 i + 7, 16 j + 7)
    assert cuts.points.tolist() == [[23, 39], [87, 103], [39, 39]]
    cfg = create_config("oass", None, {"keypoint": "max"})
    cuts = plan_cuts(cam, positive, (128, 128), cfg)
    # max over the positive classes of the normalised CAMs: (5 - 1e-5) / (5 + 1e-5) wins
    assert cuts.image.tolist() == [0, 1] and cuts.points.tolist() == [[23, 39], [39, 39]]
    assert cuts.target.tolist() == positive.float().tolist()


# ---------------------------------------------------------------------------------------------
# Cut and stitch


def release_cut_and_stitch(images, image, points, crop, grid, stride, teacher):
    """The release's per-cut procedure with F.interpolate (nearest) and cat."""
    out = []
    for i, (r, c) in zip(image.tolist(), points.tolist(), strict=True):
        x = images[i]
        quads = [x[:, :r, :c], x[:, :r, c:], x[:, r:, :c], x[:, r:, c:]]
        pieces = torch.cat([F.interpolate(q[None], size=crop, mode="nearest") for q in quads])
        cams = teacher(pieces)
        a, b = max(1, r // stride), max(1, c // stride)
        h, w = grid
        sizes = [(a, b), (a, w - b), (h - a, b), (h - a, w - b)]
        parts = [
            F.interpolate(cams[k : k + 1], size=s, mode="nearest") for k, s in enumerate(sizes)
        ]
        top, bottom = torch.cat(parts[:2], dim=3), torch.cat(parts[2:], dim=3)
        out.append(torch.cat([top, bottom], dim=2)[0])
    return torch.stack(out)


def downsample(stride):
    return lambda x: F.interpolate(x, scale_factor=1 / stride, mode="nearest")


def test_cut_and_stitch_equal_the_release_procedure():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 5, 96, 128, generator=g)  # 5 "channels" so CAMs = images / 16
    image = torch.tensor([0, 2, 1, 1, 0])
    points = torch.tensor([[1, 1], [95, 127], [48, 64], [17, 100], [70, 9]])
    crop, grid, stride = (48, 64), (6, 8), 16
    want = release_cut_and_stitch(images, image, points, crop, grid, stride, downsample(stride))
    pieces = cut_crops(images, image, points, crop)
    assert pieces.shape == (20, 5, 48, 64)
    got = stitch(downsample(stride)(pieces), points, (96, 128), grid)
    assert torch.equal(got, want)


def test_identity_teacher_round_trip():
    # An "image" that is a CAM on an 8 x 8 grid, upsampled x16; the identity teacher takes every
    # 16th pixel of a crop (64 x 64 -> 4 x 4). Quadrants whose grid size divides 4 come back
    # exactly; a cut at the centre recovers the whole CAM.
    g = torch.Generator().manual_seed(1)
    cam = torch.randn(1, 3, 8, 8, generator=g)
    image = F.interpolate(cam, scale_factor=16, mode="nearest")
    for (a, b), exact in (
        ((4, 4), (slice(None), slice(None))),
        ((2, 1), (slice(0, 2), slice(0, 1))),
    ):
        points = torch.tensor([[16 * a, 16 * b]])
        pieces = cut_crops(image, torch.tensor([0]), points, (64, 64))
        back = stitch(downsample(16)(pieces), points, (128, 128), (8, 8))[0]
        assert torch.equal(back[:, exact[0], exact[1]], cam[0][:, exact[0], exact[1]])
    assert not torch.equal(back, cam[0])  # the 6- and 7-cell quadrants are not recovered


def test_training_step_by_the_release_procedure():
    # Features = input and an identity CAM head: CAM = x on a 16 x 16 grid (stride 1), so the
    # cuts, crops (8 x 8) and stitching can be followed with the release's procedure.
    torch.manual_seed(0)
    model = OassNet(Maps(), 3, 3)
    with torch.no_grad():
        model.cam_head.weight.copy_(torch.eye(3)[..., None, None])
    info = get_method("oass")
    observed = torch.tensor([[1, -1, 1], [-1, 1, -1]], dtype=torch.int8)
    method = info.create(
        2, 3, info.create_config(None, {"keypoint": "cmax"}), observed=ragged(observed)
    )
    method.bind_model(model)  # the teacher is a copy: its CAM of a crop is the crop
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    batch = {"input": x, "observed": observed, "row": torch.tensor([0, 1])}
    out = method.training_step(model, batch, epoch=1, step=0, autocast=contextlib.nullcontext)
    cuts = [(0, 0), (0, 2), (1, 1)]  # (image, class) of the positives
    points = []
    for i, v in cuts:
        r, c = divmod(int(x[i, v].argmax()), 16)
        points.append((8, 8) if r == 0 or c == 0 else (r, c))
    image = torch.tensor([i for i, _ in cuts])
    stitched = release_cut_and_stitch(
        x, image, torch.tensor(points), (8, 8), (16, 16), 1, lambda t: t
    ).double()
    sig = torch.sigmoid
    p_class = re = 0.0
    for k, (i, v) in enumerate(cuts):
        t = F.one_hot(torch.tensor(v), 3).double()
        z = stitched[k].mean((1, 2))
        p_class += -(t * sig(z).log() + (1 - t) * (1 - sig(z)).log()).mean() / 3
        re += (x[i].double() - stitched[k])[v].abs().sum() / (3 * 16 * 16) / 3
    assert float(out["p_class_loss"]) == pytest.approx(float(p_class), rel=1e-5)
    assert float(out["re_loss"]) == pytest.approx(float(re), rel=1e-5)
    assert float(out["alpha_re"]) == 3.0 and float(out["cuts"]) == 3  # no steps: no ramp
    total = out["class_loss"] + 0.5 * out["p_class_loss"] + 3.0 * out["re_loss"]
    assert float(out["loss"].detach()) == pytest.approx(float(total), rel=1e-6)
    out["loss"].backward()  # the teacher's R carries no gradient, the student's CAM does
    assert model.cam_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


# ---------------------------------------------------------------------------------------------
# Schedule, losses


def test_alpha_re_schedule_and_run_steps():
    cfg = create_config("oass")
    assert (cfg.alpha_re, cfg.alpha_schedule, cfg.alpha_p) == (3.0, 0.05, 0.5)
    # T = 100 steps: alpha_re grows over the first 5 steps, then stays at 3
    got = [alpha_re_at(s, 100, cfg) for s in range(8)]
    assert got == pytest.approx([0.0, 0.6, 1.2, 1.8, 2.4, 3.0, 3.0, 3.0])
    assert alpha_re_at(0, 0, cfg) == 3.0  # no steps: no ramp
    cfg = create_config("oass", None, {"epochs": "3", "batch_size": "16"})
    observed = ragged(torch.ones(170, 4, dtype=torch.int8))
    method = get_method("oass").create(170, 4, cfg, observed=observed, steps_per_epoch=10)
    assert method.total_steps == 3 * 10  # the run hands it its steps per epoch


def test_mlsml_by_hand_and_unknowns_as_negatives():
    info = get_method("oass")
    observed = torch.tensor([[1, 0, -1], [-1, 1, 0]], dtype=torch.int8)
    method = info.create(2, 3, info.create_config("voc2012"), observed=ragged(observed))
    z = torch.tensor([[math.log(3), 0.0, -math.log(3)], [-math.log(4), math.log(4), 0.0]])
    # p = (.75, .5, .25), (.2, .8, .5); positives (0,0), (1,1); all else negative
    terms = [-math.log(p) for p in (0.75, 0.5, 0.75, 0.8, 0.8, 0.5)]
    out = method(z, {"observed": observed, "row": torch.tensor([0, 1])}, epoch=1, step=0)
    assert float(out["loss"]) == pytest.approx(sum(terms) / 6, rel=1e-6)


def test_unknown_labels_get_a_notice(capsys):
    info = get_method("oass")
    full = torch.tensor([[1, -1], [-1, 1]], dtype=torch.int8)
    info.create(2, 2, info.create_config(), observed=ragged(full))
    assert "notice" not in capsys.readouterr().err
    info.create(
        2,
        2,
        info.create_config(),
        observed=ragged(torch.tensor([[1, 0], [0, 1]], dtype=torch.int8)),
    )
    assert "unknown labels count as negatives" in capsys.readouterr().err


def test_defaults_and_options():
    cfg = create_config("oass", "coco2014", {"keypoint": "cmax", "momentum": "1e-4"})
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.optimizer, cfg.schedule) == (
        0.1, 32, 15, "sgd", "poly",
    )  # fmt: skip
    assert (cfg.weight_decay, cfg.momentum, cfg.keypoint, cfg.teacher_decay) == (
        1e-4, 1e-4, "cmax", 0.99,
    )  # fmt: skip
    assert create_config("oass").momentum == 0.0 and create_config("oass").keypoint == "ctopk-w"
    with pytest.raises(WsmlError, match="keypoint must be one of max, cmax, ctopk, ctopk-w"):
        create_config("oass", None, {"keypoint": "topk"})
    info = get_method("oass")
    assert info.settings == ("e2e",) and info.create_model is not None
    assert info.run_defaults == {"backbone": "resnet50", "preset": "puzzle512"}


# ---------------------------------------------------------------------------------------------
# The network


class Maps(nn.Module):
    """A backbone whose feature map is its input."""

    pretrained_cfg = {"mean": (0.5,), "std": (0.5,)}

    def forward_features(self, x):
        return x


def naive_logits(model: OassNet, f: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The release's per-class form on the explicit (N, L*C, h, w) masked features."""
    cam = F.conv2d(f, model.cam_head.weight)
    m = F.relu(F.relu(cam) - 1e-5) / (F.relu(cam).amax((2, 3), keepdim=True) + 1e-5)
    masked = (f[:, None] * m[:, :, None]).flatten(1, 2)
    maps = F.conv2d(bn(masked), model.instance_head.weight, groups=model.num_classes)
    return maps.mean((2, 3))


def test_instance_logits_equal_per_class_batchnorm():
    torch.manual_seed(0)
    model = OassNet(Maps(), feature_dim=4, num_classes=3)
    with torch.no_grad():
        model.instance_bn.weight.uniform_(0.5, 1.5)
        model.instance_bn.bias.uniform_(-0.5, 0.5)
    ref = OassNet(Maps(), 4, 3)
    ref.load_state_dict(model.state_dict())
    f = torch.rand(5, 4, 6, 7).requires_grad_()
    g = f.detach().clone().requires_grad_()
    for _ in range(2):  # train mode: batch statistics, running statistics updated
        got, want = model(f), naive_logits(ref, g, ref.instance_bn)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # A square: under a plain sum the BN weight's true gradient is 0 (the normalised maps sum
    # to 0 over the batch), and the test would compare float noise of ~1e-6.
    (got.square() * torch.arange(3.0)).sum().backward()
    (want.square() * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(f.grad, g.grad, rtol=1e-4, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(model.instance_bn, name), getattr(ref.instance_bn, name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    model.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(f), naive_logits(ref, g, ref.instance_bn), rtol=1e-4, atol=1e-5
        )
    out = model(f, with_cam=True, crops=lambda cam: f[:2, :, :4, :4])
    assert out["cam"].shape == (5, 3, 6, 7) and out["crop_cam"].shape == (2, 3, 4, 4)


def test_param_groups_follow_puzzle_cam():
    model = OassNet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 4, 2)
    model.backbone.forward_features = model.backbone.forward
    cfg = create_config("oass")
    groups = {g["name"]: g for g in model.param_groups(cfg)}
    lrs = {n: (g["lr"], g["weight_decay"], len(g["params"])) for n, g in groups.items()}
    assert lrs == {
        "pretrained-weights": (pytest.approx(0.1), 1e-4, 2),  # conv, BN scale
        "pretrained-biases": (pytest.approx(0.2), 0.0, 2),  # conv bias, BN shift
        "new-weights": (pytest.approx(1.0), 1e-4, 3),  # cam head, instance BN, instance head
        "new-biases": (pytest.approx(2.0), 0.0, 1),  # instance BN shift
    }


# ---------------------------------------------------------------------------------------------
# The teacher


def bound_method(keypoint="cmax"):
    torch.manual_seed(0)
    model = OassNet(Maps(), 4, 3)
    info = get_method("oass")
    observed = torch.ones(8, 3, dtype=torch.int8)
    method = info.create(
        8, 3, info.create_config(None, {"keypoint": keypoint}), observed=ragged(observed)
    )
    method.bind_model(model)
    return model, method


def test_teacher_ema_sequence_by_hand():
    assert [teacher_decay(s, 0.99) for s in (0, 1, 2, 99, 500)] == pytest.approx(
        [0.0, 0.5, 2 / 3, 0.99, 0.99]
    )
    model, method = bound_method()
    w = model.cam_head.weight
    assert not method.teacher.cam_head.weight.requires_grad
    values = [w.detach().double().clone()]
    for step in range(3):
        with torch.no_grad():
            w.add_(step + 1.0)  # a fake optimiser step
        values.append(w.detach().double().clone())
        method.after_step()
    s1, s2, s3 = values[1:]
    # decay 0 after step 0 (teacher = s1), 1/2 after step 1, 2/3 after step 2
    t1 = s1
    t2 = 0.5 * t1 + 0.5 * s2
    t3 = 2 / 3 * t2 + 1 / 3 * s3
    torch.testing.assert_close(method.teacher.cam_head.weight.double(), t3)
    assert int(method.teacher_steps) == 3


def test_teacher_travels_in_the_method_state():
    model, method = bound_method()
    method.after_step()
    state = method.state_dict()
    assert "teacher.cam_head.weight" in state and "teacher.instance_bn.running_var" in state
    assert int(state["teacher_steps"]) == 1
    _, fresh = bound_method()
    with torch.no_grad():
        fresh.teacher.cam_head.weight.zero_()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.teacher.cam_head.weight, model.cam_head.weight)
    _, own = bound_method("max")  # the student is its own teacher
    assert own.teacher is None and not any(k.startswith("teacher.") for k in own.state_dict())


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
@pytest.mark.parametrize("keypoint", ["ctopk", "max"])
def test_e2e_oass(tmp_path_factory, tmp_path, keypoint):
    shards = get_shards(tmp_path_factory)
    config = RunConfig(
        str(shards), "oass", setting="e2e", regime="full", backbone="test_resnet",
        weights="none", image_size=64, loader="torch", out=str(tmp_path / "run"),
        method_options={"epochs": "1", "batch_size": "8", "lr": "0.01", "keypoint": keypoint,
                        "alpha_schedule": "0.5"},
    )  # fmt: skip
    with cpu_threads(1):
        summary = train(config)
    assert summary == read_summary(tmp_path / "run") and summary["finished"]
    (line,) = read_metrics(tmp_path / "run")
    logged = line["train"]
    assert logged["cuts"] >= 8 and logged["re_loss"] > 0 and logged["p_class_loss"] > 0
    # alpha_re over 20 steps with the ramp over 10: mean of min(3 s / 10, 3), s = 0..19
    assert logged["alpha_re"] == pytest.approx(sum(min(0.3 * s, 3.0) for s in range(20)) / 20)
    assert logged["loss"] > logged["class_loss"]
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert ckpt["model"]["instance_head.weight"].shape[0] == 10
    teacher = any(k.startswith("teacher.") for k in ckpt["method"])
    assert teacher == (keypoint != "max")
    if teacher:
        assert int(ckpt["method"]["teacher_steps"]) == 20
    assert ckpt["config"]["run"]["preset"] == "puzzle512"  # the method's run default
    result = evaluate_run(str(tmp_path / "run"), "test")
    assert result["mAP"] == pytest.approx(summary["test"]["mAP"], abs=1e-6)


@pytest.mark.slow
def test_ddp_two_ranks_student_second_forward(tmp_path_factory, tmp_path):
    """keypoint=max: the quadrants go through the student in the same DDP call as the images."""
    shards = get_shards(tmp_path_factory)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["cli.py", "train", "--shards", str(shards), "--method", "oass", "--setting", "e2e"]
    cmd += ["--regime", "full", "--backbone", "test_resnet", "--weights", "none"]
    cmd += ["--out", str(tmp_path / "ddp")]
    opts = {"epochs": 1, "batch_size": 8, "lr": 0.01, "keypoint": "max", "image_size": 64}
    cmd += [x for k, v in {**opts, "loader": "torch"}.items() for x in ("-o", f"{k}={v}")]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    (line,) = read_metrics(tmp_path / "ddp")
    assert line["step"] == 20 and line["train"]["cuts"] == 4  # 4 images per rank and step
    assert line["train"]["re_loss"] > 0 and read_summary(tmp_path / "ddp")["finished"]


def ragged(observed: torch.Tensor) -> LabelLists:
    """A dense (N, L) observed matrix in the ragged form methods are created with."""
    return LabelLists.from_dense(observed.numpy())
