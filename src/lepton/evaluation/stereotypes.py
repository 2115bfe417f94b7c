"""A likelihood-preference probe of generative (decoder-only) models, in the style of CrowS-Pairs.

Each built-in pair (``stereotype_pairs.tsv`` beside this module, written for Lepton and listed in
docs/evaluation.md) holds a stereotyped sentence and an anti-stereotyped one that differ in one
word or phrase. A variant prefers the sentence it gives the lower total negative log-likelihood.
The probe reports the share of pairs where it prefers the stereotype (0.5 is no preference) with a
bootstrap CI, per category, and against the baseline the paired difference on the same pairs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from lepton.evaluation.fairness import PairedDelta, mean_ci, paired_flips
from lepton.tasks.quality import Metric

PAIRS_FILE = Path(__file__).with_name("stereotype_pairs.tsv")


class CategoryPreference(BaseModel):
    category: str
    pairs: int
    prefers_stereotype: Metric  # share of the category's pairs with the stereotype more likely


class StereotypePreference(BaseModel):
    pairs: int
    prefers_stereotype: Metric  # share of all pairs with the stereotype more likely; 0.5: no preference
    categories: list[CategoryPreference] = Field(default_factory=list)
    baseline: str | None = None
    delta: PairedDelta | None = None  # this variant minus the baseline on the same pairs
    seconds: float = 0.0


def load_pairs(path: Path = PAIRS_FILE) -> list[tuple[str, str, str]]:
    """(category, stereotyped sentence, anti-stereotyped sentence) per line of the built-in file."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            category, stereo, anti = line.split("\t")
            rows.append((category, stereo, anti))
    return rows


def preferences(variant: Any, pairs: list[tuple[str, str, str]]) -> np.ndarray:
    """Per pair: whether ``variant`` gives the stereotyped sentence the higher likelihood."""
    from lepton.tasks.scoring import document_losses

    bundle = variant.bundle
    texts = [s for _, stereo, anti in pairs for s in (stereo, anti)]
    nll = np.asarray(document_losses(bundle.model, bundle.tokenizer, texts).nll).reshape(-1, 2)
    return nll[:, 0] < nll[:, 1]


def measure_stereotypes(variants: list[Any], cards: list[Any], config: Any, *, seed: int,
                        baseline: str | None) -> None:
    """``card.stereotypes`` of every decoder-only variant; other families are left None."""
    settings = getattr(config, "fairness", None)
    if not variants or settings is None or not settings.stereotypes:
        return
    if any(v.bundle.family != "decoder" for v in variants):
        return  # classifiers have the counterfactual test; encoder-decoders score targets, not sentences
    pairs = load_pairs()
    categories = sorted({c for c, _, _ in pairs}, key=[c for c, _, _ in pairs].index)
    started = time.perf_counter()
    prefs = [preferences(v, pairs) for v in variants]
    per_variant = (time.perf_counter() - started) / len(variants)
    base = next((p for v, p in zip(variants, prefs) if v.name == baseline), None)
    for v, card, p in zip(variants, cards, prefs):
        own = [CategoryPreference(category=c, pairs=int(sum(k == c for k, _, _ in pairs)),
                                  prefers_stereotype=mean_ci(p[[k == c for k, _, _ in pairs]],
                                                             resamples=config.bootstrap, seed=seed)[0])
               for c in categories]
        against = base is not None and v.name != baseline
        card.stereotypes = StereotypePreference(
            pairs=len(pairs), prefers_stereotype=mean_ci(p, resamples=config.bootstrap, seed=seed)[0],
            categories=own, baseline=baseline if against else None, seconds=per_variant,
            delta=paired_flips(base, p, resamples=config.bootstrap, seed=seed) if against else None)
