"""Quality metrics: hand-computed cases, agreement with scikit-learn and seqeval, bootstrap CIs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from lepton.tasks.quality import (
    Quality,
    expected_calibration_error,
    paired_bootstrap,
    sequence_quality,
    token_quality,
)

# ------------------------------------------------------------------- sequence classification


def test_binary_hand_computed():
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 1, 0, 0, 0, 1, 0, 1]
    q = sequence_quality(y_true, y_pred, ["neg", "pos"], resamples=200)
    assert isinstance(q, Quality)
    assert q.task == "sequence_classification" and q.headline == "accuracy"
    assert q.confusion == [[3, 1], [1, 3]]  # rows true, cols predicted
    assert q.metrics["accuracy"].value == pytest.approx(6 / 8)
    assert q.metrics["f1"].value == pytest.approx(0.75)  # positive class: P = R = 3/4
    assert q.metrics["macro_f1"].value == pytest.approx(0.75)
    assert q.metrics["accuracy"].n == 8
    assert [row.support for row in q.per_class] == [4, 4]
    assert q.bootstrap == {"resamples": 200, "seed": 0, "confidence": 0.95}


def test_three_class_hand_computed():
    # true:  a a a b b c ; pred: a b a b c c
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    q = sequence_quality(y_true, y_pred, ["a", "b", "c"], resamples=100)
    assert q.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert "f1" not in q.metrics  # positive-class F1 only for two labels
    rows = {row.label: row for row in q.per_class}
    assert rows["a"].precision == pytest.approx(1.0) and rows["a"].recall == pytest.approx(2 / 3)
    assert rows["b"].precision == pytest.approx(0.5) and rows["b"].recall == pytest.approx(0.5)
    assert rows["c"].precision == pytest.approx(0.5) and rows["c"].recall == pytest.approx(1.0)
    f1s = [0.8, 0.5, 2 / 3]
    assert q.metrics["macro_f1"].value == pytest.approx(np.mean(f1s))
    assert q.metrics["accuracy"].value == pytest.approx(4 / 6)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_agrees_with_sklearn(k):
    rng = np.random.default_rng(k)
    y_true = rng.integers(0, k, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, k, 500))
    labels = [f"l{i}" for i in range(k)]
    q = sequence_quality(y_true, y_pred, labels, resamples=50)
    ids = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    assert [row.precision for row in q.per_class] == pytest.approx(p)
    assert [row.recall for row in q.per_class] == pytest.approx(r)
    assert [row.f1 for row in q.per_class] == pytest.approx(f)
    assert [row.support for row in q.per_class] == list(s)
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average="macro", zero_division=0
    )
    assert q.metrics["macro_precision"].value == pytest.approx(mp)
    assert q.metrics["macro_recall"].value == pytest.approx(mr)
    assert q.metrics["macro_f1"].value == pytest.approx(mf)
    assert q.confusion == confusion_matrix(y_true, y_pred, labels=ids).tolist()
    if k == 2:
        _, _, f1_pos, _ = precision_recall_fscore_support(
            y_true, y_pred, average="binary", pos_label=1, zero_division=0
        )
        assert q.metrics["f1"].value == pytest.approx(f1_pos)


def test_zero_division_gives_zero():
    # label "c" is never true nor predicted; "b" is true but never predicted.
    y_true = [0, 0, 1, 1]
    y_pred = [0, 0, 0, 0]
    q = sequence_quality(y_true, y_pred, ["a", "b", "c"], resamples=50)
    rows = {row.label: row for row in q.per_class}
    assert (rows["b"].precision, rows["b"].recall, rows["b"].f1) == (0.0, 0.0, 0.0)
    assert (rows["c"].precision, rows["c"].recall, rows["c"].f1, rows["c"].support) == (0, 0, 0, 0)
    assert rows["a"].precision == pytest.approx(0.5) and rows["a"].recall == 1.0
    assert q.metrics["macro_f1"].value == pytest.approx((2 / 3) / 3)
    for metric in q.metrics.values():
        assert np.isfinite([metric.value, metric.ci95_low, metric.ci95_high]).all()


def _noisy(n, seed, accuracy=0.8, k=3):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < accuracy, y_true, (y_true + 1) % k)
    return y_true, y_pred


def test_ci_contains_value_and_narrows_with_n():
    widths = []
    for n in (100, 10_000):
        y_true, y_pred = _noisy(n, seed=1)
        q = sequence_quality(y_true, y_pred, ["a", "b", "c"], resamples=500)
        for metric in q.metrics.values():
            assert metric.ci95_low <= metric.value <= metric.ci95_high
            assert metric.n == n
        widths.append(q.metrics["accuracy"].ci95_high - q.metrics["accuracy"].ci95_low)
    assert widths[1] < widths[0] / 5  # ~ 1/sqrt(100) of the width


def test_same_seed_same_ci_different_seed_different():
    y_true, y_pred = _noisy(300, seed=2)
    labels = ["a", "b", "c"]
    one = sequence_quality(y_true, y_pred, labels, resamples=300, seed=7)
    two = sequence_quality(y_true, y_pred, labels, resamples=300, seed=7)
    other = sequence_quality(y_true, y_pred, labels, resamples=300, seed=8)
    assert one == two
    assert one.metrics["macro_f1"] != other.metrics["macro_f1"]
    assert one.metrics["accuracy"].value == other.metrics["accuracy"].value


@pytest.mark.parametrize(
    "y_true, y_pred, labels",
    [
        ([0, 1], [0], ["a", "b"]),  # lengths differ
        ([], [], ["a", "b"]),  # empty
        ([0, 2], [0, 1], ["a", "b"]),  # id out of range
        ([0, -1], [0, 1], ["a", "b"]),  # negative id
        ([0.5, 1.0], [0, 1], ["a", "b"]),  # not ids
        ([0, 1], [0, 1], []),  # no labels
    ],
)
def test_sequence_rejects_bad_input(y_true, y_pred, labels):
    with pytest.raises(ValueError):
        sequence_quality(y_true, y_pred, labels, resamples=10)


# ------------------------------------------------------------------------ token classification

NER_TRUE = [
    ["B-PER", "I-PER", "O", "B-LOC", "O"],
    ["B-ORG", "I-ORG", "I-ORG", "O"],
    ["O", "B-MISC", "O", "B-PER"],
    ["B-LOC", "O", "O"],
    ["O", "O"],
]
NER_PRED = [
    ["B-PER", "I-PER", "O", "B-ORG", "O"],  # LOC tagged as ORG
    ["B-ORG", "I-ORG", "O", "O"],  # boundary too short
    ["O", "O", "O", "I-PER"],  # MISC never predicted; I- without B- still counts (non-strict)
    ["B-LOC", "I-LOC", "O"],  # boundary too long
    ["O", "B-PER"],  # spurious entity
]


def test_ner_agrees_with_seqeval():
    q = token_quality(NER_TRUE, NER_PRED, resamples=200)
    assert q.task == "token_classification" and q.headline == "entity_f1"
    assert q.confusion is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about MISC's zero division
        assert q.metrics["entity_f1"].value == pytest.approx(f1_score(NER_TRUE, NER_PRED))
        assert q.metrics["entity_precision"].value == pytest.approx(
            precision_score(NER_TRUE, NER_PRED)
        )
        assert q.metrics["entity_recall"].value == pytest.approx(recall_score(NER_TRUE, NER_PRED))
        report = classification_report(NER_TRUE, NER_PRED, output_dict=True)
    assert q.labels == ["LOC", "MISC", "ORG", "PER"]
    for row in q.per_class:
        expected = report[row.label]
        assert row.precision == pytest.approx(expected["precision"])
        assert row.recall == pytest.approx(expected["recall"])
        assert row.f1 == pytest.approx(expected["f1-score"])
        assert row.support == expected["support"]
    assert q.metrics["macro_entity_f1"].value == pytest.approx(report["macro avg"]["f1-score"])
    tokens = sum(len(s) for s in NER_TRUE)
    correct = sum(a == b for t, p in zip(NER_TRUE, NER_PRED) for a, b in zip(t, p))
    assert q.metrics["token_accuracy"].value == pytest.approx(correct / tokens)
    misc = next(row for row in q.per_class if row.label == "MISC")
    assert (misc.precision, misc.recall, misc.f1, misc.support) == (0.0, 0.0, 0.0, 1)


def test_ner_ci_over_sentences():
    rng = np.random.default_rng(0)
    true, pred = [], []
    for _ in range(400):
        sentence = ["O", "B-PER", "I-PER", "O", "B-LOC", "O"]
        guess = list(sentence)
        if rng.random() < 0.3:
            guess[4] = "B-ORG"
        true.append(sentence)
        pred.append(guess)
    q = token_quality(true, pred, resamples=500, seed=1)
    f1 = q.metrics["entity_f1"]
    assert f1.n == 400
    assert f1.ci95_low < f1.value < f1.ci95_high
    assert f1.ci95_high - f1.ci95_low < 0.1
    assert q == token_quality(true, pred, resamples=500, seed=1)
    assert q.metrics["entity_f1"] != token_quality(true, pred, resamples=500, seed=2).metrics[
        "entity_f1"
    ]


def test_ner_rejects_bad_input():
    with pytest.raises(ValueError):
        token_quality([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError):
        token_quality([["O", "B-PER"]], [["O"]])
    with pytest.raises(ValueError):
        token_quality([], [])


# --------------------------------------------------------------------------- paired bootstrap


def test_paired_identical_is_not_significant():
    correct = np.random.default_rng(0).random(200) < 0.7
    result = paired_bootstrap(correct, correct.copy())
    assert result["delta"] == 0.0
    assert result["significant"] is False
    assert result["p_bootstrap"] == 1.0 and result["p_mcnemar"] == 1.0
    assert result["n"] == 200


def test_paired_clearly_better_is_significant():
    rng = np.random.default_rng(1)
    a = rng.random(1000) < 0.70
    b = a | (rng.random(1000) < 0.5)  # b fixes about half of a's mistakes
    result = paired_bootstrap(a, b, resamples=1000, seed=0)
    assert result["delta"] > 0.1
    assert result["significant"] is True
    assert result["ci95_low"] > 0
    assert result["p_bootstrap"] < 0.01 and result["p_mcnemar"] < 1e-10
    reverse = paired_bootstrap(b, a)
    assert reverse["delta"] == pytest.approx(-result["delta"])
    assert reverse["significant"] is True and reverse["ci95_high"] < 0


def test_mcnemar_hand_example():
    # 1 example only a gets right, 6 only b gets right, 3 both: p = 2 * (C(7,0)+C(7,1)) / 2^7
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    result = paired_bootstrap(a, b, resamples=200)
    assert result["p_mcnemar"] == pytest.approx(2 * 8 / 128)
    assert result["delta"] == pytest.approx(0.5)


def test_mcnemar_large_counts_are_finite():
    a = np.zeros(30_000, dtype=bool)
    b = np.zeros(30_000, dtype=bool)
    a[:10_100] = True
    b[10_100:20_000] = True  # 10 100 vs 9 900 discordant: p ~ 0.16
    result = paired_bootstrap(a, b, resamples=100)
    assert 0.1 < result["p_mcnemar"] < 0.2


# -------------------------------------------------------------------------------- calibration


def test_ece_perfectly_calibrated_is_near_zero():
    rng = np.random.default_rng(0)
    n = 50_000
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < confidence  # right exactly as often as it claims
    y_true = np.where(correct, 0, 1)
    probs = np.stack([confidence, 1 - confidence], axis=1)
    ece, table = expected_calibration_error(probs, y_true, bins=10)
    assert ece < 0.02
    assert len(table) == 10 and sum(row["count"] for row in table) == n
    assert table[0]["count"] == 0 and table[0]["accuracy"] is None  # no confidence below 0.1


def test_ece_overconfident_is_high():
    n = 1000
    probs = np.tile([0.99, 0.01], (n, 1))
    y_true = np.array([0] * (n // 2) + [1] * (n // 2))  # right only half the time
    ece, table = expected_calibration_error(probs, y_true)
    assert ece == pytest.approx(0.49)
    full = [row for row in table if row["count"]]
    assert len(full) == 1 and full[0]["accuracy"] == pytest.approx(0.5)


def test_ece_rejects_logits():
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([[2.0, -1.0]]), [0])
