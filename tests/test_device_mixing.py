"""Device mixing caught on the CPU (issue 23): every registered method runs its creation, a few
steps, its epoch-end hooks and (where it stacks) ``--sweep``'s stacking on the stand-in device
(``pipelines/stand_in.py``: ``meta`` that computes, and fails on any op mixing devices as CUDA
does). A method added later is covered without writing a test."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile

import pytest
import torch

from pipelines.stand_in import STAND_IN, StandInTensor, stand_in
from tests.test_methods import ROWS, L, batch_of, build, train_a_little
from train.methods import METHODS, get_method, stack_members


def on_device(data: dict) -> dict:
    return {k: v.to(STAND_IN) for k, v in data.items()}


def assert_on_device(method) -> None:
    for key, value in method.state_dict().items():
        assert isinstance(value, StandInTensor), f"{key} is on {value.device}"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_keeps_its_state_on_the_device(name):
    regime = get_method(name).regimes[-1]
    with stand_in():
        method, data = build(name, regime)  # made on the CPU, then moved, as a run does
        method.to(STAND_IN)
        data = on_device(data)
        train_a_little(method, data, device=STAND_IN)
        method.flush_checks()
        method.read_label_counts()
        method.eval()
        logits = torch.randn(4, L).to(STAND_IN)
        out = method(logits, batch_of(data, [0, 1, 2, 3]), epoch=7, step=0)
        assert isinstance(out["loss"], StandInTensor) and bool(torch.isfinite(out["loss"]))
        assert_on_device(method)


STACKABLE = [name for name in METHODS.names() if get_method(name).method_class.stackable]


@pytest.mark.parametrize("name", STACKABLE)
def test_stacked_members_keep_their_state_on_the_device(name):
    """--sweep's path: each member made and moved as create_group does, then stacked
    (stack_state), trained a step per epoch and through its epoch-end hooks."""
    regime = get_method(name).regimes[-1]
    with stand_in():
        stacked = stack_members([build(name, regime)[0].to(STAND_IN) for _ in range(2)])
        data = on_device(build(name, regime)[1])
        g = torch.Generator().manual_seed(3)
        for epoch in (1, 5, 6):
            stacked.start_epoch(epoch)
            logits = (3 * torch.randn(8, L, generator=g)).to(STAND_IN).requires_grad_()
            out = stacked(logits, batch_of(data, [0, 3, 5, 7]), epoch=epoch, step=0)
            out["loss"].sum().backward()
            stacked.after_backward()
            stacked.after_step()
            if stacked.wants_epoch_pass(epoch):
                rows = torch.arange(2 * ROWS).to(STAND_IN)
                stacked.end_epoch(epoch, (rows, torch.rand(2 * ROWS, L, generator=g).to(STAND_IN)))
        stacked.flush_checks()
        stacked.read_label_counts()
        assert_on_device(stacked)


# A step's host syncs that are known and accepted (label-state commits that pick entries).
KNOWN_SYNCS = {"ll-cp": {"nonzero.default": 1, "_unique2.default": 1}, "pr": {"nonzero.default": 1}}


@pytest.mark.parametrize("name", METHODS.names())
def test_a_training_step_makes_no_host_sync(name):
    """On a GPU a host sync stalls the queue every step; em-apl's pseudo-label lookup made one
    (the count of its entries) before issue 23."""
    regime = get_method(name).regimes[-1]
    with stand_in() as check:
        method, data = build(name, regime)
        method.to(STAND_IN)
        data = on_device(data)
        train_a_little(method, data, device=STAND_IN)
        batch = batch_of(data, [0, 1, 2, 3])
        logits = torch.randn(4, L).to(STAND_IN).requires_grad_()
        check.reset()
        method(logits, batch, epoch=7, step=3)["loss"].backward()
        method.after_backward()
        method.after_step()
        assert dict(check.syncs) == KNOWN_SYNCS.get(name, {})
        assert not check.blocking


# ------------------------------------------------------------ the sweep and the data paths


def test_the_sweep_bench_runs_em_apl_on_the_device():
    """``bench train --method em-apl --ways sweep`` on the stand-in: group creation (members
    made, moved, stacked), an epoch of steps and the scoring; before issue 23 it failed in
    em-apl's stack_state ("found cpu and meta")."""
    from bench.train import LinearBenchOptions, run_linear_bench

    rows = {"train": 64, "val": 16, "test": 16}
    opts = LinearBenchOptions(
        methods=("em-apl",), rows=rows, dim=8, classes=5, ways=("sweep",), device="meta"
    )
    with stand_in():
        out = run_linear_bench(opts, echo=lambda line: None)
    r = out["methods"]["em-apl"]
    assert {"sweep_train", "sweep_eval", "sweep_total", "peak_rss_gb"} <= set(r)


