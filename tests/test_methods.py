"""The method registry: contract tests over every method and regime, exact loss values computed by
hand from METHODS.md's formulas, LL's schedule, APL's selection, ROLE's estimator, DDP sync."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.distributed import gather_cat
from shards.base.errors import WsmlError
from shards.base.registry import UnknownNameError
from shards.lists import LabelLists
from tests.support.methods import create_method
from train.methods import (
    METHODS,
    Method,
    create_config,
    dataset_family,
    get_method,
)
from train.methods.large_loss import modified_count
from train.methods.vlpl import pseudo_labels

ROWS, L, D = 12, 5, 8
EPS = 1e-5


def approx(x: float):
    """float32 losses against float64 hand computations."""
    return pytest.approx(x, rel=1e-5, abs=1e-7)


def nl(x: float) -> float:
    """Cole's neg_log."""
    return -math.log(x + EPS)


def H(p: float) -> float:
    return p * nl(p) + (1 - p) * nl(1 - p)


def make_data(regime: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training split of ROWS images: clean labels, the regime's observed labels, CLIP stuff."""
    g = torch.Generator().manual_seed(seed)
    full = (torch.rand(ROWS, L, generator=g) < 0.4).to(torch.int8)
    full[torch.arange(ROWS), torch.randint(0, L, (ROWS,), generator=g)] = 1
    if regime == "full":
        observed = torch.where(full == 1, 1, -1).to(torch.int8)
    elif regime == "single-positive":
        observed = torch.zeros_like(full)
        for r in range(ROWS):
            pos = full[r].nonzero().flatten()
            observed[r, pos[torch.randint(0, len(pos), (1,), generator=g)]] = 1
    else:
        keep = torch.rand(ROWS, L, generator=g) < 0.5
        observed = torch.where(keep, torch.where(full == 1, 1, -1), 0).to(torch.int8)
    return {
        "full": full,
        "observed": observed,
        "embedding": torch.randn(ROWS, D, generator=g),
        "text": torch.randn(L, D, generator=g),
        "crops": torch.randn(ROWS, 16, D, generator=g),  # a 4 x 4 grid of tiles (aevlp)
    }


def batch_of(data, rows) -> dict[str, torch.Tensor]:
    rows = torch.as_tensor(rows, dtype=torch.int64, device=data["full"].device)
    out = {k: data[k][rows] for k in ("full", "observed", "embedding", "crops")}
    out["row"] = rows
    return out


def build(name: str, regime: str, seed: int = 0, **overrides) -> tuple[Method, dict]:
    data = make_data(regime)
    info = get_method(name)
    config = info.create_config("voc2012", {k: str(v) for k, v in overrides.items()})
    method = info.create(
        ROWS,
        L,
        config,
        observed=LabelLists.from_dense(data["observed"].numpy()),
        text_embeddings=data["text"],
        generator=torch.Generator().manual_seed(seed),
    )
    return method, data


CASES = [(info.name, regime) for info in METHODS for regime in info.regimes]


def train_a_little(method: Method, data, epochs=(1, 2, 5, 6), device="cpu") -> None:
    """A few training steps per epoch with the hooks a loop calls (state gets non-trivial)."""
    g = torch.Generator().manual_seed(1)
    for epoch in epochs:
        method.start_epoch(epoch)
        for step, rows in enumerate(([0, 3, 5, 7], [1, 2, 4, 11], [6, 8, 9, 10])):
            logits = torch.randn(len(rows), L, generator=g).to(device).requires_grad_()
            extra = [p for group in method.extra_parameters() for p in group["params"]]
            out = method(logits, batch_of(data, rows), epoch=epoch, step=step)
            out["loss"].backward()
            method.after_backward()
            with torch.no_grad():
                for p in extra:
                    p -= 0.5 * p.grad
                    p.grad = None
        if method.wants_epoch_pass(epoch):
            probs = torch.rand(ROWS, L, generator=g).to(device)
            method.end_epoch(epoch, (torch.randperm(ROWS, generator=g).to(device), probs))


def state_of(method: Method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name,regime", CASES)
def test_contract_finite_loss_and_gradients(name, regime):
    method, data = build(name, regime)
    for epoch in (1, 3, 6):  # before and after schedules / warm-ups start
        if method.wants_epoch_pass(epoch - 1):
            method.end_epoch(epoch - 1, (torch.arange(ROWS), torch.rand(ROWS, L)))
        logits = (3 * torch.randn(6, L)).requires_grad_()
        out = method(logits, batch_of(data, [0, 2, 4, 6, 8, 10]), epoch=epoch, step=epoch)
        assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
        assert all(v.dim() == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
        out["loss"].backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        for group in method.extra_parameters():
            for p in group["params"]:
                assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                p.grad = None


@pytest.mark.parametrize("name,regime", CASES)
def test_contract_state_dict_round_trip(name, regime):
    method, data = build(name, regime)
    train_a_little(method, data)
    saved = state_of(method)
    fresh, _ = build(name, regime, seed=123)  # a different random init (ROLE)
    if get_method(name).per_sample_state:  # the state is not what a new method starts with
        assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in saved.items())
    fresh.load_state_dict(saved)
    assert_same_state(state_of(fresh), saved)
    logits = torch.randn(3, L)
    batch = batch_of(data, [1, 5, 9])
    method.eval(), fresh.eval()
    assert torch.equal(
        method(logits, batch, epoch=7, step=0)["loss"],
        fresh(logits, batch, epoch=7, step=0)["loss"],
    )


@pytest.mark.parametrize("name,regime", CASES)
def test_contract_eval_and_no_grad_leave_state_unchanged(name, regime):
    method, data = build(name, regime)
    train_a_little(method, data, epochs=(1, 5))
    before = state_of(method)
    logits = torch.randn(4, L, requires_grad=True)
    batch = batch_of(data, [0, 1, 2, 3])
    method.eval()
    method(logits, batch, epoch=6, step=0)["loss"].backward()
    method.train()
    with torch.no_grad():
        method(logits, batch, epoch=6, step=1)
    assert_same_state(state_of(method), before)


@pytest.mark.parametrize("name,regime", CASES)
def test_contract_sync_is_a_no_op_on_one_process(name, regime):
    method, data = build(name, regime)
    assert method.gather is gather_cat and not dist.is_initialized()
    logits = torch.randn(4, L, requires_grad=True)
    method(logits, batch_of(data, [0, 1, 2, 3]), epoch=3, step=0)["loss"].backward()
    grads = [p.grad.clone() for g in method.extra_parameters() for p in g["params"]]
    method.after_backward()
    after = [p.grad for g in method.extra_parameters() for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(grads, after, strict=True))


@pytest.mark.parametrize("name,regime", CASES)
def test_contract_non_finite_loss_names_method_and_step(name, regime):
    method, data = build(name, regime)
    logits = torch.randn(4, L)
    logits[1, 2] = float("nan")
    with pytest.raises(WsmlError, match=rf"{name}: non-finite loss.* at epoch 3, step 17"):
        method(logits, batch_of(data, [0, 1, 2, 3]), epoch=3, step=17)


STACKABLE = [  # what --sweep stacks: the linear setting's methods
    (n, r)
    for n, r in CASES
    if get_method(n).method_class.stackable and "linear" in get_method(n).settings
]


@pytest.mark.parametrize(("name", "regime"), STACKABLE)
def test_contract_stacked_members_equal_their_own_runs(name, regime):
    """``--sweep``'s stacking: two members (different logits) in one call give each member the
    loss of its own run, and each member's per-row state (APL's pseudo-labels, LL-Cp's
    corrections) follows its own run's."""
    from train.methods import stack_members

    solo = [build(name, regime)[0] for _ in range(2)]
    stacked = stack_members([build(name, regime)[0] for _ in range(2)])
    data = make_data(regime)
    g = torch.Generator().manual_seed(3)
    for epoch in (1, 2, 6):
        for m in (*solo, stacked):
            m.start_epoch(epoch)
        for step, rows in enumerate(([0, 3, 5, 7], [1, 2, 4, 11])):
            z = [torch.randn(4, L, generator=g) * 3 for _ in range(2)]
            alone = [
                m(zi, batch_of(data, rows), epoch=epoch, step=step)
                for m, zi in zip(solo, z, strict=True)
            ]
            # the stacked method lays the batch out member-major itself (Method.stack_batch)
            both = stacked(torch.cat(z), batch_of(data, rows), epoch=epoch, step=step)
            for k in alone[0]:
                want = torch.stack([alone[0][k], alone[1][k]]).float()
                got = both[k].float().expand(2) if both[k].dim() == 0 else both[k]
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=f"{k} {epoch}")
        if stacked.wants_epoch_pass(epoch):
            probs = [torch.rand(ROWS, L, generator=g) for _ in range(2)]
            ends = [
                m.end_epoch(epoch, (torch.arange(ROWS), p))
                for m, p in zip(solo, probs, strict=True)
            ]
            got = stacked.end_epoch(epoch, (torch.arange(2 * ROWS), torch.cat(probs)))
            for k, v in got.items():
                assert v == [ends[0][k], ends[1][k]], k
    for key, value in stacked.state_dict().items():
        if value.dim() and len(value) == 2 * ROWS:  # dense per-row state, member-major
            mine = value.view(2, ROWS, *value.shape[1:])
            for i in (0, 1):
                assert torch.equal(mine[i], solo[i].state_dict()[key]), key


@pytest.mark.parametrize(
    ("name", "full"), [("an", False), ("bce", True), ("em-apl", True), ("aevlp", True)]
)
def test_stacked_members_copy_only_what_their_loss_reads(name, full):
    """The stacked batch: every member's copy of the labels, rows offset per member; never the
    model's input, the CLIP tiles only for a method that reads them (AEVLP), and the clean
    labels only for a method that trains on them (BCE) or counts its label changes against them
    (EM+APL's pseudo-negatives)."""
    from train.methods import stack_members

    stacked = stack_members([build(name, "single-positive")[0] for _ in range(3)])
    data = make_data("single-positive")
    batch = {**batch_of(data, [4, 1]), "input": torch.ones(2, D)}
    out = stacked.stack_batch(batch)
    crops = {"crops"} if get_method(name).needs_crops else set()  # AEVLP's tiles
    assert set(out) == {"observed", "embedding", "row"} | ({"full"} if full else set()) | crops
    assert out["row"].tolist() == [4, 1, 4 + ROWS, 1 + ROWS, 4 + 2 * ROWS, 1 + 2 * ROWS]
    assert torch.equal(out["observed"], batch["observed"].repeat(3, 1))


@pytest.mark.gpu
@pytest.mark.parametrize("name", METHODS.names())
def test_runs_on_cuda(name):
    method, data = build(name, get_method(name).regimes[-1])
    method.cuda()
    data = {k: v.cuda() for k, v in data.items()}
    train_a_little(method, data, device="cuda")
    saved = state_of(method)
    method.eval()
    out = method(torch.randn(4, L, device="cuda"), batch_of(data, [0, 1, 2, 3]), epoch=7, step=0)
    assert out["loss"].is_cuda and torch.isfinite(out["loss"])
    assert_same_state(state_of(method), saved)


def test_gather_cat_is_identity_without_process_group():
    a, b = torch.arange(3), torch.ones(3, 2)
    out = gather_cat(a, b)
    assert out[0] is a and out[1] is b


# ---------------------------------------------------------------------------------------------
# Registry, configs, defaults


def test_registry_names_and_flags():
    assert set(METHODS.names()) == {
        "bce", "bce-ls", "an", "an-ls", "wan", "epr", "role", "iun", "iu", "pr",
        "em", "em-apl", "vlpl", "ll-r", "ll-ct", "ll-cp", "asl", "hill", "splc", "hspnet",
        "pu-mlc", "oass", "clip-zeroshot", "gr-loss", "aevlp",
    }  # fmt: skip
    own = {i.name for i in METHODS if i.create_model is not None}
    assert own == {"hspnet", "pu-mlc", "oass"}
    assert all(get_method(n).settings == ("e2e",) for n in own)
    assert get_method("bce").regimes == ("full",) and get_method("iu").regimes == ("partial",)
    assert get_method("vlpl").needs_clip and get_method("iun").needs_full
    assert [i.name for i in METHODS if i.needs_crops] == ["aevlp"] and get_method(
        "aevlp"
    ).needs_clip
    assert [i.name for i in METHODS if not i.trains] == ["clip-zeroshot"]
    assert [i.name for i in METHODS if i.needs_full] == ["bce", "bce-ls", "iun"]
    assert get_method("em-apl").epoch_pass and get_method("ll-cp").per_sample_state
    assert get_method("role").trainable_state and get_method("role").needs_observed
    assert not any(info.per_sample_state for info in METHODS if info.name in ("ll-r", "ll-ct"))
    with pytest.raises(UnknownNameError, match="Did you mean .*ll-ct"):
        get_method("ll-cr")


def test_defaults_per_dataset_family():
    assert dataset_family("voc2012") == "voc" and dataset_family("nuswide") == "nus"
    assert dataset_family("openimages-v3") == "openimages" and dataset_family("mine") == "default"
    em = create_config("em-apl", "cub")
    assert (em.lr, em.batch_size, em.alpha, em.beta, em.warmup_epoch) == (1e-4, 8, 0.01, 0.4, 3)
    assert (em.neg_proportion, em.epochs, em.stop_patience) == (0.9, 10, 1)
    assert create_config("em", "coco").alpha == 0.1 and create_config("em", "voc").alpha == 0.2
    assert [create_config("epr", d).expected_positives for d in ("voc", "coco", "nus", "cub")] == [
        1.5,
        2.9,
        1.9,
        31.4,
    ]
    assert [create_config(n).delta_rel for n in ("ll-r", "ll-ct", "ll-cp")] == [0.5, 0.2, 0.1]
    ll = create_config("ll-ct", "coco2014")
    assert (ll.lr, ll.batch_size, ll.head_lr_mult, ll.stop_drop) == (1e-5, 16, 10.0, 3.0)
    vl = create_config("vlpl", "cub")
    assert (vl.lr, vl.alpha, vl.beta_pos, vl.temperature, vl.threshold) == (
        1e-4,
        0.01,
        0.7,
        0.01,
        0.3,
    )
    asl = create_config("asl")
    assert (asl.gamma_neg, asl.gamma_pos, asl.clip, asl.schedule) == (4.0, 0.0, 0.05, "onecycle")
    assert create_config("splc").tau == 0.6 and create_config("hill").lamb == 1.5


def test_overrides_are_typed_and_unknown_options_fail():
    cfg = create_config("ll-cp", "voc", {"delta_rel": "0.3", "released": "true", "epochs": "4"})
    assert (cfg.delta_rel, cfg.released, cfg.epochs) == (0.3, True, 4)
    with pytest.raises(WsmlError, match=r"unknown option\(s\) alfa .* valid: .*alpha"):
        create_config("em", "voc", {"alfa": "0.1"})
    with pytest.raises(WsmlError, match="expects a number"):
        create_config("em", "voc", {"alpha": "big"})
    with pytest.raises(WsmlError, match="expects true/false"):
        create_config("iun", None, {"released": "maybe"})
    with pytest.raises(WsmlError, match="schedule must be one of"):
        create_config("an", None, {"schedule": "cosine"})


def test_create_checks_regime_and_inputs():
    with pytest.raises(WsmlError, match="does not train on 'single-positive'.*full"):
        create_method("bce", num_rows=ROWS, num_classes=L, regime="single-positive")
    with pytest.raises(WsmlError, match="observed labels"):
        create_method("role", num_rows=ROWS, num_classes=L, dataset="voc")
    with pytest.raises(WsmlError, match="class-text embeddings"):
        create_method("vlpl", num_rows=ROWS, num_classes=L)
    with pytest.raises(WsmlError, match="expected_positives=K"):
        create_method("epr", num_rows=ROWS, num_classes=L, dataset="openimages-v3")
    method = create_method("an", num_rows=ROWS, num_classes=L, regime="partial")
    with pytest.raises(WsmlError, match="logits"):
        method(torch.zeros(2, L + 1), {"observed": torch.zeros(2, L + 1)}, epoch=1, step=0)
    apl, data = build("em-apl", "single-positive")
    with pytest.raises(WsmlError, match="rows must index the training split"):
        apl(torch.zeros(1, L), {"row": torch.tensor([ROWS]), "observed": data["observed"][:1]},
            epoch=1, step=0)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Exact loss values. Logits chosen so that p = sigmoid(z) is a round number:
# row 0: z = (ln 3, 0, -ln 3) -> p = (0.75, 0.5, 0.25); row 1: z = (-ln 4, ln 4, 0) -> (0.2, 0.8, 0.5)

Z = torch.tensor([[math.log(3), 0.0, -math.log(3)], [-math.log(4), math.log(4), 0.0]])
SP = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.int8)  # one positive each
PARTIAL = torch.tensor([[1, 0, -1], [-1, 1, 0]], dtype=torch.int8)
FULL = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.int8)


