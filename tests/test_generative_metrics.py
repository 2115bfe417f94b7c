"""BLEU/chrF equal sacrebleu's; intervals and paired comparisons behave; perplexity and bits per byte."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from lepton.tasks.text_metrics import DocumentLoss, lm_scores, paired_lm, paired_text, text_scores

REFS = ["ein mann fährt fahrrad .", "zwei hunde spielen im gras .", "eine frau liest ein buch .",
        "kinder laufen am strand .", "ein alter mann sitzt auf einer bank ."] * 8
GOOD = ["ein mann fährt ein fahrrad .", "zwei hunde spielen im gras .", "eine frau liest .",
        "kinder laufen am strand entlang .", "ein mann sitzt auf einer bank ."] * 8
BAD = ["mann fahrrad", "hunde gras", "frau buch liest", "kinder strand", "alter bank"] * 8


def test_bleu_and_chrf_equal_sacrebleu_called_directly():
    scores = text_scores(GOOD, REFS, resamples=200)
    assert scores.metrics["bleu"].value == pytest.approx(sacrebleu.corpus_bleu(GOOD, [REFS]).score, abs=1e-9)
    assert scores.metrics["chrf"].value == pytest.approx(sacrebleu.corpus_chrf(GOOD, [REFS]).score, abs=1e-9)
    assert scores.signatures["bleu"].startswith("nrefs:1|")
    assert "tok:13a" in scores.signatures["bleu"]
    for name in ("bleu", "chrf", "exact_match"):
        m = scores.metrics[name]
        assert m.ci95_low <= m.value <= m.ci95_high and m.n == len(REFS)
    assert scores.metrics["exact_match"].value == pytest.approx(8 / 40)


def test_bleu_interval_is_recomputed_from_summed_statistics_not_averaged():
    # The mean of sentence BLEUs is far from corpus BLEU here; the bootstrap median must follow corpus BLEU.
    scores = text_scores(GOOD, REFS, resamples=300, seed=1)
    sentence_mean = np.mean([sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(GOOD, REFS)])
    m = scores.metrics["bleu"]
    assert abs(sentence_mean - m.value) > 1.0
    assert m.ci95_low < m.value < m.ci95_high
    assert m.ci95_high - m.ci95_low < 40


def test_paired_comparison_sign_and_identity():
    out = paired_text(REFS, BAD, GOOD, resamples=300)
    assert out["bleu"]["delta"] == pytest.approx(sacrebleu.corpus_bleu(GOOD, [REFS]).score
                                                 - sacrebleu.corpus_bleu(BAD, [REFS]).score)
    assert out["bleu"]["significant"] and out["bleu"]["ci95_low"] > 0
    assert out["chrf"]["delta"] > 0 and out["chrf"]["p_bootstrap"] < 0.05
    same = paired_text(REFS, GOOD, GOOD, resamples=100)
    assert same["bleu"]["delta"] == 0 and same["bleu"]["p_bootstrap"] == 1.0
    assert not same["chrf"]["significant"]


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        text_scores(["a", "b"], ["a"])


def test_perplexity_and_bits_per_byte_formulas():
    losses = DocumentLoss(nll=[10.0, 20.0, 30.0], tokens=[5, 10, 10], bytes=[20, 40, 60])
    scores = lm_scores(losses, resamples=200)
    assert scores["perplexity"].value == pytest.approx(math.exp(60 / 25))
    assert scores["bits_per_byte"].value == pytest.approx(60 / math.log(2) / 120)
    assert scores["perplexity"].ci95_low <= scores["perplexity"].value <= scores["perplexity"].ci95_high


def test_paired_lm_needs_the_same_documents_and_finds_the_better_model():
    a = DocumentLoss(nll=[10.0, 20.0, 30.0, 12.0], tokens=[5, 10, 10, 6], bytes=[20, 40, 60, 25])
    b = DocumentLoss(nll=[8.0, 15.0, 25.0, 9.0], tokens=[6, 11, 12, 7], bytes=[20, 40, 60, 25])
    out = paired_lm(a, b, resamples=300)
    assert out["bits_per_byte"]["delta"] == pytest.approx((57 - 72) / math.log(2) / 145)
    assert out["bits_per_byte"]["ci95_high"] < 0
    with pytest.raises(ValueError, match="same documents"):
        paired_lm(a, DocumentLoss(nll=[1.0] * 4, tokens=[1] * 4, bytes=[1, 2, 3, 4]))
