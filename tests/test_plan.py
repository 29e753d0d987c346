"""Planning: the field's train/val split, safe keys, shard cuts."""

import re

import numpy as np

from shards.convert.plan import create_keys, cut_shards, field_split, shuffle_order


def test_field_split_follows_cole():
    # COCO: 82,081 official train images -> 65,665 train / 16,416 val (METHODS.md §0.3)
    train, val = field_split(82081, 0.2, 1200)
    assert (len(train), len(val)) == (65665, 16416)
    perm = np.random.RandomState(1200).permutation(82081)
    assert np.array_equal(train, np.sort(perm[:65665]))
    assert np.array_equal(val, np.sort(perm[65665:]))
    train, val = field_split(10, 0.0, 1200)
    assert len(val) == 0 and train.tolist() == list(range(10))


def test_keys_are_safe_and_unique():
    hints = ["COCO_train2014_000000000009", "a.b", "a_b", "dir/x y", "dup", "dup"]
    ids = ["9", "1", "2", "3", "4", "5"]
    keys = create_keys(hints, ids)
    assert keys[0] == "COCO_train2014_000000000009"  # safe hints are kept as they are
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys)
    assert len(set(keys)) == len(keys)
    assert keys[1].startswith("a_b-") and keys[2].startswith("a_b-")  # collision after sanitising
    assert create_keys(hints, ids) == keys  # deterministic
    assert all(len(k) <= 80 for k in create_keys(["x" * 300], ["1"]))


def test_shuffle_order_is_seeded_and_differs_per_split():
    a = shuffle_order(100, 1200, "train")
    assert np.array_equal(a, shuffle_order(100, 1200, "train"))
    assert not np.array_equal(a, shuffle_order(100, 1200, "val"))
    assert not np.array_equal(a, shuffle_order(100, 1, "train"))
    assert sorted(a.tolist()) == list(range(100))


def test_cut_shards_respects_both_caps():
    sizes = np.full(10, 1000)
    cuts = cut_shards(sizes, max_bytes=10**9, max_samples=4)
    assert [(c.start, c.stop) for c in cuts] == [(0, 4), (4, 8), (8, 10)]
    cuts = cut_shards(sizes, max_bytes=5500, max_samples=100)  # 2,536 bytes a sample with headers
    assert [(c.start, c.stop) for c in cuts] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    big = cut_shards(np.array([10**6, 10, 10]), max_bytes=5000, max_samples=100)
    assert [(c.start, c.stop) for c in big] == [(0, 1), (1, 3)]  # an oversized image alone
    assert cut_shards(np.array([], dtype=int), 10, 10) == []