def loss_of(name, observed=SP, logits=Z, epoch=1, method=None, **overrides):
    if method is None:
        info = get_method(name)
        config = info.create_config("voc", {k: str(v) for k, v in overrides.items()})
        method = info.create(
            2, 3, config, observed=ragged(observed), text_embeddings=torch.eye(3), generator=None
        )
    batch = {"row": torch.tensor([0, 1]), "observed": observed, "full": FULL}
    batch["embedding"] = torch.tensor([[0.1, 1.0, 0.0], [1.0, 0.0, 0.1]])
    return float(method(logits.clone(), batch, epoch=epoch, step=0)["loss"].detach())


def mean6(*terms):
    return sum(terms) / 6


def smooth(p, positive, c=0.1):
    return (1 - c) * nl(p) + c * nl(1 - p) if positive else (1 - c) * nl(1 - p) + c * nl(p)


def test_cole_losses_by_hand():
    assert loss_of("bce") == approx(mean6(nl(0.75), nl(0.5), nl(0.25), nl(0.8), nl(0.8), nl(0.5)))
    bce_ls = [
        smooth(0.75, 1),
        smooth(0.5, 0),
        smooth(0.25, 1),
        smooth(0.2, 0),
        smooth(0.8, 1),
        smooth(0.5, 0),
    ]
    assert loss_of("bce-ls") == approx(mean6(*bce_ls))
    an = [nl(0.75), nl(0.5), nl(0.75), nl(0.8), nl(0.8), nl(0.5)]
    assert loss_of("an") == approx(mean6(*an))
    assert loss_of("an", PARTIAL) == approx(mean6(*an))  # negatives are negatives
    an_ls = [
        smooth(0.75, 1),
        smooth(0.5, 0),
        smooth(0.25, 0),
        smooth(0.2, 0),
        smooth(0.8, 1),
        smooth(0.5, 0),
    ]
    assert loss_of("an-ls") == approx(mean6(*an_ls))
    # WAN: assumed negatives weighted 1 / (L - 1) = 1/2; observed negatives weight 1
    wan = mean6(nl(0.75), nl(0.5) / 2, nl(0.75) / 2, nl(0.8) / 2, nl(0.8), nl(0.5) / 2)
    assert loss_of("wan") == approx(wan)
    wan_partial = mean6(nl(0.75), nl(0.5) / 2, nl(0.75), nl(0.8), nl(0.8), nl(0.5) / 2)
    assert loss_of("wan", PARTIAL) == approx(wan_partial)
    # EPR: positives only; rows sum to 1.5 and 1.5 -> (1.5 - k)^2 / 3^2
    assert loss_of("epr", expected_positives=1.0) == approx(mean6(nl(0.75), nl(0.8)) + 0.25 / 9)
    assert loss_of("epr") == approx(mean6(nl(0.75), nl(0.8)))  # voc k = 1.5
    # IU: observed positives and negatives only
    assert loss_of("iu", PARTIAL) == approx(mean6(nl(0.75), nl(0.75), nl(0.8), nl(0.8)))
    # PR: row 0 positive p=.75 vs .5, .25 -> .75 + .5; row 1 positive p=.8 vs .2, .5 -> .4 + .7
    assert loss_of("pr") == approx((1.25 + 1.1) / 6)


