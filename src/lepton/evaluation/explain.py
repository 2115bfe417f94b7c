"""Why a model decides, in the evaluation standard: every variant's token attributions on the same
seeded sample of the evaluation split, how faithful they are (comprehensiveness and sufficiency
against a random ranking, with bootstrap CIs) and how far a compressed variant's reasons moved
from the baseline's (top-k overlap and Spearman rank correlation with CIs, and the examples where
they diverge most).

Every variant explains the class the baseline predicted (its own prediction where there is no
baseline), so two variants' reasons answer the same question; on the few examples where a
variant predicts another class its attributions say why it doubts the baseline's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lepton.evaluation.attribution import (
    Example,
    ExplainError,
    attribute,
    examples_of,
    kept,
    probabilities,
    removed,
    special_ids,
)
from lepton.evaluation.explanation import Agreement, Divergent, Explanation, Faithfulness, TokenScores
from lepton.runtimes import for_bundle, runtime_info
from lepton.tasks import kind_of
from lepton.tasks.quality import Metric, metric_ci, resample_indices

log = logging.getLogger(__name__)


def sample_indices(n: int, items: int, seed: int) -> list[int]:
    """A seeded sample of ``items`` example positions out of ``n``, in split order."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=min(items, n), replace=False))


def mean_ci(values: Sequence[float] | np.ndarray, resamples: int, seed: int) -> Metric:
    """The mean of per-example ``values`` with a seeded 95% bootstrap interval."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return Metric(value=float("nan"), ci95_low=float("nan"), ci95_high=float("nan"), n=0)
    samples = a[resample_indices(len(a), resamples, seed)].mean(axis=1)
    return metric_ci(float(a.mean()), samples, len(a), 0.95)


def top_count(n: int, fraction: float) -> int:
    return min(n, max(1, math.ceil(fraction * n)))


def perturbation_scores(runtime: Any, examples: Sequence[Example], rankings: Sequence[np.ndarray],
                        targets: Sequence[int], full: np.ndarray, fractions: Sequence[float],
                        pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Per example: comprehensiveness and sufficiency of ``rankings`` (content-token indices,
    strongest first), each the class probability's drop averaged over ``fractions``."""
    inputs: list[Example] = []
    for ex, order in zip(examples, rankings):
        for f in fractions:
            top = [ex.content[j] for j in order[:top_count(len(ex.content), f)]]
            inputs += [removed(ex, top), kept(ex, top)]
    probs = probabilities(runtime, inputs, pad_id)
    width = 2 * len(fractions)
    comp, suff = np.zeros(len(examples)), np.zeros(len(examples))
    for n, target in enumerate(targets):
        block = probs[n * width:(n + 1) * width, target]
        comp[n] = float(np.mean(full[n, target] - block[0::2]))
        suff[n] = float(np.mean(full[n, target] - block[1::2]))
    return comp, suff


