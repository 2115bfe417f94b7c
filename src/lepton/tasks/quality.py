"""Quality metrics with percentile-bootstrap confidence intervals.

Every point value is computed on the full data; its interval comes from resampling the units the
data is made of (examples for sequence classification, sentences for NER) with replacement. One
(resamples, n) index array is drawn per call from a seeded numpy Generator and reused for every
metric, so the intervals of different metrics describe the same resamples and a seed reproduces
them exactly.

Zero-division convention (as scikit-learn's and seqeval's ``zero_division=0``): precision of a class
nothing was predicted as, recall of a class with no true items, and F1 when precision and recall are
both 0, are 0. The same rule applies inside every resample.

Inputs are checked and a ValueError is raised when they are inconsistent: these functions are fed
by Lepton's own code, so a bad input is a programming error, not a user error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from pydantic import BaseModel

# Bound on the elements of one temporary (rows x n) block while resampling: keeps memory to tens
# of MB however large B * n is.
_CHUNK_ELEMENTS = 4_000_000


class Metric(BaseModel):
    value: float
    ci95_low: float
    ci95_high: float
    n: int  # number of resampled units (examples, or sentences for NER)


class ClassRow(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class Quality(BaseModel):
    task: str  # the task kind measured
    headline: str  # key into metrics of the main metric ("accuracy" or "entity_f1")
    metrics: dict[str, Metric]
    per_class: list[ClassRow]  # per label (sequence) or per entity type (NER)
    labels: list[str]
    # rows = true, cols = predicted, in `labels` order; None for NER
    confusion: list[list[int]] | None
    bootstrap: dict[str, int | float]  # {"resamples": B, "seed": s, "confidence": 0.95}
    signatures: dict[str, str] = {}  # metric -> how it was computed (sacrebleu's signature for BLEU/chrF)


# ----------------------------------------------------------------------------------- helpers


def check_bootstrap(resamples: int, confidence: float) -> None:
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """A (resamples, n) array of indices drawn with replacement; int32 to halve its memory."""
    rng = np.random.default_rng(seed)
    dtype = np.int32 if n < 2**31 else np.int64
    return rng.integers(0, n, size=(int(resamples), n), dtype=dtype)


def _row_chunks(rows: int, width: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, numerator / safe)


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray):
    """Precision, recall and F1 (elementwise), F1 as 2PR/(P+R) the way seqeval computes it."""
    precision = _divide(tp, n_pred)
    recall = _divide(tp, n_true)
    f1 = _divide(2 * precision * recall, precision + recall)
    return precision, recall, f1


def metric_ci(value: float, samples: np.ndarray, n: int, confidence: float) -> Metric:
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1.0 - alpha / 2])
    return Metric(value=float(value), ci95_low=float(low), ci95_high=float(high), n=int(n))


def _bootstrap_info(resamples: int, seed: int, confidence: float) -> dict[str, int | float]:
    return {"resamples": int(resamples), "seed": int(seed), "confidence": float(confidence)}


def resampled_sums(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Column sums of `counts` (n, m) over each resample in `idx` (B, n) -> (B, m).

    Each block of resamples becomes a (rows, n) multiplicity matrix (how often each unit was
    drawn), so the sums are one matrix product instead of a (B, n, m) gather.
    """
    resamples, n = idx.shape
    out = np.empty((resamples, counts.shape[1]), dtype=np.float64)
    counts = counts.astype(np.float64)
    for rows in _row_chunks(resamples, n):
        block = idx[rows]
        height = block.shape[0]
        flat = (block + (np.arange(height, dtype=np.int64) * n)[:, None]).ravel()
        multiplicity = np.bincount(flat, minlength=height * n).reshape(height, n)
        out[rows] = multiplicity @ counts
    return out


# ------------------------------------------------------------------- sequence classification