def test_iun_paper_and_released():
    # observed positives (0,0), (1,1); true negatives (full == 0): (0,1), (1,0), (1,2)
    assert loss_of("iun") == approx(mean6(nl(0.75), nl(0.5), nl(0.8), nl(0.8), nl(0.5)))
    # Cole's release compares 0/1 labels with -1: no negative term at all
    assert loss_of("iun", released=True) == approx(mean6(nl(0.75), nl(0.8)))


def test_role_loss_by_hand():
    info = get_method("role")
    method = info.create(
        2, 3, info.create_config("voc", {"expected_positives": "1"}), observed=ragged(SP)
    )
    q = [[0.8, 0.5, 0.2], [0.5, 0.75, 0.25]]
    with torch.no_grad():
        method.estimator.copy_(torch.logit(torch.tensor(q)))
    p = [[0.75, 0.5, 0.25], [0.2, 0.8, 0.5]]
    total = 0.0
    for n in range(2):
        for j in range(3):
            pp, qq, pos = p[n][j], q[n][j], SP[n, j] == 1
            own = (nl(pp) + nl(qq)) if pos else 0.0
            cross = qq * nl(pp) + (1 - qq) * nl(1 - pp) + pp * nl(qq) + (1 - pp) * nl(1 - qq)
            total += 0.5 * own + 0.5 * cross
    # p rows sum to 1.5, 1.5; q rows to 1.5, 1.5 -> 1/2 ((1.5-1)^2/9 + (1.5-1)^2/9)
    assert loss_of(None, method=method) == pytest.approx(total / 6 + 0.25 / 9, rel=1e-6)


