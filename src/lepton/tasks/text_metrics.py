"""Quality of generated text and of language models, with bootstrap CIs and paired comparisons.

BLEU and chrF come from sacrebleu: the point value is ``corpus_score`` exactly as sacrebleu
computes it, and the report carries sacrebleu's signature. For the intervals, each sentence's
sufficient statistics (sacrebleu's own per-segment n-gram counts) are resampled and the corpus
score is recomputed from their sums, so BLEU is never averaged over sentences. This is what
sacrebleu's ``paired_bs`` does inside; it is done here with the project's percentile intervals
and one index array shared by both systems (sacrebleu's API returns only a symmetric half-width
and a p-value for the second system, not the CI of the difference).

Perplexity and bits per byte resample documents: their sums of NLL (nats), tokens and UTF-8 bytes.
Bits per byte is total NLL / ln 2 / bytes, so models with different tokenizers compare fairly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from lepton.tasks.quality import (
    Metric,
    check_bootstrap,
    metric_ci,
    resample_indices,
    resampled_sums,
    two_sided_p,
)


class TextScores(BaseModel):
    """Corpus metrics of one system with CIs, and sacrebleu's signatures (metric -> signature)."""

    metrics: dict[str, Metric]
    signatures: dict[str, str]
    bootstrap: dict[str, int | float]


def _sacre(name: str) -> Any:
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU() if name == "bleu" else CHRF()


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("cannot score zero sentences")


