"""GR-Loss and AEVLP: golden values of the official functions on fixed inputs, the schedules'
one-epoch offset, the per-dataset defaults, and AEVLP's pseudo-label quality logged per epoch
(linear and end to end, from the cache's crops) against counts made by hand.

How the golden values were made: the official functions were run in float64, in a scratch
folder outside this repository, on the inputs written here: GR-Loss's ``losses.GR_loss`` with
``models.KFunction``/``models.VFunction`` and the schedules of ``train.py`` (yan4xi1/GRLoss
5e13f7f), AEVLP's ``losses.GPR_loss`` with the same K, V and schedules and its
``utils.get_pseudo_labels`` (Fsoft-AIC/AEVLP c24bb3c / 5aff282), whose ``logits`` argument
stacks the whole images' cosines over each tile's, tile-major (B rows, then B per tile).
Only the inputs and the values are recorded; the official code is not part of wsml.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shards.base.errors import WsmlError
from shards.caches import read_crops, read_split, read_text
from shards.shardset import open_shard_set
from tests.support.train_fixtures import CLIP, FEAT, get_shards, read_metrics
from train.config import RunConfig
from train.methods import create_config, expected_positive_reg, get_method
from train.methods.aevlp import clip_similarities, damp_labels, gpr_terms
from train.methods.gr_loss import epoch_weights
from train.run import train

LOGITS = torch.tensor([[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 2.5], [-2.0, 0.3, 3.0, -0.7]])
OBSERVED = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.int8)
EPOCHS = (1, 2, 3, 5, 8)
# GR_loss over 8 epochs at EPOCHS, for (beta, linear_init)
GR_GOLDEN = {
    ("0,2,-2,-2", 0): (0.5269992376274822, 0.5237631937398869, 0.5190930232553191,
                       0.5024281124562356, 0.41363464921047105),
    ("0,2,-2,-2", 2): (0.5278216301029016, 0.5278216301029016, 0.5266314949680246,
                       0.5135299992159513, 0.41585666854931386),
    ("0,10,-2,-8", 0): (0.5269992376274822, 0.49265733311258225, 0.4662548115658565,
                        0.42129795783440493, 0.3351870018046346),
    ("0,10,-2,-8", 2): (0.5278216301029016, 0.5278216301029016, 0.5266314949680246,
                        0.45007283116754865, 0.3394554550212489),
}  # fmt: skip


def loss(name: str, logits, observed, epoch: int, dataset=None, **options) -> float:
    info = get_method(name)
    cfg = info.create_config(dataset, {k: str(v) for k, v in options.items()})
    method = info.create(len(logits), logits.shape[1], cfg)
    return float(method(logits, {"observed": observed, "row": torch.arange(len(logits))},
                        epoch=epoch, step=0)["loss"])  # fmt: skip


@pytest.mark.parametrize("beta, n", list(GR_GOLDEN))
def test_gr_loss_golden_values(beta, n):
    got = [loss("gr-loss", LOGITS, OBSERVED, e, beta=beta, linear_init=n) for e in EPOCHS]
    assert got == pytest.approx(GR_GOLDEN[beta, n], rel=1e-6, abs=1e-7)


def test_gr_schedules_lag_one_epoch_as_released():
    cfg = create_config("gr-loss", None, {"beta": "0,2,-2,-4", "linear_init": "2"})
    w = [epoch_weights(cfg, e) for e in (1, 2, 3, 4, 8)]
    # K's (w, b) stays at its start through epoch n + 1 = 3 and never reaches its end value
    assert [(x.w, x.b) for x in w[:3]] == [(0.0, -2.0)] * 3
    assert (w[3].w, w[3].b) == pytest.approx((2 / 6, -2 - 2 / 6))
    assert (w[4].w, w[4].b) == pytest.approx((2 * 5 / 6, -2 - 2 * 5 / 6))
    # V's (mu, sigma) moves from epoch n + 1 on and ends at its end value in epoch T
    assert [(x.mu, x.sigma) for x in w[:2]] == [(0.5, 2.0)] * 2
    assert (w[2].mu, w[2].sigma) == pytest.approx((0.5 + 0.3 / 6, 2 - 1.5 / 6))
    assert (w[4].mu, w[4].sigma) == pytest.approx((0.8, 0.5))


def test_gr_loss_observed_negatives_are_certain_negatives():
    observed = OBSERVED.clone()
    observed[0, 3] = -1  # p = sigmoid(-3)
    extra = -np.log(1 - 1 / (1 + np.exp(3.0)) + 1e-7)
    without = loss("gr-loss", LOGITS, OBSERVED, 1)
    # the unknown term of (0, 3) (p = .0474, K .119, V at mu .5375 sigma 1.8125) is replaced
    p = 1 / (1 + np.exp(3.0))
    k, v = 1 / (1 + np.exp(2.0)), np.exp(-0.5 * ((p - 0.5375) / 1.8125) ** 2)
    unknown = v * (k * (1 - p**0.01) / 0.01 + (1 - k) * p)
    assert loss("gr-loss", LOGITS, observed, 1) == pytest.approx(
        without + (extra - unknown) / 12, rel=1e-5
    )


# ---- AEVLP: GPR loss on given pseudo-labels --------------------------------------------------

LOGITS5 = torch.tensor(
    [[2.0, -1.0, 0.5, -3.0, 0.2], [0.0, 1.5, -0.5, 2.5, -1.2], [-2.0, 0.3, 3.0, -0.7, 1.1]]
)
OBSERVED5 = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.int8)
PSEUDO = torch.tensor([[0, 1, -1, 0, 1], [1, 0, 0, -1, -1], [0, 1, 1, 0, -1]], dtype=torch.int8)
# GPR_loss, COCO's config (8 epochs, expected_num_pos 2.9, num_classes 5), at epochs 1, 4, 8:
# the pseudo-labels as given, and with the -1 entries as 0 (what the release's DAMP gives)
GPR_GOLDEN = {
    1: (0.6313163076939221, 0.45395276194416745),
    4: (0.5946088455549634, 0.39723594014065694),
    8: (0.5620682761782598, 0.3402012284533512),
}


def gpr(pseudo, epoch: int, dataset: str = "coco") -> float:
    cfg = create_config("aevlp", dataset)
    p = torch.sigmoid(LOGITS5)
    terms = gpr_terms(p, {"observed": OBSERVED5}, pseudo, cfg, epoch)
    return float(terms.mean() + cfg.reg * expected_positive_reg(p, cfg.expected_positives))


@pytest.mark.parametrize("epoch", list(GPR_GOLDEN))
def test_gpr_loss_golden_values(epoch):
    paper, released = GPR_GOLDEN[epoch]
    assert gpr(PSEUDO, epoch) == pytest.approx(paper, rel=1e-6)
    assert gpr(PSEUDO.clamp(min=0), epoch) == pytest.approx(released, rel=1e-6)


def test_gpr_loss_golden_value_with_voc_defaults():
    # VOC's JSON: beta 0,2,-2,-2, lambda 0.7,0.4, reg 0.05, expected_num_pos 1.5; epoch 3
    assert gpr(PSEUDO, 3, "voc") == pytest.approx(0.6107520440400872, rel=1e-6)


# ---- DAMP from given global and tile scores ----------------------------------------------------

GLOBAL = torch.tensor(
    [[0.01, 0.24, 0.17, 0.09, 0.26, 0.29], [0.27, 0.34, 0.12, 0.01, 0.3, 0.05],
     [0.17, 0.33, 0.1, 0.32, 0.35, 0.37]]
)  # fmt: skip
TILES = torch.tensor(
    [
        [
            [0.23, 0.01, 0.13, 0.21, 0.05, 0.22],
            [0.26, 0.33, 0.37, 0.07, 0.26, 0.04],
            [0.26, 0.13, 0.19, 0.28, 0.14, 0.1],
            [0.18, 0.32, 0.08, 0.38, 0.0, 0.11],
        ],
        [
            [0.01, 0.03, 0.02, 0.23, 0.36, 0.06],
            [0.3, 0.22, 0.02, 0.32, 0.17, 0.28],
            [0.36, 0.34, 0.05, 0.03, 0.0, 0.13],
            [0.17, 0.26, 0.01, 0.3, 0.1, 0.23],
        ],
        [
            [0.3, 0.12, 0.38, 0.04, 0.05, 0.1],
            [0.4, 0.17, 0.02, 0.33, 0.27, 0.23],
            [0.32, 0.04, 0.04, 0.33, 0.11, 0.38],
            [0.04, 0.0, 0.33, 0.34, 0.33, 0.39],
        ],
    ]
)  # fmt: skip  (3 images, a 2 x 2 grid, 6 classes)
POSITIVE = torch.zeros(3, 6, dtype=torch.int8)
POSITIVE[0, 2] = POSITIVE[1, 0] = POSITIVE[2, 5] = 1
# (eta, threshold, top_k, negative_ratio): get_pseudo_labels' output, then the negative indices
# it computes (the int(ratio x 6) lowest of (global + mean over tiles) / 2), which it writes as 0
DAMP_GOLDEN = {
    (0.3, 0.5, 3, 0.3): ([[0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]],
                         [[1], [2], [3]]),
    (0.0, 0.2, 2, 0.5): ([[0, 0, 0, 1, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]],
                         [[1, 4, 0], [2, 5, 0], [3, 1, 4]]),
    (0.3, 0.05, 4, 0.0): ([[1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 1, 0], [1, 0, 1, 0, 1, 1]],
                          [[], [], []]),
}  # fmt: skip


@pytest.mark.parametrize("settings", list(DAMP_GOLDEN))
def test_damp_pseudo_labels_golden_values(settings):
    eta, threshold, top_k, ratio = settings
    positives, negatives = DAMP_GOLDEN[settings]
    opts = {"eta": eta, "threshold": threshold, "top_k": top_k, "negative_ratio": ratio,
            "grid": 2}  # fmt: skip
    released = create_config("aevlp", None, {**{k: str(v) for k, v in opts.items()},
                                              "released": "true"})  # fmt: skip
    assert damp_labels(GLOBAL, TILES, POSITIVE, released).tolist() == positives
    paper = torch.tensor(positives, dtype=torch.int8)
    for row, lowest in enumerate(negatives):
        paper[row, lowest] = -1
    cfg = create_config("aevlp", None, {k: str(v) for k, v in opts.items()})
    assert torch.equal(damp_labels(GLOBAL, TILES, POSITIVE, cfg), paper)


def test_damp_from_embeddings_is_damp_of_their_cosines():
    g = torch.Generator().manual_seed(0)
    image, tiles, text = (torch.randn(*s, generator=g) for s in ((5, 8), (5, 4, 8), (6, 8)))
    cos_g, cos_t = clip_similarities(3 * image, 2 * tiles, 5 * text)  # any scale: cosines
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(cos_g, unit(image) @ unit(text).T)
    torch.testing.assert_close(cos_t, torch.einsum("nkd,ld->nkl", unit(tiles), unit(text)))


def test_aevlp_defaults_per_dataset_family():
    coco, voc, nus, cub = (create_config("aevlp", d) for d in ("coco", "voc", "nus", "cub"))
    assert (coco.beta, coco.lam, coco.rho, coco.reg, coco.threshold) == (
        (0.0, 10.0, -2.0, -8.0), (0.7, 0.5), 0.9, 0.001, 0.5
    )  # fmt: skip
    assert (coco.eta, coco.grid, coco.top_k, coco.batch_size, coco.epochs) == (0.3, 4, 3, 16, 8)
    assert (coco.lr, coco.head_lr_mult, coco.stop_patience, coco.stop_drop) == (1e-5, 10, 2, 2)
    assert [c.expected_positives for c in (voc, coco, nus, cub)] == [1.5, 2.9, 1.9, 31.4]
    assert [c.eta for c in (voc, coco, nus, cub)] == [0.0, 0.3, 0.3, 0.005]  # the JSON configs
    assert (voc.beta, voc.lam, voc.reg, voc.batch_size) == ((0.0, 2.0, -2.0, -2.0), (0.7, 0.4),
                                                            0.05, 8)  # fmt: skip
    assert (cub.top_k, cub.grid, cub.q, cub.temperature, nus.threshold) == (
        32, 5, (0.01, 1.5), 0.1, 0.6
    )  # fmt: skip
    gr = create_config("gr-loss", "cub")  # one setting for every dataset
    assert (gr.beta, gr.alpha, gr.q, gr.epochs, gr.linear_init) == (
        (0.0, 2.0, -2.0, -2.0), (0.5, 2.0, 0.8, 0.5), (0.01, 1.0), 8, 0
    )  # fmt: skip
    with pytest.raises(WsmlError, match="lambda1 >= lambda2"):
        create_config("aevlp", "coco", {"lam": "0.3,0.5"})
    with pytest.raises(WsmlError, match="beta takes w0,wT,b0,bT"):
        create_config("gr-loss", None, {"beta": "0,2"})
    with pytest.raises(WsmlError, match="top_k 3 > 2 classes"):
        get_method("aevlp").create(4, 2, create_config("aevlp"), text_embeddings=torch.ones(2, 3))


# ---- AEVLP trained: pseudo-label precision and recall per epoch --------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


def expected_counts(shards, threshold: float) -> dict[str, float]:
    """The training split's pseudo-positives over a whole epoch, counted by hand."""
    ss = open_shard_set(shards)
    f32 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    image, tiles = f32(read_split(shards, CLIP, "train")), f32(read_crops(shards, CLIP))
    cfg = create_config("aevlp", "coco", {"grid": "2", "threshold": str(threshold)})
    observed = torch.from_numpy(ss.observed_labels("single-positive", "train"))
    pl = damp_labels(*clip_similarities(image, tiles, f32(read_text(shards, CLIP))), observed, cfg)
    truth, unknown = torch.from_numpy(ss.full_labels("train")) == 1, observed == 0
    made = unknown & (pl == 1)
    right = int((made & truth).sum())
    return {
        "changed": int(made.sum()),
        "right": right,
        "precision": 100 * right / int(made.sum()),
        "recall": 100 * right / int((unknown & truth).sum()),
    }