def test_role_estimator_init_and_lr_group():
    observed = torch.tensor([[1, 0, -1, 0]] * 50, dtype=torch.int8)
    info = get_method("role")
    cfg = info.create_config("coco")
    a = info.create(
        50, 4, cfg, observed=ragged(observed), generator=torch.Generator().manual_seed(3)
    )
    b = info.create(
        50, 4, cfg, observed=ragged(observed), generator=torch.Generator().manual_seed(3)
    )
    est = a.estimator.detach()
    assert torch.equal(est, b.estimator.detach())  # seeded
    assert torch.allclose(est[:, 0], torch.tensor(math.log(0.995 / 0.005)))  # 5.2933
    assert torch.allclose(est[:, 2], torch.tensor(-5.293305))
    unknown = est[:, [1, 3]]
    assert unknown.abs().max() < math.log(1.5) and unknown.std() > 0.1  # U(-ln 1.5, ln 1.5)
    assert 1 / (1 + math.exp(-math.log(1.5))) == approx(0.6)  # logit(0.6) = ln 1.5
    (group,) = a.extra_parameters()
    assert group["params"] == [a.estimator] and group["lr_mult"] == 10.0
    assert group["lr"] == approx(10 * cfg.lr) and group["weight_decay"] == 0.0


def test_em_and_apl_by_hand():
    em = mean6(nl(0.75), -0.2 * H(0.5), -0.2 * H(0.25), -0.2 * H(0.2), nl(0.8), -0.2 * H(0.5))
    assert loss_of("em") == approx(em)  # voc alpha 0.2
    info = get_method("em-apl")
    method = info.create(2, 3, info.create_config("voc"), observed=ragged(SP))
    method.add_pseudo(
        torch.tensor([0]), torch.tensor([2]), torch.tensor([0.1])
    )  # a soft pseudo-negative with target 0.1, beta 0.02 (voc)
    apl = mean6(
        nl(0.75), -0.2 * H(0.5), 0.02 * (0.1 * nl(0.25) + 0.9 * nl(0.75)),
        -0.2 * H(0.2), nl(0.8), -0.2 * H(0.5),
    )  # fmt: skip
    assert loss_of(None, method=method) == approx(apl)