def test_linear_training_syncs_per_epoch_not_per_step():
    """A sweep epoch of 12 steps (two groups) makes each group's two end-of-epoch reads
    (finiteness checks, logged means) and no blocking copy: the batches' features, labels and
    rows go over without the host waiting."""
    from bench.papers import synthetic_split
    from bench.train import synthetic_plan
    from train.context import Context
    from train.data import FeatureData
    from train.loop import train_runs
    from train.runfolder import RunFolder
    from train.sweep import create_groups

    g = torch.Generator().manual_seed(0)
    splits = {s: synthetic_split(n, 8, 5, g) for s, n in (("train", 64), ("val", 8), ("test", 8))}
    with stand_in() as check:
        ctx = Context.create("meta")
        data = FeatureData(splits, ctx, seed=0, batch_size=8)
        plan = synthetic_plan("em-apl", data, 5)
        config = dataclasses.replace(plan.config, sweep=True, sweep_lrs=(1e-2, 1e-3))
        plan = dataclasses.replace(plan, config=config)
        groups = create_groups(plan, data, RunFolder(tmp := tempfile.mkdtemp()), ctx)
        check.reset()
        train_runs(groups, ctx, 1)
    shutil.rmtree(tmp)
    assert dict(check.syncs) == {"copy to the CPU": 2 * len(groups)}, check.sites
    assert not check.blocking, check.sites


def test_the_loader_join_stays_on_the_host_side(tmp_path_factory):
    """The e2e loader's per-batch join: rows checked on the CPU, labels made dense on the
    device from one non-blocking copy, rows never brought back (issue 23, item 5); a row
    outside the split fails there, before any device op (item 4)."""
    from pipelines.labels import read_row_table
    from shards.base.errors import WsmlError
    from shards.shardset import open_shard_set
    from tests.support.pipelines_data import REGIME, TAG, get_shard_set

    ss = open_shard_set(get_shard_set(tmp_path_factory))
    with stand_in() as check:
        table = read_row_table(ss, "train", REGIME, STAND_IN, embeddings=TAG)
        want = read_row_table(ss, "train", REGIME, torch.device("cpu"), embeddings=TAG)
        rows = torch.tensor([3, 0, 48, 7])
        check.reset()
        batch = table.join(rows)
        assert not check.syncs and not check.blocking, check.sites
        for key, value in want.join(rows).items():
            assert isinstance(batch[key], StandInTensor), key
            assert torch.equal(batch[key].cpu(), value), key
        with pytest.raises(WsmlError, match=r"row\(s\) 49 outside its 49 rows"):
            table.join(torch.tensor([1, 49]))
    assert check.syncs == {"copy to the CPU": len(want.join(rows))}  # the comparisons above


# ------------------------------------------------------------ OASS's own training step


@pytest.mark.parametrize("keypoint", ["cmax", "ctopk", "max"])
def test_oass_step_on_the_device(keypoint):
    """OASS's second forward and teacher on the stand-in (issue 23, item 6): no blocking copy
    (its scalars are fills, the key points' centre and the crop indices need no copy), the
    teacher's EMA reads nothing back, and cuDNN's benchmark is off around the teacher, whose
    crop batch changes size every step. The one sync left is the cuts' count (``nonzero``):
    the number of crops depends on the labels."""
    from models.oass import OassNet
    from tests.test_oass import Maps, ragged

    torch.manual_seed(0)
    model = OassNet(Maps(), 4, 3)
    info = get_method("oass")
    observed = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.int8)
    config = info.create_config(None, {"keypoint": keypoint})
    method = info.create(4, 3, config, observed=ragged(observed))
    x = torch.rand(4, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    benchmark = []
    torch.backends.cudnn.benchmark = True  # as the e2e setting sets it on a GPU
    try:
        with stand_in() as check:
            model.to(STAND_IN)
            method.to(STAND_IN).bind_model(model)
            if method.teacher is not None:
                method.teacher.cam_head.register_forward_pre_hook(
                    lambda *_: benchmark.append(torch.backends.cudnn.benchmark)
                )
            batch = {k: v.to(STAND_IN) for k, v in
                     {"input": x, "observed": observed, "row": torch.arange(4)}.items()}  # fmt: skip
            method.after_step()  # reads the restored step count once
            check.reset()
            for step in range(2):
                out = method.training_step(
                    model, batch, epoch=1, step=step, autocast=contextlib.nullcontext
                )
                out["loss"].backward()
                method.after_step()
            assert isinstance(out["alpha_re"], StandInTensor)
    finally:
        torch.backends.cudnn.benchmark = False
    assert not check.blocking, check.sites
    cuts = {} if keypoint == "max" else {"nonzero.default": 2}
    assert dict(check.syncs) == cuts, check.sites
    assert benchmark == ([] if keypoint == "max" else [False, False])
