"""Quality per slice of the evaluation set, with CIs and the paired delta against the baseline.

Slices: per true class (kinds with one label per text), per input-length bucket (tokens under the
baseline's tokenizer, special tokens included, so every variant is sliced alike), and per value of
each column named in ``evaluate.slices``. Each slice is scored with the task kind's own quality
(its headline metric with a bootstrap CI) and compared with the baseline by the kind's own paired
test on the same examples. The worst slice (of those with at least ``slice_min_examples``
examples) is named in the verdict, and so is every slice where the variant is significantly worse
than the baseline, even when its average is not.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, Field

from lepton.tasks import kind_of, label_ids

log = logging.getLogger(__name__)


class SliceRow(BaseModel):
    by: str  # "class", "length", or the data column
    slice: str  # the class, the length bucket ("17-32 tokens") or the column's value
    n: int  # examples in the slice
    value: float  # the headline metric on the slice
    ci95_low: float
    ci95_high: float
    small: bool = False  # fewer than slice_min_examples: shown, not ranked or flagged
    delta: float | None = None  # this variant minus the baseline on the slice (paired)
    delta_ci95_low: float | None = None
    delta_ci95_high: float | None = None
    p_bootstrap: float | None = None
    significant: bool | None = None  # the delta's CI excludes 0

    @property
    def name(self) -> str:
        return f"{self.by}={self.slice}"


class Slices(BaseModel):
    metric: str  # the headline metric scored per slice
    higher_is_better: bool
    min_examples: int  # slices smaller than this are shown but not ranked
    baseline: str | None  # the variant deltas are against
    rows: list[SliceRow]
    worst: str | None  # "by=slice" of the worst ranked slice
    dropped: list[str] = Field(default_factory=list)  # slices significantly worse than the baseline
    verdict: str  # one line: the worst slice, and the significant drops
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0


def length_bucket(tokens: int, edges: list[int]) -> str:
    """The bucket name of ``tokens`` for sorted bucket ``edges`` ([16, 32] -> "1-16", "17-32", "33+")."""
    low = 1
    for edge in edges:
        if tokens <= edge:
            return f"{low}-{edge} tokens"
        low = edge + 1
    return f"{low}+ tokens"


def slice_index(split: Any, gold: Any, lengths: list[int], config: Any,
                by_class: list[str] | None) -> tuple[dict[tuple[str, str], list[int]], list[str]]:
    """(by, slice) -> example indices, in display order; and notes on columns that are missing."""
    groups: dict[tuple[str, str], list[int]] = {}
    if by_class is not None:
        for i, g in enumerate(gold):
            groups.setdefault(("class", by_class[g]), []).append(i)
        groups = dict(sorted(groups.items(), key=lambda kv: by_class.index(kv[0][1])))
    edges = sorted(set(config.length_buckets))
    order = [length_bucket(e, edges) for e in edges] + [length_bucket(edges[-1] + 1 if edges else 1, edges)]
    buckets: dict[tuple[str, str], list[int]] = {}
    for i, n in enumerate(lengths):
        buckets.setdefault(("length", length_bucket(n, edges)), []).append(i)
    groups.update(sorted(buckets.items(), key=lambda kv: order.index(kv[0][1])))
    notes = []
    for column in config.slices:
        values = split.extra.get(column)
        if values is None:
            notes.append(f"slice column {column!r} was not read with this data")
            continue
        for key in sorted(set(values)):
            groups[(column, key or "(empty)")] = [i for i, v in enumerate(values) if v == key]
    return groups, notes


def _subset(values: Any, idx: list[int]) -> list[Any]:
    return [values[i] for i in idx]


def slice_rows(task: Any, gold: Any, pred: Any, base: Any | None, groups: dict[tuple[str, str], list[int]],
               *, min_examples: int, resamples: int, seed: int) -> list[SliceRow]:
    """One row per slice: the kind's headline metric with its CI, and the paired delta vs ``base``."""
    kind = kind_of(task)
    rows = []
    for (by, name), idx in groups.items():
        g = _subset(gold, idx)
        q = kind.quality(task, g, _subset(pred, idx), resamples=resamples, seed=seed)
        m = q.metrics[q.headline]
        row = SliceRow(by=by, slice=name, n=len(idx), value=m.value, ci95_low=m.ci95_low,
                       ci95_high=m.ci95_high, small=len(idx) < min_examples)
        if base is not None:
            test = kind.paired(task, g, _subset(base, idx), _subset(pred, idx), resamples=resamples, seed=seed)
            row.delta, row.delta_ci95_low, row.delta_ci95_high = test.delta, test.ci95_low, test.ci95_high
            row.p_bootstrap, row.significant = test.p_bootstrap, test.significant
        rows.append(row)
    return rows


def summarize(rows: list[SliceRow], *, metric: str, higher: bool, min_examples: int, baseline: str | None,
              average_kept: bool | None, notes: list[str]) -> Slices:
    """The slices with the worst one and the significant drops named in one verdict line."""
    ranked = [r for r in rows if not r.small]
    worst = (min if higher else max)(ranked, key=lambda r: r.value) if ranked else None
    dropped = [r for r in ranked if r.significant and r.delta is not None and (r.delta < 0) == higher]
    parts = []
    if worst is not None:
        parts.append(f"worst slice {worst.name}: {metric} {worst.value:.4f} "
                     f"[{worst.ci95_low:.4f}, {worst.ci95_high:.4f}] (n {worst.n})")
    if dropped:
        lead = "keeps the average but " if average_kept else ""
        parts.append(lead + "significantly worse than the baseline on " + ", ".join(
            f"{r.name} ({r.delta:+.4f} [{r.delta_ci95_low:+.4f}, {r.delta_ci95_high:+.4f}])" for r in dropped))
    elif baseline is not None:
        parts.append("no slice significantly worse than the baseline")
    return Slices(metric=metric, higher_is_better=higher, min_examples=min_examples, baseline=baseline, rows=rows,
                  worst=worst.name if worst else None, dropped=[r.name for r in dropped],
                  verdict="; ".join(parts) or "no slice large enough to rank", notes=notes)


def measure_slices(variants: list[Any], cards: list[Any], split: Any, config: Any, *, seed: int,
                   baseline: str | None) -> None:
    """``card.slices`` for every variant of a classifier kind (generative kinds: left None)."""
    if not variants or not getattr(config, "slice_quality", True):
        return
    task = variants[0].bundle.task
    kind = kind_of(task)
    if not kind.uses_labels or any(len(v.predictions) != len(split) for v in variants):
        return
    started = time.perf_counter()
    gold = label_ids(split, task)
    base_i = next((i for i, v in enumerate(variants) if v.name == baseline), None)
    lengths = variants[base_i if base_i is not None else 0].encoded(split).lengths
    groups, notes = slice_index(split, gold, lengths, config, task.labels if kind.labels_per_text else None)
    min_n = config.slice_min_examples
    for i, (v, card) in enumerate(zip(variants, cards)):
        t0 = time.perf_counter()
        base = variants[base_i].predictions if base_i is not None and i != base_i else None
        rows = slice_rows(task, gold, v.predictions, base, groups, min_examples=min_n,
                          resamples=config.bootstrap, seed=seed)
        kept = card.comparison is not None and not card.comparison.significant
        card.slices = summarize(rows, metric=kind.headline, higher=kind.higher_is_better(kind.headline),
                                min_examples=min_n, baseline=baseline if base is not None else None,
                                average_kept=kept, notes=notes)
        card.slices.seconds = time.perf_counter() - t0
    log.info("evaluate: %d slices per variant in %.1f s", len(groups), time.perf_counter() - started)