def test_vlpl_pseudo_labels_and_loss_by_hand():
    emb = torch.tensor([[0.1, 1.0, 0.0], [1.0, 0.0, 0.1]])
    # cos to class texts e1, e2, e3; softmax(cos / 0.01) puts ~1 on the most similar class
    assert pseudo_labels(emb, torch.eye(3), 0.01, 0.3, 0.0).tolist() == [[0, 1, 0], [1, 0, 0]]
    # the int(0.34 * 3) = 1 least similar class of each row becomes -1
    assert pseudo_labels(emb, torch.eye(3), 0.01, 0.3, 0.34).tolist() == [[0, 1, -1], [1, -1, 0]]
    # row 0: (0,1) pseudo-positive; row 1: (1,0) pseudo-positive; the rest EM with alpha 0.2
    pp = lambda p: 0.7 * (0.9 * nl(p) + 0.1 * nl(1 - p))  # noqa: E731
    want = mean6(nl(0.75), pp(0.5), -0.2 * H(0.25), pp(0.2), nl(0.8), -0.2 * H(0.5))
    assert loss_of("vlpl") == approx(want)
    # warm-up epochs are plain EM
    em = mean6(nl(0.75), -0.2 * H(0.5), -0.2 * H(0.25), -0.2 * H(0.2), nl(0.8), -0.2 * H(0.5))
    assert loss_of("vlpl", warmup_epoch=1, epoch=1) == approx(em)
    # negatives: (0,2) gets beta_neg (0.1 nl(p) + 0.9 nl(1-p)); (1,1) is observed, untouched
    neg = 0.5 * (0.1 * nl(0.25) + 0.9 * nl(0.75))
    want = mean6(nl(0.75), pp(0.5), neg, pp(0.2), nl(0.8), -0.2 * H(0.5))
    assert loss_of("vlpl", negative_fraction=0.34, beta_neg=0.5) == approx(want)
    released = mean6(nl(0.75), pp(0.5), 0.0, pp(0.2), nl(0.8), -0.2 * H(0.5))
    assert loss_of("vlpl", negative_fraction=0.34) == approx(released)


