"""Label regimes reproduce the field's generators exactly (METHODS.md §0.2, §7.1)."""

import numpy as np
import pytest

from shards.base.errors import WsmlError
from shards.lists import Lists
from shards.regimes import (
    REGIMES,
    OfficialLabels,
    Partial,
    SinglePositive,
    create_regime,
    parse_regime_spec,
)

Y = np.array(
    [
        [1, 1, 0, 0, 1],
        [0, 1, 1, 1, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 1],
    ]
)


def as_labels(y01: np.ndarray, explicit_negatives: bool = False) -> OfficialLabels:
    pos = Lists.from_rows(np.flatnonzero(r == 1) for r in y01)
    neg = Lists.from_rows(np.flatnonzero(r == 0) if explicit_negatives else None for r in y01)
    return OfficialLabels(pos, neg, y01.shape[1])


def dense(observed, num_classes: int) -> np.ndarray:
    pos, neg = observed
    out = np.zeros((len(pos), num_classes), dtype=int)
    for i in range(len(pos)):
        out[i, pos.row(i)] = 1
        out[i, neg.row(i)] = -1
    return out


def reference_generator(y01, num_pos=1, num_neg=0, seed=1200):
    """The field's generate_observed_labels.py procedure as METHODS.md §0.2 describes it."""
    rng = np.random.RandomState(seed)
    y = y01.copy()
    y[y == 0] = -1
    obs = np.zeros_like(y)
    for n in range(y.shape[0]):
        idx_pos = np.where(y[n] == 1)[0]
        rng.shuffle(idx_pos)
        obs[n, idx_pos[:num_pos]] = 1
        idx_neg = np.where(y[n] == -1)[0]
        rng.shuffle(idx_neg)
        obs[n, idx_neg[:num_neg]] = -1
    return obs


def test_single_positive_matches_stored_answer():
    # The reference procedure's answer for Y with RandomState(1200), written down once.
    expected = [
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1],
    ]
    assert dense(SinglePositive().generate(as_labels(Y)), 5).tolist() == expected


def test_single_positive_with_negatives_matches_stored_answer():
    expected = [
        [1, 0, 0, -1, 0],
        [-1, 1, 0, 0, 0],
        [1, 0, 0, -1, 0],
        [-1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, -1, 0, 0, 1],
    ]
    got = SinglePositive(num_neg=1).generate(as_labels(Y))
    assert dense(got, 5).tolist() == expected


def test_negative_shuffle_advances_the_rng():
    # Skipping the (unused) negative shuffle changes row 1's draw: 2 instead of 1.
    got = dense(SinglePositive().generate(as_labels(Y)), 5)
    assert got[1].tolist() == [0, 1, 0, 0, 0]
    assert got[4].tolist() == [0, 0, 1, 0, 0]


@pytest.mark.parametrize("seed", [1200, 0, 7])
@pytest.mark.parametrize("num_pos,num_neg", [(1, 0), (2, 0), (1, 3)])
def test_single_positive_equals_reference_on_random_matrices(seed, num_pos, num_neg):
    rng = np.random.default_rng(seed)
    y = (rng.random((200, 17)) < 0.2).astype(int)
    want = reference_generator(y, num_pos, num_neg, seed)
    regime = SinglePositive(seed=seed, num_pos=num_pos, num_neg=num_neg)
    assert np.array_equal(dense(regime.generate(as_labels(y)), 17), want)
    # explicit negatives (a source listing them) give the same answer
    assert np.array_equal(dense(regime.generate(as_labels(y, True)), 17), want)


def test_single_positive_hand_cases():
    # Keeping every positive and every negative reproduces the full +-1 matrix whatever the RNG.
    got = dense(SinglePositive(num_pos=5, num_neg=5).generate(as_labels(Y)), 5)
    assert np.array_equal(got, np.where(Y == 1, 1, -1))
    one = dense(SinglePositive().generate(as_labels(Y)), 5)
    assert one[2].tolist() == [1, 0, 0, 0, 0]  # a single positive is always kept
    assert one[3].tolist() == [0, 0, 0, 0, 0]  # no positive: nothing observed
    assert (one.sum(1) == (Y.sum(1) > 0)).all()


def test_partial_keeps_entries_with_probability():
    rng = np.random.default_rng(0)
    y = (rng.random((3000, 20)) < 0.15).astype(int)
    got = dense(Partial(fraction=0.1, seed=0).generate(as_labels(y)), 20)
    # reference: RandomState(seed).rand(N, L) < p decides every entry of the +-1 matrix
    keep = np.random.RandomState(0).rand(3000, 20) < 0.1
    assert np.array_equal(got, np.where(keep, np.where(y == 1, 1, -1), 0))
    assert abs((got != 0).mean() - 0.1) < 0.01


def test_partial_chunking_matches_one_draw():
    y = (np.random.default_rng(1).random((9000, 3)) < 0.5).astype(int)  # > one 4096-row chunk
    got = dense(Partial(fraction=0.5, seed=3).generate(as_labels(y)), 3)
    keep = np.random.RandomState(3).rand(9000, 3) < 0.5
    assert np.array_equal(got, np.where(keep, np.where(y == 1, 1, -1), 0))


def test_partial_keeps_unknowns_unknown():
    labels = OfficialLabels(Lists.from_rows([[0]]), Lists.from_rows([[1]]), 4)  # 2, 3 unknown
    got = dense(Partial(fraction=1.0).generate(labels), 4)
    assert got.tolist() == [[1, -1, 0, 0]]


def test_view_names_and_specs():
    assert SinglePositive().view_name() == "single-positive"
    assert SinglePositive(seed=3).view_name() == "single-positive-s3"
    assert Partial(fraction=0.1).view_name() == "partial-p0.1"
    assert Partial(fraction=0.25, seed=2).view_name() == "partial-p0.25-s2"
    assert parse_regime_spec("partial:fraction=0.1,seed=4") == Partial(0.1, 4)
    assert parse_regime_spec("single-positive") == SinglePositive()
    assert set(REGIMES.names()) == {"single-positive", "partial", "noisy"}


def test_bad_regimes_fail_with_choices():
    with pytest.raises(WsmlError, match="Choices: noisy, partial, single-positive"):
        create_regime("single-postive")
    with pytest.raises(WsmlError, match="valid: bias, class_weights, num_neg, num_pos, seed"):
        create_regime("single-positive", fraction=0.1)
    with pytest.raises(WsmlError, match="fraction must be in"):
        Partial(fraction=0).generate(as_labels(Y))