def aevlp_run(shards, out, **kw):
    opts = {"grid": "2", "threshold": "0.2", "epochs": "2", "batch_size": "16"}
    return train(RunConfig(str(shards), "aevlp", out=str(out), method_options=opts, **kw))


def assert_epoch_counts(run, want):
    for line in read_metrics(run):
        got = {k: line["train"][f"labels/pseudo_positive/{k}"] for k in want}
        assert got == pytest.approx(want), line["epoch"]


def test_aevlp_linear_logs_pseudo_label_precision_and_recall(shards, tmp_path):
    want = expected_counts(shards, 0.2)
    assert want["changed"] > 20 and 0 < want["recall"] < 100
    aevlp_run(shards, tmp_path / "run", features=FEAT, clip=CLIP)
    assert_epoch_counts(tmp_path / "run", want)
    # the report's label-state figure reads both
    from train.report.figures import LabelCurves
    from train.report.runs import read_runs
    from train.report.write import label_curves

    curves = label_curves({"aevlp": read_runs([tmp_path]).finished}, LabelCurves)
    (curve,) = [c for c in curves if c.label == "aevlp: pseudo_positive"]
    assert [list(c) for c in (curve.precision[0], curve.changed[0], curve.recall[0])] == [
        [1, 2]
    ] * 3
    got = (curve.precision[0][1], curve.changed[0][1], curve.recall[0][1])
    assert got == pytest.approx((want["precision"], want["changed"], want["recall"]))