def test_vlpl_em_pl_asl_by_hand():
    """The release's EM_PL_ASL (gamma+ 2, gamma- 4, gamma_unknown 4): no alpha, no beta."""
    unknown = lambda p: -((1 - p) ** 4) * H(p)  # noqa: E731
    focus = lambda p: (1 - p) ** 2 * nl(p)  # noqa: E731
    want = mean6(focus(0.75), focus(0.5), unknown(0.25), focus(0.2), focus(0.8), unknown(0.5))
    assert loss_of("vlpl", loss="em_pl_asl") == approx(want)
    # (0, 2) a pseudo-negative: p^4 (-log(1 - p))
    want = mean6(focus(0.75), focus(0.5), 0.25**4 * nl(0.75), focus(0.2), focus(0.8), unknown(0.5))
    assert loss_of("vlpl", loss="em_pl_asl", negative_fraction=0.34) == approx(want)
    with pytest.raises(WsmlError, match="loss must be one of em_pl, em_pl_asl"):
        create_config("vlpl", None, {"loss": "asl"})


def test_asl_hill_splc_by_hand():
    # ASL (gamma+ 0, gamma- 4, clip .05): p_m = min(1 - p + .05, 1) on negatives, summed
    asl = math.log(0.75) + math.log(0.8) + 2 * math.log(0.55) * 0.45**4
    asl += math.log(0.8) * 0.2**4 + math.log(0.85) * 0.15**4
    assert loss_of("asl") == pytest.approx(-asl, rel=1e-6)
    # Hill (lambda 1.5, margin 1, gamma 2): positives focal with margin, negatives (1.5 - p) p^2
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    hill_pos = sum(
        -((1 - sig(z - 1)) ** 2) * math.log(sig(z - 1)) for z in (math.log(3), math.log(4))
    )
    hill_neg = 1.0 * 0.25 + 1.25 * 0.0625 + 1.3 * 0.04 + 1.0 * 0.25
    assert loss_of("hill") == pytest.approx(hill_pos + hill_neg, rel=1e-6)
    assert loss_of("hill", reduction="mean") == pytest.approx((hill_pos + hill_neg) / 6, rel=1e-6)
    # SPLC (tau .6, margin 1, gamma 2); (1,2) has p = .8 > .6: a negative in epoch 1 (before
    # change_epoch has passed), a positive (no margin) from epoch 2 on
    z = Z.clone()
    z[1, 2] = math.log(4)
    neg = lambda p: -(p**2) * math.log(1 - p)  # noqa: E731
    common = hill_pos + neg(0.5) + neg(0.25) + neg(0.2)
    assert loss_of("splc", logits=z, epoch=1) == pytest.approx(common + neg(0.8), rel=1e-6)
    pos = -((1 - 0.8) ** 2) * math.log(0.8)
    assert loss_of("splc", logits=z, epoch=2) == pytest.approx(common + pos, rel=1e-6)


