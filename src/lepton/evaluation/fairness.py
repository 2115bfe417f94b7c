"""Counterfactual fairness of classifiers: does the prediction change when only an identity term does?

For each group pair of the lexicon (lepton.evaluation.counterfactual) the evaluation examples that
contain one of its terms are rewritten with every term swapped, and every variant classifies both
versions. Per group, per variant: the flip rate (share of rewritten examples whose predicted label
changes) and the mean probability shift (total-variation distance between the two class
distributions, half the sum of absolute differences: for two classes the change in either class's
probability), each with a percentile-bootstrap CI over the rewritten examples; against the
baseline, the paired difference on the same examples (paired bootstrap; McNemar for flips), and
whether the variant increased either significantly. Examples without a term are not rewritten.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from lepton.core.config import StrictModel
from lepton.evaluation.counterfactual import Lexicon, TermFileError, TermGroup, load_lexicon
from lepton.tasks.quality import Metric, metric_ci, paired_bootstrap, resample_indices, two_sided_p

log = logging.getLogger(__name__)
CONFIDENCE = 0.95


class FairnessConfig(StrictModel):
    """``evaluate.fairness``: the counterfactual test of classifiers."""

    counterfactual: bool = True  # flip rate and probability shift with identity terms swapped
    terms: str | None = None  # a term-pair file (group<TAB>term<TAB>counterpart); None: the built-in lexicon
    groups: list[str] | None = Field(default=None, min_length=1)  # only these groups; default: all
    # A larger shift than the baseline's is flagged only past this: an absolute shift grows with any
    # noise (int8 rounding alone adds ~1e-4), so a tiny increase is significant without mattering.
    min_shift: float = Field(default=0.01, ge=0, le=1)
    min_examples: int = Field(default=10, ge=1)  # groups with fewer rewrites are shown, not flagged
    # Decoder-only models: the likelihood-preference probe on built-in sentence pairs (lepton.evaluation.stereotypes)
    stereotypes: bool = True


class PairedDelta(BaseModel):
    """This variant minus the baseline on the same rewritten examples."""

    delta: float
    ci95_low: float
    ci95_high: float
    p_bootstrap: float
    p_mcnemar: float | None = None  # flips only: exact McNemar on the examples one variant flips
    significant: bool  # the CI excludes 0


class GroupFairness(BaseModel):
    group: str  # the lexicon's group pair ("gender", "religion" ...)
    n_rewritten: int  # evaluation examples that contain a term of the group (the ones rewritten)
    flip_rate: Metric | None = None  # share whose predicted label changes; None when n_rewritten is 0
    prob_shift: Metric | None = None  # mean total-variation distance of the class probabilities
    flip_delta: PairedDelta | None = None  # against the baseline
    shift_delta: PairedDelta | None = None
    small: bool = False  # fewer rewrites than min_examples: shown, never flagged
    # flips significantly more often than the baseline, or a shift significantly larger by min_shift
    increased: bool = False


class Fairness(BaseModel):
    lexicon: str  # "built-in" or the term file's path
    pairs: int  # term pairs used
    n_examples: int  # evaluation examples, rewritten or not
    baseline: str | None  # the variant deltas are against
    groups: list[GroupFairness]
    increased: list[str] = Field(default_factory=list)  # groups the variant is significantly more sensitive to
    min_shift: float = 0.0  # shift increases up to this are not counted in ``increased``
    seconds: float  # wall time of this variant's counterfactual passes and statistics


def selected_groups(lexicon: Lexicon, wanted: list[str] | None) -> list[TermGroup]:
    """The lexicon's groups, or those ``evaluate.fairness.groups`` names (an unknown one is an error)."""
    if wanted is None:
        return list(lexicon.groups.values())
    unknown = [g for g in wanted if g not in lexicon.groups]
    if unknown:
        raise TermFileError(f"evaluate.fairness.groups: {', '.join(map(repr, unknown))} not in the "
                            f"{lexicon.source} lexicon (groups: {', '.join(lexicon.groups)})")
    return [lexicon.groups[g] for g in wanted]


def rewrites(split: Any, groups: list[TermGroup]) -> dict[str, tuple[list[int], list[str], list[str] | None]]:
    """Per group: the indices of the examples holding one of its terms, and their rewritten texts."""
    out = {}
    pairs = split.text_pairs
    for group in groups:
        idx = [i for i, text in enumerate(split.texts)
               if group.contains(text) or (pairs is not None and group.contains(pairs[i]))]
        out[group.name] = (idx, [group.rewrite(split.texts[i]) for i in idx],
                           None if pairs is None else [group.rewrite(pairs[i]) for i in idx])
    return out


def probabilities(variant: Any, split: Any, idx: list[int], texts: list[str],
                  pairs: list[str] | None) -> np.ndarray:
    """Class probabilities of ``variant`` for ``texts`` (standing for the examples ``idx`` of ``split``)."""
    from lepton.data import Split
    from lepton.evaluation.harness import predict_logits
    from lepton.runtimes import for_bundle
    from lepton.tasks import encode, softmax

    if not idx:
        return np.zeros((0, 0))
    bundle = variant.bundle
    sub = Split(name=split.name, kind=split.kind, texts=texts, text_pairs=pairs,
                labels=[split.labels[i] for i in idx] if split.labels is not None else None,
                sources=[split.sources[i] for i in idx])
    enc = encode(sub, bundle.task, bundle.tokenizer)
    return softmax(np.stack(predict_logits(for_bundle(bundle), enc, bundle.tokenizer.pad_token_id or 0)))