def _sentence_stats(metric: Any, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    # sacrebleu's per-segment sufficient statistics (what its own bootstrap resamples).
    stats = metric._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(stats, dtype=np.float64)


def _scores_from_sums(metric: Any, sums: np.ndarray) -> np.ndarray:
    return np.array([metric._compute_score_from_stats(list(row)).score for row in sums])


def _exact(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    return np.array([h.strip() == r.strip() for h, r in zip(hypotheses, references)], dtype=np.float64)


def text_scores(hypotheses: Sequence[str], references: Sequence[str], *, resamples: int = 1000,
                seed: int = 0, confidence: float = 0.95) -> TextScores:
    """Corpus BLEU, chrF (sacrebleu defaults, 0-100) and exact match (0-1), each with a CI."""
    check_bootstrap(resamples, confidence)
    _check_pairs(hypotheses, references)
    n = len(hypotheses)
    idx = resample_indices(n, resamples, seed)
    metrics: dict[str, Metric] = {}
    signatures: dict[str, str] = {}
    for name in ("bleu", "chrf"):
        metric = _sacre(name)
        value = metric.corpus_score(list(hypotheses), [list(references)]).score
        stats = _sentence_stats(metric, hypotheses, references)
        samples = _scores_from_sums(metric, resampled_sums(stats, idx))
        metrics[name] = metric_ci(value, samples, n, confidence)
        signatures[name] = str(metric.get_signature())
    exact = _exact(hypotheses, references)
    samples = resampled_sums(exact[:, None], idx)[:, 0] / n
    metrics["exact_match"] = metric_ci(exact.mean(), samples, n, confidence)
    return TextScores(metrics=metrics, signatures=signatures,
                      bootstrap={"resamples": int(resamples), "seed": int(seed),
                                 "confidence": float(confidence)})


def _paired(delta: float, samples: np.ndarray, n: int, confidence: float) -> dict:
    ci = metric_ci(delta, samples, n, confidence)
    return {"delta": delta, "ci95_low": ci.ci95_low, "ci95_high": ci.ci95_high,
            "p_bootstrap": two_sided_p(delta, samples), "p_mcnemar": None,
            "significant": bool(ci.ci95_low > 0 or ci.ci95_high < 0), "n": n}


def paired_text(references: Sequence[str], hyp_a: Sequence[str], hyp_b: Sequence[str], *,
                resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, dict]:
    """System b minus system a on the same sentences, per metric (bleu, chrf, exact_match):
    the keys of ``evaluation.quality.paired_bootstrap``."""
    check_bootstrap(resamples, confidence)
    _check_pairs(hyp_a, references)
    _check_pairs(hyp_b, references)
    n = len(references)
    idx = resample_indices(n, resamples, seed)
    out: dict[str, dict] = {}
    for name in ("bleu", "chrf"):
        metric = _sacre(name)
        sa, sb = _sentence_stats(metric, hyp_a, references), _sentence_stats(metric, hyp_b, references)
        delta = (_scores_from_sums(metric, sb.sum(0)[None])[0]
                 - _scores_from_sums(metric, sa.sum(0)[None])[0])
        samples = (_scores_from_sums(metric, resampled_sums(sb, idx))
                   - _scores_from_sums(metric, resampled_sums(sa, idx)))
        out[name] = _paired(float(delta), samples, n, confidence)
    diff = _exact(hyp_b, references) - _exact(hyp_a, references)
    samples = resampled_sums(diff[:, None], idx)[:, 0] / n
    out["exact_match"] = _paired(float(diff.mean()), samples, n, confidence)
    return out


# ------------------------------------------------------------------ language-model metrics


class DocumentLoss(BaseModel):
    """Per-document sums a language-model metric needs (from ``lm_eval.document_losses``)."""

    nll: list[float]  # summed negative log-likelihood in nats of each document's scored tokens
    tokens: list[int]  # scored tokens per document
    bytes: list[int]  # UTF-8 bytes of the scored text per document


def _lm_values(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(perplexity, bits per byte) from rows of (nll, tokens, bytes) sums."""
    nll, tokens, nbytes = sums[:, 0], np.maximum(sums[:, 1], 1), np.maximum(sums[:, 2], 1)
    return np.exp(nll / tokens), nll / math.log(2) / nbytes


def _lm_table(losses: DocumentLoss) -> np.ndarray:
    n = len(losses.nll)
    if n == 0 or len(losses.tokens) != n or len(losses.bytes) != n:
        raise ValueError("document losses must be non-empty and of one length")
    return np.column_stack([losses.nll, losses.tokens, losses.bytes]).astype(np.float64)


def lm_scores(losses: DocumentLoss, *, resamples: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict[str, Metric]:
    """Token-level perplexity (exp of mean NLL per token) and bits per byte, CIs over documents."""
    check_bootstrap(resamples, confidence)
    table = _lm_table(losses)
    n = table.shape[0]
    ppl, bpb = _lm_values(table.sum(0)[None])
    s_ppl, s_bpb = _lm_values(resampled_sums(table, resample_indices(n, resamples, seed)))
    return {"perplexity": metric_ci(float(ppl[0]), s_ppl, n, confidence),
            "bits_per_byte": metric_ci(float(bpb[0]), s_bpb, n, confidence)}


def paired_lm(a: DocumentLoss, b: DocumentLoss, *, resamples: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict[str, dict]:
    """Model b minus model a on the same documents, for perplexity and bits per byte.

    Token counts may differ (different tokenizers); the documents and their bytes must not."""
    check_bootstrap(resamples, confidence)
    ta, tb = _lm_table(a), _lm_table(b)
    if ta.shape != tb.shape or not np.array_equal(ta[:, 2], tb[:, 2]):
        raise ValueError("paired language-model scores need the same documents (same bytes)")
    n = ta.shape[0]
    idx = resample_indices(n, resamples, seed)
    pa, ba = _lm_values(ta.sum(0)[None])
    pb, bb = _lm_values(tb.sum(0)[None])
    ra, rb = _lm_values(resampled_sums(ta, idx)), _lm_values(resampled_sums(tb, idx))
    return {"perplexity": _paired(float(pb[0] - pa[0]), rb[0] - ra[0], n, confidence),
            "bits_per_byte": _paired(float(bb[0] - ba[0]), rb[1] - ra[1], n, confidence)}