@pytest.mark.slow
def test_aevlp_end_to_end_reads_the_crops_through_the_loader(shards, tmp_path):
    from train.context import cpu_threads

    e2e = dict(setting="e2e", backbone="test_resnet", weights="none", image_size=32)
    with cpu_threads(1):
        aevlp_run(shards, tmp_path / "run", clip=CLIP, loader="torch", **e2e)
    assert_epoch_counts(tmp_path / "run", expected_counts(shards, 0.2))


def test_aevlp_needs_crops_on_its_grid_before_any_work(shards, tmp_path):
    with pytest.raises(
        WsmlError, match=r"grid of 4 x 4 tiles; cache 'clip' holds grid2.*-o grid=2"
    ):
        train(RunConfig(str(shards), "aevlp", features=FEAT, clip=CLIP, out=str(tmp_path / "a")))
    with pytest.raises(WsmlError, match="no class-text embeddings"):
        train(RunConfig(str(shards), "aevlp", features=FEAT, out=str(tmp_path / "b")))
    with pytest.raises(WsmlError, match=r"no crops of split 'train'.*--crops grid4"):
        read_crops(shards, FEAT)
    assert not any(tmp_path.iterdir())


def test_paper_rows_match_runs_of_their_dataset_and_name_their_baseline():
    from train.report.papers import get_paper_number, read_papers

    cole = {
        "backbone": "resnet50",
        "resolution": 448,
        "val_split": "20% of official train, seed 1200",
    }
    row = {"regime": "single-positive", "setting": "e2e", "protocol_fields": cole}
    got = {
        (m, d): get_paper_number({**row, "method": m, "dataset": d, "classes": c})["mAP"]
        for m in ("gr-loss", "aevlp")
        for d, c in (("voc2007", 20), ("coco2014", 80), ("nuswide", 81), ("cub", 312))
    }
    assert [got["gr-loss", d] for d in ("voc2007", "coco2014", "nuswide", "cub")] == [
        89.83, 73.17, 49.08, 21.64,
    ]  # fmt: skip
    assert [got["aevlp", d] for d in ("voc2007", "coco2014", "nuswide", "cub")] == [
        90.46, 73.54, 50.70, 24.89,
    ]  # fmt: skip
    assert get_paper_number({**row, "method": "aevlp", "dataset": "coco", "classes": 10}) is None
    mine = [p for p in read_papers() if p["method"] in ("gr-loss", "aevlp", "mime", "smile")]
    assert len(mine) == 16 and all("baseline: Zhou's" in p["source"] for p in mine)
    boost = {p["family"]: p["mAP"] for p in read_papers() if p["method"] == "ll-r+boostlu"}
    assert boost == {"voc": 89.29, "coco": 72.89, "nus": 49.59, "cub": 19.80}


def test_a_clip_cache_of_its_own_is_an_input_of_the_leaderboard(shards, tmp_path):
    from train.report.runs import read_runs

    aevlp_run(shards, tmp_path / "a", features=FEAT, clip=CLIP)
    (run,) = read_runs([tmp_path]).finished
    assert run.key()["inputs"] == f"{FEAT} + {CLIP}"
