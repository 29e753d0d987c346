"""Label state against the truth (train/methods/audit.py): counts on hand-made batches, members
kept apart, and the clean labels never reaching the loss."""

from __future__ import annotations

import math

import pytest
import torch

from shards.lists import LabelLists
from tests.test_methods import CASES, STACKABLE, batch_of, build, make_data
from train.methods import get_method

# p = sigmoid(z): row 0 (0.75, 0.8, 0.25), row 1 (0.2, 0.8, 0.5)
Z = torch.tensor([[math.log(3), math.log(4), -math.log(3)], [-math.log(4), math.log(4), 0.0]])
SP = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.int8)
TRUTH = torch.tensor([[1, 1, -1], [-1, 1, -1]], dtype=torch.int8)


def create(name: str, **overrides):
    info = get_method(name)
    config = info.create_config("voc", {k: str(v) for k, v in overrides.items()})
    observed = LabelLists.from_dense(SP.numpy())  # methods are created with ragged labels
    return info.create(
        2, 3, config, observed=observed, text_embeddings=torch.eye(3), generator=None
    )


def step(method, epoch: int, truth=TRUTH, logits=Z) -> torch.Tensor:
    batch = {"row": torch.tensor([0, 1]), "observed": SP, "full": truth}
    batch["embedding"] = torch.tensor([[0.1, 1.0, 0.0], [1.0, 0.0, 0.1]])
    return method(logits.clone().requires_grad_(), batch, epoch=epoch, step=0)["loss"]


def set_pseudo(method, rows, classes, value: float) -> None:
    """EM+APL pseudo-labels ``value`` on every (row, class) of ``rows`` x ``classes``."""
    r = torch.tensor(list(rows)).repeat_interleave(len(classes))
    c = torch.tensor(list(classes)).repeat(len(rows))
    method.add_pseudo(r, c, torch.full((len(r),), value))


def counts(kind: str, changed: int, right: int, precision: float) -> dict:
    p = f"labels/{kind}/"
    return {p + "changed": changed, p + "right": right, p + "precision": pytest.approx(precision)}


def test_ll_rejections_counted_against_the_truth():
    # unknown losses -log(1 - p): (0,1) 1.61, (0,2) 0.29, (1,0) 0.22, (1,2) 0.69; epoch 3 with
    # Delta_rel 10 % rejects ceil(6 x 0.2) = 2: (0,1) truly positive, (1,2) truly negative.
    method = create("ll-r", delta_rel=10)
    method.train()
    step(method, 3)
    step(method, 3)
    assert method.read_label_counts() == counts("rejected", 4, 2, 50.0)
    nothing = method.read_label_counts()  # read resets
    assert nothing["labels/rejected/changed"] == 0
    assert math.isnan(nothing["labels/rejected/precision"])


def test_splc_apl_and_eval_mode():
    splc = create("splc", tau=0.7)
    splc.train()
    step(splc, 2)  # unknown p > 0.7: (0,1), truly positive
    assert splc.read_label_counts() == counts("corrected", 1, 1, 100.0)
    apl = create("em-apl")
    apl.train()
    apl.add_pseudo(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 0]), torch.tensor([0.3, 0.1, 0.2]))
    step(apl, 1)  # pseudo-negatives (0,2) and (1,0) are negatives, (0,1) is a positive
    assert apl.read_label_counts() == counts("pseudo_negative", 3, 2, 200 / 3)
    apl.eval()
    step(apl, 1)  # no training step: nothing counted
    assert apl.read_label_counts()["labels/pseudo_negative/changed"] == 0
    assert create("an").read_label_counts() == {}  # a method that changes no label


def watch(compute, seen: list):
    """``compute`` that records the keys of every batch it is given."""
    return lambda z, b, **kw: seen.append(set(b)) or compute(z, b, **kw)


@pytest.mark.parametrize(("name", "regime"), [c for c in CASES if not get_method(c[0]).needs_full])
def test_clean_labels_never_reach_the_loss(name, regime):
    """Loss and gradients are identical with the clean labels scrambled; ``compute`` never gets
    them."""
    seen = []
    results = []
    for seed in (0, 1):
        method, data = build(name, regime)
        method.train()
        method.compute = watch(method.compute, seen)
        batch = batch_of(data, [0, 3, 5, 7])
        g = torch.Generator().manual_seed(seed)
        batch["full"] = torch.randint(-1, 2, batch["full"].shape, generator=g).to(torch.int8)
        z = torch.randn(4, 5, generator=torch.Generator().manual_seed(9)).requires_grad_()
        out = method(z, batch, epoch=6, step=3)
        out["loss"].sum().backward()
        results.append((out["loss"].detach(), z.grad))
    assert all("full" not in keys for keys in seen)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "regime"), [c for c in STACKABLE if get_method(c[0]).method_class.label_changes]
)
def test_stacked_members_count_their_own(name, regime):
    """Stacked (``--sweep``): each member's counts are those of its own run."""
    from train.methods import stack_members

    solo = [build(name, regime)[0] for _ in range(2)]
    stacked = stack_members([build(name, regime)[0] for _ in range(2)])
    if name == "em-apl":  # some pseudo-negatives to count, other ones per member
        for i, m in enumerate(solo):
            set_pseudo(m, range(i, i + 6), (1, 2), 0.1)
            set_pseudo(stacked, range(i * 12 + i, i * 12 + i + 6), (1, 2), 0.1)
    data = make_data(regime)
    data["full"] = torch.where(data["full"] == 1, 1, -1).to(torch.int8)
    g = torch.Generator().manual_seed(3)
    rows = [0, 3, 5, 7]
    z = [torch.randn(4, 5, generator=g) * 3 for _ in range(2)]
    for m, zi in zip(solo, z, strict=True):
        m(zi, batch_of(data, rows), epoch=6, step=0)
    # the stacked method lays the batch out member-major itself (Method.stack_batch)
    stacked(torch.cat(z), batch_of(data, rows), epoch=6, step=0)
    alone = [m.read_label_counts() for m in solo]
    both = stacked.read_label_counts()
    assert sum(alone[0][k] for k in alone[0] if k.endswith("changed")) > 0
    for k, v in both.items():
        want = [alone[0][k], alone[1][k]]
        assert v == pytest.approx(want, nan_ok=True), k