def test_asl_focal_weights_carry_no_gradient_unless_asked():
    info = get_method("asl")
    grads = []
    for focal_grad in ("false", "true"):
        method = info.create(2, 3, info.create_config(None, {"focal_grad": focal_grad}))
        z = Z.clone().requires_grad_()
        method(z, {"row": torch.tensor([0, 1]), "observed": SP}, epoch=1, step=0)["loss"].backward()
        grads.append(z.grad[0, 1].item())
    # d/dz of -log(p_m) * w with w fixed, p_m = 1 - p + .05: p (1 - p) / p_m * w
    assert grads[0] == pytest.approx(0.5 * 0.5 / 0.55 * 0.45**4, rel=1e-5)
    assert grads[1] != pytest.approx(grads[0], rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Large Loss Matters: schedule, selection, permanent corrections

ZLL = torch.tensor([[math.log(3), 0.0, -math.log(3)], [-math.log(4), math.log(4), -math.log(1.5)]])
# unknown losses -log(1 - p): (0,1) ln 2 = .693 > (1,2) -ln .6 = .511 > (0,2) .288 > (1,0) .223


def test_ll_schedule():
    # Delta_rel 0.2 % of N*L = 500 entries: epoch t modifies ceil(500 * (t-1) * 0.002)
    assert [modified_count("reject", t, 500, 0.2) for t in range(1, 7)] == [0, 1, 2, 3, 4, 5]
    assert [modified_count("permanent", t, 500, 0.2) for t in range(1, 7)] == [0, 1, 1, 1, 1, 1]
    # the release accumulates clean_rate in floating point: 1 - (1 - 0.002) > 0.002, ceil -> 2
    assert [modified_count("reject", t, 500, 0.2, True) for t in range(1, 4)] == [0, 2, 3]
    assert modified_count("reject", 500, 10, 1.0) == 10  # capped at N*L


def test_ll_reject_and_correct_by_hand():
    b = [
        -math.log(0.75),
        -math.log(0.5),
        -math.log(0.75),
        -math.log(0.8),
        -math.log(0.8),
        -math.log(0.6),
    ]
    # Delta_rel 10 %: epoch 2 -> ceil(0.6) = 1 entry, epoch 3 -> ceil(1.2) = 2 entries
    assert loss_of("ll-r", logits=ZLL, epoch=1, delta_rel=10) == approx(sum(b) / 6)
    rejected = [b[0], 0.0, b[2], b[3], b[4], 0.0]  # (0,1) and (1,2)
    assert loss_of("ll-r", logits=ZLL, epoch=3, delta_rel=10) == approx(sum(rejected) / 6)
    corrected = [b[0], math.log(2), b[2], b[3], b[4], -math.log(0.4)]  # C = -log p
    assert loss_of("ll-ct", logits=ZLL, epoch=3, delta_rel=10) == approx(sum(corrected) / 6)
    one = [b[0], 0.0, b[2], b[3], b[4], b[5]]
    assert loss_of("ll-r", logits=ZLL, epoch=2, delta_rel=10) == approx(sum(one) / 6)


def test_ll_cp_permanent_corrections():
    info = get_method("ll-cp")
    method = info.create(10, 3, info.create_config("voc", {"delta_rel": "10"}))
    batch = {"row": torch.tensor([4, 7]), "observed": SP}
    b = [
        -math.log(0.75),
        -math.log(0.5),
        -math.log(0.75),
        -math.log(0.8),
        -math.log(0.8),
        -math.log(0.6),
    ]
    out = method(ZLL.clone().requires_grad_(), batch, epoch=2, step=0)  # k = 1: (0,1)
    assert float(out["loss"].detach()) == approx((sum(b) - b[1] + math.log(2)) / 6)
    assert [t.tolist() for t in method.corrected_entries()] == [[4], [1]]
    # epoch 3: (4, 1) is now an observed positive (loss -log p = ln 2, never selected);
    # k stays 1 (constant Delta_rel): the largest unknown left, (7, 2), is corrected
    out = method(ZLL.clone().requires_grad_(), batch, epoch=3, step=1)
    assert float(out["loss"].detach()) == approx(
        (sum(b) - b[1] + math.log(2) - b[5] - math.log(0.4)) / 6
    )
    assert [t.tolist() for t in method.corrected_entries()] == [[4, 7], [1, 2]]
    assert method.corrected_mask(torch.tensor([7, 4, 0])).tolist() == [
        [False, False, True],
        [False, True, False],
        [False, False, False],
    ]


def test_ll_paper_vs_released_selection_when_losses_vanish():
    # unknowns at z = -200 have loss exactly 0; k = ceil(4 * 0.5) = 2 in epoch 2
    z = torch.tensor([[5.0, 0.0, -200.0, -200.0]])
    observed = torch.tensor([[1, 0, 0, 0]], dtype=torch.int8)
    for released, expected in ((False, math.log1p(math.exp(-5)) / 4), (True, 0.0)):
        info = get_method("ll-r")
        cfg = info.create_config(None, {"delta_rel": "50", "released": str(released)})
        method = info.create(1, 4, cfg)
        out = method(z, {"row": torch.tensor([0]), "observed": observed}, epoch=2, step=0)
        # paper: two unknowns rejected, the observed positive kept; release: lambda = 0, so
        # every entry (the observed positive too) has U >= lambda and is rejected
        assert float(out["loss"]) == pytest.approx(expected, abs=1e-9)
        assert float(out["modified"]) == (4 if released else 2)


def test_ll_cp_state_follows_gathered_updates():
    method, data = build("ll-cp", "single-positive", delta_rel=20)
    other_rank = torch.tensor([11 * L + 3])  # a correction another rank made in the same step
    method.gather = lambda t: (torch.cat([t, other_rank]),)
    logits = torch.randn(4, L, requires_grad=True)
    method(logits, batch_of(data, [0, 1, 2, 3]), epoch=2, step=0)
    rows, classes = method.corrected_entries()
    assert (11, 3) in set(zip(rows.tolist(), classes.tolist(), strict=True))
    assert len(rows) == 1 + math.ceil(4 * L * 0.2)


# ---------------------------------------------------------------------------------------------
# EM + APL selection


def test_apl_selection_counts_and_order():
    rows = 20
    observed = torch.zeros(rows, 2, dtype=torch.int8)
    observed[0, 0] = 1  # class 0: 19 unknowns
    observed[:5, 1] = 1  # class 1: 15 unknowns
    info = get_method("em-apl")
    method = info.create(
        rows, 2, info.create_config("voc"), observed=ragged(observed)
    )  # 10 epochs, warm-up 5
    assert method.unlabel_num == [19, 15]
    # per round: int(0.9 * 19 / 5) = int(3.42) = 3 and int(0.9 * 15 / 5) = int(2.7) = 2
    assert [method.round_size(c) for c in (0, 1)] == [3, 2]
    assert [method.wants_epoch_pass(e) for e in range(1, 11)] == [False] * 4 + [True] * 5 + [False]
    probs = torch.stack([torch.arange(rows) / 100, (20 - torch.arange(rows)) / 100], 1)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
    # a padded DDP pass repeats row 1 with another probability: the first occurrence counts
    seen_rows = torch.cat([order, torch.tensor([1])])
    seen = torch.cat([probs[order], torch.tensor([[0.99, 0.99]])])
    assert method.end_epoch(4, (seen_rows, seen)) == {}  # warm-up: nothing
    assert method.end_epoch(5, (seen_rows, seen)) == {"pseudo_negatives_added": 5.0}
    pseudo = lambda: method.pseudo_rows(torch.arange(rows))  # noqa: E731
    labelled = lambda c: (pseudo()[:, c] >= 0).nonzero().flatten().tolist()  # noqa: E731
    assert labelled(0) == [1, 2, 3] and labelled(1) == [18, 19]  # lowest p, positives excluded
    assert pseudo()[2, 0].item() == approx(0.02)  # the target is the probability
    assert pseudo()[19, 1].item() == approx(0.01)
    method.end_epoch(6, (seen_rows, seen))  # already labelled entries are never re-selected
    assert labelled(0) == [1, 2, 3, 4, 5, 6] and labelled(1) == [16, 17, 18, 19]
    with pytest.raises(WsmlError, match="needs predictions"):
        method.end_epoch(7)


# ---------------------------------------------------------------------------------------------
# Two gloo processes: state and estimator gradients agree across ranks


def _ddp_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        parts = gather_cat(torch.arange(rank + 1), torch.full((rank + 1, 2), float(rank)))
        assert parts[0].tolist() == [0, 0, 1] and parts[1][:, 0].tolist() == [0.0, 1.0, 1.0]
        method, data = build("ll-cp", "single-positive", delta_rel=20)
        logits = torch.randn(4, L, generator=torch.Generator().manual_seed(rank))
        method(
            logits.requires_grad_(),
            batch_of(data, [rank * 4 + i for i in range(4)]),
            epoch=2,
            step=0,
        )
        (both,) = gather_cat(method.corrected)
        assert torch.equal(both[: len(method.corrected)], both[len(method.corrected) :])
        assert len(method.corrected) == 2 * math.ceil(4 * L * 0.2)
        role, data = build("role", "single-positive")
        logits = torch.randn(3, L, generator=torch.Generator().manual_seed(rank))
        role(logits, batch_of(data, [rank, 5, 10 + rank]), epoch=1, step=0)["loss"].backward()
        local = role.estimator.grad.clone()
        role.after_backward()
        total = local.clone()
        dist.all_reduce(total)
        assert torch.allclose(role.estimator.grad, total / world, atol=1e-7)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_keep_state_consistent(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two workers on a small machine
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def ragged(observed: torch.Tensor) -> LabelLists:
    """A dense (N, L) observed matrix in the ragged form methods are created with."""
    return LabelLists.from_dense(observed.numpy())