def faithfulness(runtime: Any, examples: Sequence[Example], scores: Sequence[np.ndarray], targets: Sequence[int],
                 full: np.ndarray, settings: Any, *, pad_id: int, seed: int, resamples: int) -> Faithfulness:
    """Comprehensiveness and sufficiency of the method's ranking and of a seeded random one."""
    rng = np.random.default_rng(seed)
    ranked = [np.argsort(-s, kind="stable") for s in scores]
    shuffled = [rng.permutation(len(ex.content)) for ex in examples]
    comp, suff = perturbation_scores(runtime, examples, ranked, targets, full, settings.fractions, pad_id)
    r_comp, r_suff = perturbation_scores(runtime, examples, shuffled, targets, full, settings.fractions, pad_id)
    return Faithfulness(
        fractions=list(settings.fractions), comprehensiveness=mean_ci(comp, resamples, seed),
        sufficiency=mean_ci(suff, resamples, seed), random_comprehensiveness=mean_ci(r_comp, resamples, seed),
        random_sufficiency=mean_ci(r_suff, resamples, seed),
        comprehensiveness_gain=mean_ci(comp - r_comp, resamples, seed),
        sufficiency_gain=mean_ci(r_suff - suff, resamples, seed))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None where either side is constant."""
    from scipy.stats import rankdata

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def agreement(base: dict[str, Any], mine: dict[str, Any], settings: Any, *, resamples: int,
              seed: int) -> Agreement:
    """This variant's attributions against the baseline's, on the examples both tokenize alike."""
    overlaps, rhos, where = [], [], []
    for n, (b_ex, ex) in enumerate(zip(base["examples"], mine["examples"])):
        if b_ex.ids != ex.ids or not ex.content:
            continue  # e.g. a trimmed vocabulary: other tokens, nothing to line up
        a, b = base["scores"][n], mine["scores"][n]
        k = top_count(len(a), settings.top_fraction)
        top_a, top_b = set(np.argsort(-a, kind="stable")[:k]), set(np.argsort(-b, kind="stable")[:k])
        overlaps.append(len(top_a & top_b) / k)
        rho = spearman(a, b)
        if rho is not None:
            rhos.append(rho)
            where.append((rho, n))
    divergent = [_divergent(base, mine, n, rho, settings) for rho, n in sorted(where)[:settings.divergent]]
    return Agreement(baseline=base["name"], n=len(overlaps), top_fraction=settings.top_fraction,
                     top_k_overlap=mean_ci(overlaps, resamples, seed), spearman=mean_ci(rhos, resamples, seed),
                     divergent=divergent)


def _divergent(base: dict[str, Any], mine: dict[str, Any], n: int, rho: float, settings: Any) -> Divergent:
    a, b = base["scores"][n], mine["scores"][n]
    tokens = mine["tokens"][n]
    k = top_count(len(a), settings.top_fraction)
    return Divergent(index=mine["indices"][n], tokens=tokens, baseline_scores=_rounded(a), scores=_rounded(b),
                     spearman=rho, baseline_top=[tokens[j] for j in np.argsort(-a, kind="stable")[:k]],
                     top=[tokens[j] for j in np.argsort(-b, kind="stable")[:k]])


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in values]


def _method(variant: Any, settings: Any) -> str:
    """The method this variant is explained with: ig only where it has PyTorch gradients."""
    if settings.method == "ig" and runtime_info(variant.bundle.runtime).trainable:
        return "ig"
    return "occlusion"


def _attributions(variant: Any, split: Any, indices: list[int], settings: Any,
                  targets: Sequence[int] | None) -> dict[str, Any]:
    """One variant's attributions on the sample (occlusion where ig cannot run on it)."""
    bundle = variant.bundle
    examples = examples_of(variant.encoded(split), indices, special_ids(bundle.tokenizer))
    runtime = for_bundle(bundle)
    method = _method(variant, settings)
    try:
        scores, full = attribute(bundle, runtime, examples, method=method, steps=settings.steps, targets=targets)
    except ExplainError as err:
        log.warning("evaluate %s: %s; explained by occlusion instead", variant.name, err)
        method = "occlusion"
        scores, full = attribute(bundle, runtime, examples, method=method, targets=targets)
    tokens = [bundle.tokenizer.convert_ids_to_tokens([ex.ids[p] for p in ex.content]) for ex in examples]
    return {"name": variant.name, "examples": examples, "scores": scores, "full": full, "method": method,
            "tokens": tokens, "indices": indices, "runtime": runtime}


def explain_variants(variants: Sequence[Any], split: Any, config: Any, *, seed: int,
                     baseline: str | None) -> dict[str, Explanation]:
    """An Explanation per variant (empty where ``config.explain`` is off or the kind has no
    attributions): the baseline first, whose predictions set the class every variant explains."""
    settings = getattr(config, "explain", None)
    if settings is None or not settings.enabled or not variants or len(split) == 0:
        return {}
    if not kind_of(variants[0].bundle.task).labels_per_text:
        return {}
    indices = sample_indices(len(split), settings.items, seed)
    ordered = sorted(variants, key=lambda v: v.name != baseline)
    base: dict[str, Any] | None = None
    out = {}
    for v in ordered:
        started = time.perf_counter()
        targets = [int(np.argmax(p)) for p in base["full"]] if base is not None else None
        mine = _attributions(v, split, indices, settings, targets)
        own = targets or [int(np.argmax(p)) for p in mine["full"]]
        faith = faithfulness(mine["runtime"], mine["examples"], mine["scores"], own, mine["full"], settings,
                             pad_id=v.bundle.tokenizer.pad_token_id or 0, seed=seed, resamples=config.bootstrap)
        agree = agreement(base, mine, settings, resamples=config.bootstrap, seed=seed) if base is not None else None
        labels = v.bundle.task.labels
        samples = [TokenScores(index=indices[n], tokens=mine["tokens"][n], scores=_rounded(mine["scores"][n]),
                               label=labels[own[n]], probability=float(mine["full"][n, own[n]]))
                   for n in range(min(settings.samples, len(indices)))]
        out[v.name] = Explanation(
            method=mine["method"], target="baseline prediction" if base is not None else "own prediction",
            items=len(indices), seed=seed, seconds=time.perf_counter() - started, faithfulness=faith,
            agreement=agree, samples=samples)
        if v.name == baseline:
            base = mine
    return out
