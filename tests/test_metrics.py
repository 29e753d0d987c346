"""Metrics against hand-computed cases and scikit-learn (METHODS.md §0.4, §9, §12.10)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import train.metrics as metrics
from shards.base.errors import WsmlError
from train.metrics import average_precision, evaluate, mean_average_precision, threshold_metrics

# 6 images x 3 classes. Class 0: no ties; class 1: a three-way tie; class 2: no positive.
SCORES = np.array(
    [
        [0.9, 0.9, 0.3],
        [0.8, 0.5, 0.2],
        [0.7, 0.5, 0.6],
        [0.6, 0.5, 0.1],
        [0.5, 0.2, 0.4],
        [0.4, 0.1, 0.5],
    ]
)
LABELS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]])
# class 0: positives at ranks 1, 3, 6 -> (1/1 + 2/3 + 3/6) / 3 = 13/18
# class 1: thresholds 0.9 (tp 0 of 1), 0.5 (tp 1 of 4: P 1/4, R 1/2), 0.2 (tp 2 of 5: P 2/5,
#          R 1) -> 1/2 * 1/4 + 1/2 * 2/5 = 0.325 (the tie is one threshold)
# class 2: no positive -> AP 0, kept in the mean
AP_HAND = np.array([13 / 18, 0.325, 0.0])
# ASL style, ties in row order: class 1 positives at ranks 2 and 5 -> (1/2 + 2/5) / 2 = 0.45
AP_ASL = np.array([13 / 18, 0.45, 0.0])


def test_ap_hand_computed_with_ties_and_empty_class():
    np.testing.assert_allclose(average_precision(SCORES, LABELS), AP_HAND, atol=1e-12)
    assert mean_average_precision(SCORES, LABELS) == pytest.approx(100 * AP_HAND.mean())
    for j in (0, 1):
        assert AP_HAND[j] == pytest.approx(average_precision_score(LABELS[:, j], SCORES[:, j]))


def test_ap_asl_style():
    got = average_precision(SCORES, LABELS, style="asl")
    np.testing.assert_allclose(got, AP_ASL, atol=1e-8)  # the denominator is positives + 1e-8
    with pytest.raises(WsmlError, match="sklearn, asl"):
        average_precision(SCORES, LABELS, style="voc07")


def test_ap_matches_sklearn_on_random_ties_and_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, size=(60, 9)) / 5  # many ties
    y = (rng.random((60, 9)) < 0.3).astype(int)
    y[:, 4] = 0
    y[y == 0] = rng.choice([0, -1], size=int((y == 0).sum()))  # -1 and 0 are both negatives
    ref = [
        average_precision_score(y[:, j] == 1, s[:, j]) if (y[:, j] == 1).any() else 0.0
        for j in range(9)
    ]
    np.testing.assert_allclose(average_precision(s, y), ref, atol=1e-12)
    monkeypatch.setattr(metrics, "_CHUNK_ENTRIES", 100)  # two columns per chunk
    np.testing.assert_allclose(average_precision(s, y), ref, atol=1e-12)
    assert mean_average_precision(torch.tensor(s), torch.tensor(y)) == pytest.approx(
        100 * np.mean(ref)
    )


def test_ap_float32_scores_and_annotated_entries_match_sklearn():
    """float32 scores are ranked as they are (exactly as float64 would rank them); with unknown
    labels only the annotated entries count, as sklearn on those entries alone."""
    rng = np.random.default_rng(1)
    s = (rng.integers(0, 50, size=(500, 7)) / 49).astype(np.float32)  # ties in every class
    y = rng.choice([1, 0, -1], size=(500, 7), p=[0.2, 0.3, 0.5])
    y[:, 3] = np.where(y[:, 3] == 1, -1, y[:, 3])  # annotated, no positive: AP 0
    y[:, 5] = 0  # nothing annotated: skipped
    got = average_precision(s, y, annotated_only=True)
    for j in range(7):
        keep = y[:, j] != 0
        if j == 5:
            assert np.isnan(got[j])
        elif j == 3:
            assert got[j] == 0.0
        else:
            want = average_precision_score(y[keep, j] == 1, s[keep, j].astype(np.float64))
            assert got[j] == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(
        average_precision(s, y), average_precision(s.astype(np.float64), y), atol=1e-12
    )


def test_openimages_variant():
    labels = np.array(
        [[1, 0, -1], [0, 0, -1], [-1, 0, 0], [1, 0, 0], [0, 0, 0], [-1, 0, 0]]
    )  # 1 positive, -1 negative, 0 unannotated
    # class 0: annotated rows 0 (0.9, +), 2 (0.7, -), 3 (0.6, +), 5 (0.4, -) -> (1 + 2/3) / 2
    # class 1: nothing annotated -> skipped; class 2: annotated, no positive -> 0
    ap = average_precision(SCORES, labels, annotated_only=True)
    np.testing.assert_allclose(ap[[0, 2]], [5 / 6, 0.0], atol=1e-12)
    assert np.isnan(ap[1])
    assert mean_average_precision(SCORES, labels, annotated_only=True) == pytest.approx(
        100 * 5 / 12
    )
    # the standard variant counts unannotated rows as negatives: class 0 -> (1 + 2/4) / 2
    assert average_precision(SCORES, labels)[0] == pytest.approx(0.75)
    with pytest.raises(WsmlError, match="no class has an annotated entry"):
        mean_average_precision(SCORES, np.zeros_like(labels), annotated_only=True)


def test_threshold_metrics_hand_computed():
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.5], [0.1, 0.8]])
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    # class 0: predicted rows 0, 1; true rows 0, 2; hit row 0 -> P 1/2, R 1/2
    # class 1: predicted rows 1, 2, 3 (0.5 >= 0.5); true rows 1, 2 -> P 2/3, R 1
    cp, cr = (1 / 2 + 2 / 3) / 2, (1 / 2 + 1) / 2
    op, orr = 3 / 5, 3 / 4
    got = threshold_metrics(scores, labels)
    want = {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr),
        "OP": op,
        "OR": orr,
        "OF1": 2 * op * orr / (op + orr),
    }
    assert got == pytest.approx({k: 100 * v for k, v in want.items()})
    assert want["CF1"] == pytest.approx(21 / 32) and want["OF1"] == pytest.approx(2 / 3)
    # nothing predicted for class 0 at 0.95: its precision counts as 0 in CP
    high = threshold_metrics(scores, labels, threshold=0.95)
    assert high["CP"] == 0 and high["OP"] == 0 and high["OF1"] == 0


def test_threshold_metrics_openimages_scores_annotated_entries_only():
    scores = np.array([[0.9, 0.9], [0.8, 0.1], [0.2, 0.7]])
    labels = np.array([[1, 0], [0, -1], [-1, 0]])  # class 1 has one annotated entry (negative)
    got = threshold_metrics(scores, labels, annotated_only=True)
    # class 0: predicted row 0 (row 1 unannotated), hit -> P 1, R 1; class 1: nothing predicted
    assert got["CP"] == pytest.approx(50) and got["CR"] == pytest.approx(50)
    assert got["OP"] == pytest.approx(100) and got["OR"] == pytest.approx(100)


def test_evaluate_and_bad_input():
    out = evaluate(SCORES, LABELS)
    assert out["mAP"] == pytest.approx(100 * AP_HAND.mean())
    np.testing.assert_allclose(out["AP"], 100 * AP_HAND)
    assert set(out) == {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "AP"}
    with pytest.raises(WsmlError, match="differ in shape"):
        evaluate(SCORES, LABELS[:, :2])
    with pytest.raises(WsmlError, match="2-d"):
        average_precision(SCORES[0], LABELS[0])
    bad = SCORES.copy()
    bad[0, 0] = np.nan
    with pytest.raises(WsmlError, match="NaN"):
        average_precision(bad, LABELS)
