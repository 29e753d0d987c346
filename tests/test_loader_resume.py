"""One DALI graph per training loader, read epoch after epoch, and its state carried to a resumed
run (issue 23, item 7): with real DALI on the CPU (the split graph and the graph all in DALI
operators, with a random flip), a loader stopped after epoch 1 and a new one restored from its
``state_dict`` read the same rows and pixels as one loader that never stopped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipelines.loader import create_loader
from tests.support.pipelines_data import (
    HAVE_DALI,
    REGIME,
    TINY_PRESET,
    check_train_epoch,
    get_shard_set,
    open_loader,
    stored_rows,
)

pytestmark = pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed")
SEED = 5


def _flip_dali(images, train: bool, device: str):
    from nvidia.dali import fn

    images, norm = TINY_PRESET.dali(images, train, device)
    return images, {**norm, "mirror": fn.random.coin_flip(probability=0.5) if train else 0}


def _flip_tensor(x, train: bool, rng):
    x, _ = TINY_PRESET.tensor(x, train, rng)
    return x, bool(train and rng.random() < 0.5)


# the tiny preset with a random flip: DALI's random operators are part of its checkpoint
FLIP = dataclasses.replace(TINY_PRESET, name="tiny32-flip", dali=_flip_dali, tensor=_flip_tensor)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return get_shard_set(tmp_path_factory)


def loader(root, **kw):
    args = dict(regime=REGIME, preset=FLIP, seed=SEED, num_threads=1, backend="dali")
    return open_loader(root, "train", **{**args, **kw})


def read(ldr, epochs) -> list[list[tuple[list[int], torch.Tensor]]]:
    """Each epoch's batches as (rows, images), ``set_epoch`` as the training loop calls it."""
    out = []
    for epoch in epochs:
        ldr.set_epoch(epoch)
        out.append([(b["row"].tolist(), b["image"].clone()) for b in ldr])
    return out


def same(a, b) -> bool:
    return [x[0] for x in a] == [x[0] for x in b] and all(
        torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


# world 2, batch 4: 49 rows = 24 + 25, every reader epoch 7 batches (DALI pads each shard to the
# longest), training takes 6: one batch dropped every epoch; world 1, batch 5: 9 of 10
CASES = [(2, 4, "torch"), (2, 4, "dali"), (1, 5, "torch"), (1, 5, "dali")]


@pytest.mark.parametrize(("world", "batch", "cpu_resize"), CASES)
def test_a_restored_loader_reads_what_one_that_never_stopped_reads(root, world, batch, cpu_resize):
    stored = stored_rows(root, "train")
    for rank in range(world):
        kw = dict(rank=rank, world_size=world, batch_size=batch, cpu_resize=cpu_resize)
        whole = loader(root, **kw)
        epochs = read(whole, range(1, 5))
        # one graph for the loader: built for epoch 1, read on by epochs 2-4
        assert [s > 0 for s in whole.build_seconds] == [True, False, False, False]
        assert whole.graph.start == 1 and whole.graph.reads == ("epoch", 5)
        first = loader(root, **kw)
        assert same(read(first, [1, 2])[1], epochs[1])
        state = first.state_dict()
        assert (state["epoch"], state["start"], state["backend"]) == (3, 1, "dali")
        assert isinstance(state["dali"], bytes) and state["rank"] == rank
        resumed = loader(root, **kw)
        assert resumed.load_state_dict(state) is None
        later = read(resumed, [3, 4])
        assert same(later[0], epochs[2]) and same(later[1], epochs[3])
        assert resumed.graph.start == 1  # the saved graph's, rebuilt from its checkpoint
    # the ranks of each epoch: full batches, disjoint, inside the shard sharding.shard_of names
    for epoch in range(1, 5):
        ranks = []
        for rank in range(world):
            kw = dict(rank=rank, world_size=world, batch_size=batch, cpu_resize=cpu_resize)
            ldr = loader(root, **kw)
            got = read(ldr, range(1, epoch + 1))[-1]
            rows = [r for r, _ in got]
            ranks.append({"len": len(ldr), "rows": rows, "valid": [[True] * batch] * len(rows)})
        check_train_epoch(ranks, stored, epoch, batch)


def test_each_epoch_of_one_graph_reads_its_whole_share(root):
    """Epoch after epoch a rank reads the rotating shard, all of it save the dropped batch; the
    graph's reader epoch stays aligned with the loader's (no row of another shard creeps in)."""
    stored = stored_rows(root, "train")
    ldr = loader(root, rank=0, world_size=2, batch_size=4)
    for epoch, got in enumerate(read(ldr, range(6))):
        rows = {r for b, _ in got for r in b}
        share = set(stored[:24] if epoch % 2 == 0 else stored[24:])
        assert rows <= share and len(rows) == 24, epoch  # 24 of 24, then 24 of 25


def test_out_of_order_epochs_and_unfinished_ones_build_afresh(root):
    """An epoch other than the graph's next, or after an epoch left unfinished, is built from
    (seed, epoch, rank): what a loader started at that epoch reads."""
    kw = dict(rank=1, world_size=2, batch_size=4)
    fresh = {e: read(loader(root, **kw), [e])[0] for e in (0, 2)}
    ldr = loader(root, **kw)
    read(ldr, [0, 1])
    assert same(read(ldr, [0])[0], fresh[0])  # asked for epoch 0 again
    ldr.set_epoch(1)
    next(iter(ldr))  # epoch 1 left after one batch
    assert same(read(ldr, [2])[0], fresh[2])
    assert ldr.state_dict()["dali"] is not None
    next(iter(ldr))
    assert ldr.state_dict()["dali"] is None  # mid-epoch: nothing to go on from


def test_states_that_do_not_fit_are_refused_with_the_reason(root):
    ldr = loader(root, rank=0, world_size=2, batch_size=4)
    read(ldr, [1])
    state = ldr.state_dict()
    other = loader(root, rank=1, world_size=2, batch_size=4)
    assert other.load_state_dict(state).endswith("another loader's: rank 0 (here 1)")
    assert other.resume is None
    # another graph (a checkpoint saved on the CPU, resumed on a GPU, say): DALI restores only
    # the graph that saved it
    whole = loader(root, rank=0, world_size=2, batch_size=4, cpu_resize="dali")
    assert whole.load_state_dict(state).endswith("graph cpu-split (here cpu)")
    assert whole.resume is None
    assert "no loader state" in other.load_state_dict(None)
    # the fallback and eval loaders need none: their epochs follow from (seed, epoch, rank)
    fallback = loader(root, rank=0, world_size=2, batch_size=4, backend="torch")
    assert fallback.load_state_dict(None) is None
    assert fallback.state_dict()["dali"] is None
    evaluating = create_loader(root, "test", regime=REGIME, batch_size=4, preset=TINY_PRESET)
    assert evaluating.load_state_dict(None) is None