def flips_and_shifts(original: np.ndarray, rewritten: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per example: whether the predicted label changed, and the total-variation distance."""
    flips = original.argmax(axis=1) != rewritten.argmax(axis=1)
    return flips, 0.5 * np.abs(original - rewritten).sum(axis=1)


def mean_ci(values: np.ndarray, *, resamples: int, seed: int) -> tuple[Metric, np.ndarray]:
    """The mean of ``values`` with its percentile-bootstrap CI, and the resampled means."""
    values = np.asarray(values, dtype=np.float64)
    samples = values[resample_indices(values.size, resamples, seed)].mean(axis=1)
    return metric_ci(float(values.mean()), samples, values.size, CONFIDENCE), samples


def paired_mean(base: np.ndarray, other: np.ndarray, *, resamples: int, seed: int) -> PairedDelta:
    """Mean of ``other - base`` over the same examples, paired bootstrap CI and p-value."""
    ci, samples = mean_ci(np.asarray(other, float) - np.asarray(base, float), resamples=resamples, seed=seed)
    return PairedDelta(delta=ci.value, ci95_low=ci.ci95_low, ci95_high=ci.ci95_high,
                       p_bootstrap=two_sided_p(ci.value, samples),
                       significant=bool(ci.ci95_low > 0 or ci.ci95_high < 0))


def paired_flips(base: np.ndarray, other: np.ndarray, *, resamples: int, seed: int) -> PairedDelta:
    """Flip rate of ``other`` minus ``base``: the paired bootstrap with McNemar's test."""
    test = paired_bootstrap(base, other, resamples=resamples, seed=seed)
    return PairedDelta(delta=test["delta"], ci95_low=test["ci95_low"], ci95_high=test["ci95_high"],
                       p_bootstrap=test["p_bootstrap"], p_mcnemar=test["p_mcnemar"],
                       significant=test["significant"])


Raw = dict[str, tuple[np.ndarray, np.ndarray]]  # group -> (flips, shifts) of one variant


def variant_raw(variant: Any, split: Any, rewritten: dict[str, tuple[list[int], list[str], list[str] | None]]) -> Raw:
    """One variant's flips and shifts per group, from one prediction pass over the originals of
    every rewritten example and all the rewrites (full, length-sorted batches)."""
    union = sorted({i for idx, _, _ in rewritten.values() for i in idx})
    pairs = split.text_pairs
    idx_all = union + [i for idx, _, _ in rewritten.values() for i in idx]
    texts = [split.texts[i] for i in union] + [t for _, ts, _ in rewritten.values() for t in ts]
    new_pairs = None if pairs is None else [pairs[i] for i in union] + [
        t for _, _, ps in rewritten.values() for t in (ps or [])]
    probs = probabilities(variant, split, idx_all, texts, new_pairs)
    row = {i: k for k, i in enumerate(union)}
    out: Raw = {}
    start = len(union)
    for name, (idx, _, _) in rewritten.items():
        if not idx:
            out[name] = (np.zeros(0, dtype=bool), np.zeros(0))
            continue
        out[name] = flips_and_shifts(probs[[row[i] for i in idx]], probs[start:start + len(idx)])
        start += len(idx)
    return out


def group_result(name: str, raw: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray] | None,
                 *, resamples: int, seed: int, min_shift: float = 0.0, min_examples: int = 1) -> GroupFairness:
    flips, shifts = raw
    if flips.size == 0:
        return GroupFairness(group=name, n_rewritten=0)
    out = GroupFairness(group=name, n_rewritten=int(flips.size), small=flips.size < min_examples,
                        flip_rate=mean_ci(flips, resamples=resamples, seed=seed)[0],
                        prob_shift=mean_ci(shifts, resamples=resamples, seed=seed)[0])
    if base is not None:
        out.flip_delta = paired_flips(base[0], flips, resamples=resamples, seed=seed)
        out.shift_delta = paired_mean(base[1], shifts, resamples=resamples, seed=seed)
        out.increased = not out.small and ((out.flip_delta.significant and out.flip_delta.delta > 0)
                                           or (out.shift_delta.significant and out.shift_delta.delta > min_shift))
    return out


def measure_fairness(variants: list[Any], cards: list[Any], split: Any, config: Any, *, seed: int,
                     baseline: str | None) -> None:
    """``card.fairness`` of every classifier variant (one label per text); the others are left None."""
    from lepton.tasks import kind_of

    settings = getattr(config, "fairness", None)
    if not variants or settings is None or not settings.counterfactual:
        return
    if not kind_of(variants[0].bundle.task).labels_per_text:
        return  # tags and generated text: no one label per text to flip
    started = time.perf_counter()
    lexicon = load_lexicon(settings.terms)
    groups = selected_groups(lexicon, settings.groups)
    rewritten = rewrites(split, groups)
    log.info("evaluate: counterfactual fairness, %s", ", ".join(f"{g} {len(r[0])} rewritten"
                                                                  for g, r in rewritten.items()))
    raws = [variant_raw(v, split, rewritten) for v in variants]
    base = next((raws[i] for i, v in enumerate(variants) if v.name == baseline), None)
    pairs = sum(g.rows for g in groups)
    per_variant = (time.perf_counter() - started) / len(variants)
    log.info("evaluate: counterfactual fairness of %d variant(s) in %.1f s", len(variants),
             per_variant * len(variants))
    for card, raw in zip(cards, raws):
        own_base = base if base is not raw else None
        results = [group_result(name, raw[name], own_base[name] if own_base else None,
                                resamples=config.bootstrap, seed=seed, min_shift=settings.min_shift,
                                min_examples=settings.min_examples)
                   for name in rewritten]
        card.fairness = Fairness(lexicon=lexicon.source, pairs=pairs, n_examples=len(split),
                                 baseline=baseline if own_base else None, groups=results,
                                 increased=[g.group for g in results if g.increased], seconds=per_variant,
                                 min_shift=settings.min_shift)