def _as_label_ids(values, name: str, n_labels: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"{name} must hold integer label ids, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= n_labels):
        bad = array[(array < 0) | (array >= n_labels)][0]
        raise ValueError(f"{name} holds label id {bad}, outside 0..{n_labels - 1}")
    return array


def sequence_point_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> dict[str, float]:
    """Point values only (no bootstrap): accuracy, macro P/R/F1, and F1 of label 1 for 2 labels.
    Cheap enough for model selection during training."""
    codes = np.asarray(y_true, dtype=np.int64) * n_labels + np.asarray(y_pred, dtype=np.int64)
    confusion = np.bincount(codes, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
    return {k: float(v) for k, v in _sequence_stats(confusion).items() if not k.startswith("_")}


def _sequence_stats(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from confusion matrices of shape (..., K, K); rows true, columns predicted."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    n_true = confusion.sum(axis=-1)
    n_pred = confusion.sum(axis=-2)
    total = n_true.sum(axis=-1)
    precision, recall, f1 = _prf(tp, n_pred, n_true)
    stats = {
        "accuracy": _divide(tp.sum(axis=-1), total),
        "macro_precision": precision.mean(axis=-1),
        "macro_recall": recall.mean(axis=-1),
        "macro_f1": f1.mean(axis=-1),
        "_precision": precision,
        "_recall": recall,
        "_f1": f1,
    }
    if confusion.shape[-1] == 2:
        stats["f1"] = f1[..., 1]
    return stats


def sequence_quality(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: list[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Quality:
    """Accuracy, macro precision/recall/F1 (and positive-class F1 for 2 labels) with bootstrap CIs.

    `y_true` and `y_pred` are label ids indexing `labels`. Macro averages are the unweighted mean
    over *all* of `labels`, including labels absent from both `y_true` and `y_pred` (they score 0);
    macro F1 is the mean of per-class F1s, not the F1 of macro precision and recall. For two labels
    "f1" is the F1 of label index 1 (the positive class). Zero divisions give 0 (module docstring).
    """
    true, pred = _sequence_label_ids(y_true, y_pred, labels, resamples, confidence)
    k = len(labels)
    n = true.size

    codes = true * k + pred
    confusion = np.bincount(codes, minlength=k * k).reshape(k, k)
    point = _sequence_stats(confusion)

    idx = resample_indices(n, resamples, seed)
    samples = _sequence_stats(_resampled_confusions(codes, idx, k))

    names = ["accuracy", "macro_precision", "macro_recall", "macro_f1"] + (["f1"] if k == 2 else [])
    metrics = {name: metric_ci(point[name], samples[name], n, confidence) for name in names}
    return Quality(
        task="sequence_classification",
        headline="accuracy",
        metrics=metrics,
        per_class=_class_rows(point, confusion.sum(axis=1), labels),
        labels=list(labels),
        confusion=confusion.tolist(),
        bootstrap=_bootstrap_info(resamples, seed, confidence),
    )


def _sequence_label_ids(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: list[str],
    resamples: int,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Check `sequence_quality`'s arguments; returns the true and predicted label ids."""
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels}")
    check_bootstrap(resamples, confidence)
    k = len(labels)
    true = _as_label_ids(y_true, "y_true", k)
    pred = _as_label_ids(y_pred, "y_pred", k)
    if true.size != pred.size:
        raise ValueError(f"y_true has {true.size} items but y_pred has {pred.size}")
    if true.size == 0:
        raise ValueError("cannot measure quality on zero examples")
    return true, pred


def _resampled_confusions(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """One K x K confusion matrix per bootstrap resample (rows of `idx`) of the codes true*K+pred."""
    n = codes.size
    resampled = np.empty((idx.shape[0], k, k), dtype=np.int64)
    for rows in _row_chunks(idx.shape[0], n):
        block = codes[idx[rows]]
        height = block.shape[0]
        offsets = (np.arange(height, dtype=np.int64) * (k * k))[:, None]
        resampled[rows] = np.bincount(
            (block + offsets).ravel(), minlength=height * k * k
        ).reshape(height, k, k)
    return resampled


def _class_rows(point: dict[str, np.ndarray], support: np.ndarray, labels: Sequence[str]) -> list[ClassRow]:
    """Per-class precision, recall, F1 and support rows, in the order of `labels`."""
    return [
        ClassRow(
            label=label,
            precision=float(point["_precision"][i]),
            recall=float(point["_recall"][i]),
            f1=float(point["_f1"][i]),
            support=int(support[i]),
        )
        for i, label in enumerate(labels)
    ]


# ------------------------------------------------------------------------ token classification


def _token_stats(sums: np.ndarray, n_types: int) -> dict[str, np.ndarray]:
    """Metrics from summed counts (..., 3T+2): tp per type, predicted per type, true per type,
    correct tokens, tokens."""
    t = n_types
    tp, n_pred, n_true = sums[..., :t], sums[..., t : 2 * t], sums[..., 2 * t : 3 * t]
    precision, recall, f1 = _prf(tp, n_pred, n_true)
    micro_p, micro_r, micro_f1 = _prf(tp.sum(axis=-1), n_pred.sum(axis=-1), n_true.sum(axis=-1))
    macro_f1 = f1.mean(axis=-1) if t else np.zeros(sums.shape[:-1])
    return {
        "entity_precision": micro_p,
        "entity_recall": micro_r,
        "entity_f1": micro_f1,
        "macro_entity_f1": macro_f1,
        "token_accuracy": _divide(sums[..., 3 * t], sums[..., 3 * t + 1]),
        "_precision": precision,
        "_recall": recall,
        "_f1": f1,
    }


def _sentence_entities(tags: list[str]) -> dict[str, set[tuple[int, int]]]:
    # seqeval loads scikit-learn (about a second): imported where entities are read, so that
    # importing the metrics (every task kind does) stays quick.
    from seqeval.metrics.sequence_labeling import get_entities

    entities: dict[str, set[tuple[int, int]]] = {}
    for type_name, start, end in get_entities(list(tags)):
        entities.setdefault(type_name, set()).add((start, end))
    return entities


def token_quality(
    true_tags: list[list[str]],
    pred_tags: list[list[str]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Quality:
    """Entity-level precision/recall/F1 as seqeval computes them, with CIs over sentences.

    Tags are IOB2 strings; entities are read with seqeval's default (non-strict) rules, so the
    point values equal `seqeval.metrics.f1_score` and friends. Metrics: entity_precision,
    entity_recall, entity_f1 (micro over entities), macro_entity_f1 (mean of per-type F1 over every
    type seen in either tags or predictions, like seqeval's "macro avg"), token_accuracy (share of
    tokens whose tag is exactly right). Zero divisions give 0 (module docstring).
    """
    check_bootstrap(resamples, confidence)
    _check_tag_lists(true_tags, pred_tags)

    types, counts = _sentence_counts(true_tags, pred_tags)
    t = len(types)
    n = len(true_tags)

    point = _token_stats(counts.sum(axis=0).astype(np.float64), t)
    idx = resample_indices(n, resamples, seed)
    samples = _token_stats(resampled_sums(counts, idx), t)

    names = ["entity_precision", "entity_recall", "entity_f1", "macro_entity_f1", "token_accuracy"]
    metrics = {name: metric_ci(point[name], samples[name], n, confidence) for name in names}
    support = counts[:, 2 * t : 3 * t].sum(axis=0)
    return Quality(
        task="token_classification",
        headline="entity_f1",
        metrics=metrics,
        per_class=_class_rows(point, support, types),
        labels=types,
        confusion=None,
        bootstrap=_bootstrap_info(resamples, seed, confidence),
    )


def _check_tag_lists(true_tags: list[list[str]], pred_tags: list[list[str]]) -> None:
    """The same number of sentences (at least one), each a list with as many predictions as tags."""
    if len(true_tags) != len(pred_tags):
        raise ValueError(
            f"true_tags has {len(true_tags)} sentences but pred_tags has {len(pred_tags)}"
        )
    if not true_tags:
        raise ValueError("cannot measure quality on zero sentences")
    for i, (true, pred) in enumerate(zip(true_tags, pred_tags)):
        if isinstance(true, str) or isinstance(pred, str):
            raise ValueError(f"sentence {i}: tags must be a list of strings per sentence")
        if len(true) != len(pred):
            raise ValueError(f"sentence {i} has {len(true)} true tags but {len(pred)} predicted")


def _sentence_counts(
    true_tags: list[list[str]], pred_tags: list[list[str]]
) -> tuple[list[str], np.ndarray]:
    """The entity types (sorted) and per-sentence counts (N, 3T+2): tp per type, predicted per
    type, true per type, correct tokens, tokens (the layout `_token_stats` reads)."""
    true_entities = [_sentence_entities(tags) for tags in true_tags]
    pred_entities = [_sentence_entities(tags) for tags in pred_tags]
    types = sorted({name for ents in true_entities + pred_entities for name in ents})
    t = len(types)
    counts = np.zeros((len(true_tags), 3 * t + 2), dtype=np.int64)
    for i, (true_ents, pred_ents) in enumerate(zip(true_entities, pred_entities)):
        for j, name in enumerate(types):
            gold, guess = true_ents.get(name, set()), pred_ents.get(name, set())
            counts[i, j] = len(gold & guess)
            counts[i, t + j] = len(guess)
            counts[i, 2 * t + j] = len(gold)
        counts[i, 3 * t] = sum(a == b for a, b in zip(true_tags[i], pred_tags[i]))
        counts[i, 3 * t + 1] = len(true_tags[i])
    return types, counts


# --------------------------------------------------------------------- comparing two variants


def _as_correct(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype != bool:
        if array.size and not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1")
        array = array.astype(bool)
    return array


def _mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: binomial(discordant, 1/2) tail at the smaller count, x2."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    k = min(a_only, b_only)
    if discordant <= 10_000:
        tail = sum(math.comb(discordant, i) for i in range(k + 1)) / 2**discordant
    else:  # exact big integers get slow; log-space is accurate to ~1e-12 relative
        logs = [
            math.lgamma(discordant + 1) - math.lgamma(i + 1) - math.lgamma(discordant - i + 1)
            for i in range(k + 1)
        ]
        top = max(logs)
        log_tail = top + math.log(sum(math.exp(x - top) for x in logs))
        tail = math.exp(log_tail - discordant * math.log(2))
    return min(1.0, 2.0 * tail)


def two_sided_p(delta: float, samples: np.ndarray) -> float:
    """Twice the share of resampled deltas on the other side of 0 (or at 0), capped at 1."""
    if delta > 0:
        return min(1.0, 2.0 * float(np.mean(samples <= 0)))
    if delta < 0:
        return min(1.0, 2.0 * float(np.mean(samples >= 0)))
    return 1.0


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Is variant b more (or less) accurate than a on the same examples?

    `correct_a[i]` / `correct_b[i]` say whether each variant got example i right. Returns delta
    (accuracy of b minus a) with a paired percentile-bootstrap CI; p_bootstrap, twice the share of
    resamples whose delta has the opposite sign to the observed one or is 0 (capped at 1; 1 when
    the observed delta is 0); p_mcnemar, the exact McNemar test on the discordant pairs;
    significant, whether the CI excludes 0; and n, the number of examples.
    """
    check_bootstrap(resamples, confidence)
    a = _as_correct(correct_a, "correct_a")
    b = _as_correct(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"correct_a has {a.size} items but correct_b has {b.size}")
    if a.size == 0:
        raise ValueError("cannot compare variants on zero examples")
    n = a.size
    diff = b.astype(np.int8) - a.astype(np.int8)
    delta = float(diff.mean())

    idx = resample_indices(n, resamples, seed)
    samples = np.empty(idx.shape[0], dtype=np.float64)
    for rows in _row_chunks(idx.shape[0], n):
        samples[rows] = diff[idx[rows]].mean(axis=1)
    ci = metric_ci(delta, samples, n, confidence)

    p_bootstrap = two_sided_p(delta, samples)
    p_mcnemar = _mcnemar_exact(int(np.sum(a & ~b)), int(np.sum(b & ~a)))
    return {
        "delta": delta,
        "ci95_low": ci.ci95_low,
        "ci95_high": ci.ci95_high,
        "p_bootstrap": p_bootstrap,
        "p_mcnemar": p_mcnemar,
        "significant": bool(ci.ci95_low > 0 or ci.ci95_high < 0),
        "n": n,
    }


# -------------------------------------------------------------------------------- calibration


def expected_calibration_error(
    probs: np.ndarray, y_true: Sequence[int] | np.ndarray, bins: int = 15
) -> tuple[float, list[dict]]:
    """Expected calibration error over equal-width confidence bins, and the reliability table.

    Confidence is the top class probability; bin i covers (i/bins, (i+1)/bins] (the first bin also
    holds 0). ECE = sum over bins of (count / n) * |accuracy - mean confidence|. Each table row has
    lower, upper, count, mean_confidence and accuracy; the last two are None for an empty bin.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must have shape (n, K) with n, K >= 1, got {p.shape}")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be finite and within [0, 1]")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each row of probs must sum to 1 (pass probabilities, not logits)")
    y = _as_label_ids(y_true, "y_true", p.shape[1])
    if y.size != p.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {y.size} items")

    bins = int(bins)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)

    ece = 0.0
    table = []
    for i in range(bins):
        row: dict = {"lower": i / bins, "upper": (i + 1) / bins, "count": int(count[i])}
        if count[i]:
            mean_conf = conf_sum[i] / count[i]
            accuracy = correct_sum[i] / count[i]
            ece += count[i] / y.size * abs(accuracy - mean_conf)
            row.update(mean_confidence=float(mean_conf), accuracy=float(accuracy))
        else:
            row.update(mean_confidence=None, accuracy=None)
        table.append(row)
    return float(ece), table


def _entity_counts(true_tags: list[list[str]], pred_tags: list[list[str]]) -> np.ndarray:
    """Per sentence: (correct entities, predicted entities, true entities), any type."""
    from seqeval.metrics.sequence_labeling import get_entities

    out = np.zeros((len(true_tags), 3), dtype=np.int64)
    for i, (true, pred) in enumerate(zip(true_tags, pred_tags)):
        gold = set(get_entities(list(true)))
        guess = set(get_entities(list(pred)))
        out[i] = (len(gold & guess), len(guess), len(gold))
    return out


def _micro_f1(sums: np.ndarray) -> np.ndarray:
    tp, n_pred, n_true = sums[..., 0], sums[..., 1], sums[..., 2]
    denom = n_pred + n_true
    return np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=np.float64), where=denom > 0)


def paired_entity_f1(true_tags: list[list[str]], pred_a: list[list[str]], pred_b: list[list[str]], *,
                     resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Entity F1 of b minus a, paired over sentences: the same keys as `paired_bootstrap`
    (p_mcnemar is None: entity F1 has no per-item right/wrong to pair)."""
    check_bootstrap(resamples, confidence)
    ca, cb = _entity_counts(true_tags, pred_a), _entity_counts(true_tags, pred_b)
    n = len(true_tags)
    if n == 0:
        raise ValueError("cannot compare variants on zero sentences")
    delta = float(_micro_f1(cb.sum(0).astype(float)) - _micro_f1(ca.sum(0).astype(float)))
    idx = resample_indices(n, resamples, seed)
    samples = _micro_f1(resampled_sums(cb, idx).astype(float)) - _micro_f1(resampled_sums(ca, idx).astype(float))
    ci = metric_ci(delta, samples, n, confidence)
    p = two_sided_p(delta, samples)
    return {"delta": delta, "ci95_low": ci.ci95_low, "ci95_high": ci.ci95_high, "p_bootstrap": p,
            "p_mcnemar": None, "significant": bool(ci.ci95_low > 0 or ci.ci95_high < 0), "n": n}
