"""The evaluation harness: every variant measured the same way, on the same examples.

Quality (with bootstrap CIs), robustness and calibration come from one prediction pass per
variant. Efficiency is timed for all variants together, interleaved (A B C A B C ...), so machine
drift hits every variant alike. Each variant's difference from the baseline gets a paired test.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton.core.registry import Registry
from lepton.evaluation.generation_efficiency import measure_variants
from lepton.evaluation.scorecard import Calibration, Comparison, Efficiency, LatencyStats, Robustness, Scorecard
from lepton.runtimes import Runtime, for_bundle
from lepton.tasks import Encoded, collate, encode, kind_of, label_ids, softmax, sorted_batches
from lepton.tasks.quality import Quality, expected_calibration_error

log = logging.getLogger(__name__)


@dataclass
class Variant:
    """One model to measure: a name, how it was made, and where its saved copy lives."""

    name: str
    stage_path: list[str]
    bundle: Any
    folder: Path | None = None  # saved copy, for the fresh-process memory probe
    predictions: list[Any] = field(default_factory=list)  # filled by measure_quality
    _encoded: tuple[Any, Encoded] | None = field(default=None, repr=False)

    def encoded(self, split: Any) -> Encoded:
        """``split`` tokenized for this variant, once: quality, timing and notes all use it."""
        if self._encoded is None or self._encoded[0] is not split:
            self._encoded = (split, encode(split, self.bundle.task, self.bundle.tokenizer))
        return self._encoded[1]


def predict_logits(runtime: Runtime, enc: Encoded, pad_id: int, batch_size: int = 64) -> list[np.ndarray]:
    """Logits per example in input order (length-sorted batches keep padding small)."""
    out: list[Any] = [None] * len(enc)
    for idx in sorted_batches(enc.lengths, batch_size):
        arr = runtime.logits(collate(enc, idx, pad_id, with_labels=False))
        for row, i in enumerate(idx):
            out[i] = arr[row]
    return out


def quality_of(task: Any, gold: Any, pred: Any, *, resamples: int, seed: int) -> Quality:
    """Quality with bootstrap CIs of predictions ``pred`` against ``gold``, as the task's kind scores it."""
    return kind_of(task).quality(task, gold, pred, resamples=resamples, seed=seed)


def measure_quality(variant: Variant, split: Any, config: Any, seed: int) -> tuple[Quality, Robustness | None,
                                                                                   Calibration | None]:
    """Quality with CIs on ``split`` (and robustness and calibration where they apply): the
    variant's task kind's own measurement where it has one, else ``measure_label_quality``."""
    own = kind_of(variant.bundle.task).measure_quality(variant, split, config, seed)
    return own if own is not None else measure_label_quality(variant, split, config, seed)


def measure_label_quality(variant: Variant, split: Any, config: Any,
                          seed: int) -> tuple[Quality, Robustness | None, Calibration | None]:
    """The classifiers' measurement: one prediction pass over ``split``, quality with CIs;
    robustness and calibration where the kind gives one label per text."""
    bundle, task = variant.bundle, variant.bundle.task
    kind = kind_of(task)
    runtime = for_bundle(bundle)
    pad = bundle.tokenizer.pad_token_id or 0
    enc = variant.encoded(split)
    gold = label_ids(split, task)
    logits = predict_logits(runtime, enc, pad)
    pred = kind.predictions(logits, enc, task)
    variant.predictions = pred
    quality = quality_of(task, gold, pred, resamples=config.bootstrap, seed=seed)
    if not kind.labels_per_text:
        return quality, None, None  # e.g. tags: perturbing tokens would break the tag alignment

    probs = softmax(np.stack(logits))
    ece, bins = expected_calibration_error(probs, np.asarray(gold), bins=config.calibration_bins)
    calibration = Calibration(ece=ece, bins=bins)
    robustness = _robustness(variant, split, config, seed, runtime, pred, gold) if config.robustness else None
    return quality, robustness, calibration


def _robustness(variant: Variant, split: Any, config: Any, seed: int, runtime: Runtime, pred: list[int],
                gold: list[int]) -> Robustness:
    """Accuracy on copies of ``split`` with seeded typos and casing noise, against the clean one."""
    from lepton.evaluation.perturb import PERTURBATIONS, perturb

    bundle, task = variant.bundle, variant.bundle.task
    pad = bundle.tokenizer.pad_token_id or 0
    clean = float(np.mean(np.asarray(pred) == np.asarray(gold)))
    perturbed = {}
    for noise in PERTURBATIONS:
        noisy = type(split)(name=split.name, kind=split.kind,
                            texts=perturb(list(split.texts), noise, seed=seed, rate=config.perturb_rate),
                            text_pairs=(perturb(split.text_pairs, noise, seed=seed + 1, rate=config.perturb_rate)
                                        if split.text_pairs is not None else None),
                            labels=split.labels, sources=split.sources)
        noisy_enc = encode(noisy, task, bundle.tokenizer)
        noisy_pred = kind_of(task).predictions(predict_logits(runtime, noisy_enc, pad), noisy_enc, task)
        perturbed[noise] = float(np.mean(np.asarray(noisy_pred) == np.asarray(gold)))
    return Robustness(seed=seed, rate=config.perturb_rate, metric="accuracy", clean=clean,
                      perturbed=perturbed, drop={k: clean - v for k, v in perturbed.items()})


# ---------------------------------------------------------------------------------------------
# Efficiency, interleaved across variants


@contextmanager
def _threads(n: int | None) -> Iterator[int]:
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _stats(ms: list[float], tokens: list[int], rounds: list[float]) -> LatencyStats:
    a = np.asarray(ms)
    return LatencyStats(p50=float(np.percentile(a, 50)), p95=float(np.percentile(a, 95)),
                        p99=float(np.percentile(a, 99)), mean=float(a.mean()), min=float(a.min()),
                        max=float(a.max()), n=len(ms), tokens_mean=float(np.mean(tokens)),
                        round_medians=rounds)


def _timed(runtime: Runtime, batches: list[dict[str, Any]]) -> list[float]:
    times = []
    for b in batches:
        start = time.perf_counter()
        runtime.logits(b)
        times.append((time.perf_counter() - start) * 1000)
    return times


@dataclass
class _Plan:
    runtime: Runtime
    enc: Encoded
    real: list[dict[str, Any]]
    fixed: list[dict[str, Any]]
    throughput: dict[int, list[dict[str, Any]]]
    ms: dict[str, list[float]] = field(default_factory=dict)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    items_s: dict[int, list[float]] = field(default_factory=dict)


def fixed_length(variants: list[Variant], config: Any) -> int:
    """The fixed-length scenario's length, cut to what the models accept: a model with a
    64-position table is timed at 64 tokens, not made to fail at 128. Exported variants do not
    show their position table, so the shortest table among the variants that do sets it."""
    from lepton.models.structure import input_limit

    limits = [n for n in (input_limit(v.bundle.model) for v in variants) if n]
    return min([config.fixed_length or 128, *limits])


def _plan(variant: Variant, split: Any, config: Any, length: int) -> _Plan:
    bundle = variant.bundle
    enc = variant.encoded(split)
    pad = bundle.tokenizer.pad_token_id or 0
    n = min(config.latency_items, len(enc))
    real = [collate(enc, [i], pad, with_labels=False) for i in range(n)]
    fixed = []
    if config.fixed_length:
        fixed = [collate(enc, [i], pad, pad_to=length, with_labels=False)
                 for i in range(min(n, 30))]
    throughput = {}
    for bs in sorted(set(config.batch_sizes)):
        if bs > 1:
            # Consecutive items in data order: a realistic mix of lengths, padded per batch.
            groups = [list(range(s, min(s + bs, len(enc)))) for s in range(0, len(enc), bs)]
            throughput[bs] = [collate(enc, g, pad, with_labels=False) for g in groups[:config.throughput_batches]]
    return _Plan(for_bundle(bundle), enc, real, fixed, throughput)


def measure_efficiency(variants: list[Variant], split: Any, config: Any, *,
                       memory: bool = True) -> list[Efficiency]:
    """Latency at batch 1 (real inputs and a fixed length), throughput at larger batches, for all
    variants, interleaved over ``config.rounds`` rounds; then size, parameters and memory."""
    started = time.perf_counter()
    length = fixed_length(variants, config)
    plans = [_plan(v, split, config, length) for v in variants]
    with _threads(config.threads) as threads:
        for p in plans:  # warm-up, untimed
            for b in p.real[:config.warmup] + p.fixed[:1] + [bs[0] for bs in p.throughput.values()]:
                p.runtime.logits(b)
        for _ in range(config.rounds):
            for p in plans:
                fixed_key = f"b1_fixed{int(p.fixed[0]['input_ids'].shape[1])}" if p.fixed else "b1_fixed"
                for key, batches in (("b1_real", p.real), (fixed_key, p.fixed)):
                    if batches:
                        t = _timed(p.runtime, batches)
                        p.ms.setdefault(key, []).extend(t)
                        p.rounds.setdefault(key, []).append(float(np.median(t)))
                for bs, batches in p.throughput.items():
                    t0 = time.perf_counter()
                    for b in batches:
                        p.runtime.logits(b)
                    items = sum(int(b["input_ids"].shape[0]) for b in batches)
                    p.items_s.setdefault(bs, []).append(items / (time.perf_counter() - t0))
    per_variant = (time.perf_counter() - started) / max(len(variants), 1)
    out = []
    for v, p in zip(variants, plans):
        latency = {}
        for key, ms in p.ms.items():
            batches = p.real if key == "b1_real" else p.fixed
            latency[key] = _stats(ms, [int(b["input_ids"].shape[1]) for b in batches], p.rounds[key])
        throughput = {f"b{bs}": float(np.median(vals)) for bs, vals in p.items_s.items()}
        spread = {f"b{bs}": [float(min(vals)), float(np.median(vals)), float(max(vals))]
                  for bs, vals in p.items_s.items()}
        peak, note = None, "not measured"
        if memory and v.folder is not None:
            from lepton.evaluation.memprobe import probe

            peak, note = probe(v.folder, batch=max(config.batch_sizes), length=length)
        total, nonzero = p.runtime.parameter_counts()
        out.append(Efficiency(
            runtime=p.runtime.name, device=p.runtime.device, threads=threads, warmup=config.warmup,
            rounds=config.rounds, latency_ms=latency, throughput=throughput, throughput_spread=spread,
            peak_rss_mb=peak, peak_rss_note=note, size_mb=p.runtime.size_bytes() / 1e6,
            size_compressed_mb=_compressed_mb(p.runtime), params=total, nonzero_params=nonzero,
            sparsity=1 - nonzero / total if total else 0.0,
            flops_per_item=p.runtime.flops_per_item(float(np.mean(p.enc.lengths))),
            seconds=per_variant))
    return out


def _compressed_mb(runtime: Runtime) -> float | None:
    measure = getattr(runtime, "compressed_size_bytes", None)
    size = measure() if measure is not None else None
    return size / 1e6 if size else None


# ---------------------------------------------------------------------------------------------
# Comparison against the baseline

# Below this relative change a speed or size ratio counts as "the same": differences under ~5%
# are noise on these machines.
SAME = 0.05


def _label(speedup: float | None, smaller: float | None, smaller_compressed: float | None = None) -> str:
    faster = speedup is not None and speedup > 1 + SAME
    slower = speedup is not None and speedup < 1 - SAME
    shrunk = smaller is not None and smaller > 1 + SAME
    if not shrunk and not faster and smaller_compressed is not None and smaller_compressed > 1 + SAME:
        # Zeros (unstructured sparsity) shrink the compressed file, nothing else.
        return "smaller when compressed, not faster" if not slower else "smaller when compressed, but slower"
    if faster and shrunk:
        return "faster and smaller"
    if faster:
        return "faster"
    if shrunk:
        return "smaller, not faster" if not slower else "smaller, but slower"
    return "slower" if slower else "no gain"


def compare(base: Variant, base_card: Scorecard, other: Variant, card: Scorecard, split: Any,
            *, seed: int, resamples: int) -> Comparison:
    task = base.bundle.task
    kind = kind_of(task)
    test = kind.paired(task, label_ids(split, task), base.predictions, other.predictions,
                       resamples=resamples, seed=seed)
    better = test.delta > 0 if kind.higher_is_better(test.metric) else test.delta < 0
    verdict = ("no significant change" if not test.significant
               else "significantly better" if better else "significantly worse")
    b_eff, o_eff = base_card.efficiency, card.efficiency
    speedup = None
    if "b1_real" in b_eff.latency_ms and "b1_real" in o_eff.latency_ms:
        speedup = b_eff.latency_ms["b1_real"].p50 / o_eff.latency_ms["b1_real"].p50
    common = [k for k in b_eff.throughput if k in o_eff.throughput]
    speed_thr = None
    if common:
        key = max(common, key=lambda k: int(k[1:]))
        speed_thr = o_eff.throughput[key] / b_eff.throughput[key]
    smaller = b_eff.size_mb / o_eff.size_mb if o_eff.size_mb else None
    smaller_c = (b_eff.size_compressed_mb / o_eff.size_compressed_mb
                 if b_eff.size_compressed_mb and o_eff.size_compressed_mb else None)
    return Comparison(baseline=base.name, metric=test.metric, delta=test.delta, ci95_low=test.ci95_low,
                      ci95_high=test.ci95_high, p_bootstrap=test.p_bootstrap,
                      p_mcnemar=test.p_mcnemar, significant=test.significant, verdict=verdict,
                      speedup_b1=speedup, speedup_throughput=speed_thr, smaller=smaller,
                      smaller_compressed=smaller_c, label=_label(speedup, smaller, smaller_c))


def evaluate_variants(variants: list[Variant], split: Any, config: Any, *, seed: int,
                      baseline: str | None, qualities: dict[str, tuple[Any, Any, Any]] | None = None,
                      memory: bool = True) -> list[Scorecard]:
    """Scorecards for every variant; ``qualities`` holds results already computed (resume)."""
    qualities = dict(qualities or {})
    for v in variants:
        if v.name not in qualities or not v.predictions:
            log.info("evaluate %s: quality on %d %s examples", v.name, len(split), split.name)
            qualities[v.name] = measure_quality(v, split, config, seed)
    log.info("evaluate: efficiency of %d variant(s), %d interleaved rounds", len(variants), config.rounds)
    effs = efficiency_measures.get(kind_of(variants[0].bundle.task).efficiency)(variants, split, config,
                                                                               memory=memory)
    cards = []
    for v, eff in zip(variants, effs):
        quality, robustness, calibration = qualities[v.name]
        cards.append(Scorecard(name=v.name, stage_path=v.stage_path, split=split.name,
                               n_examples=len(split), quality=quality, efficiency=eff,
                               robustness=robustness, calibration=calibration,
                               notes=_notes(v, split)))
    base_idx = next((i for i, v in enumerate(variants) if v.name == baseline), None)
    if base_idx is not None:
        for i, (v, card) in enumerate(zip(variants, cards)):
            if i != base_idx:
                card.comparison = compare(variants[base_idx], cards[base_idx], v, card, split,
                                          seed=seed, resamples=config.bootstrap)
    # Whom the errors fall on: quality per slice, counterfactual fairness (classifiers), and the
    # stereotype-preference probe (decoder-only models)
    from lepton.evaluation.fairness import measure_fairness
    from lepton.evaluation.slices import measure_slices
    from lepton.evaluation.stereotypes import measure_stereotypes

    measure_slices(variants, cards, split, config, seed=seed, baseline=baseline)
    measure_fairness(variants, cards, split, config, seed=seed, baseline=baseline)
    measure_stereotypes(variants, cards, config, seed=seed, baseline=baseline)
    # Why each variant decides: token attributions, their faithfulness, agreement with the baseline
    from lepton.evaluation.explain import explain_variants

    explained = explain_variants(variants, split, config, seed=seed, baseline=baseline)
    for card in cards:
        card.explanation = explained.get(card.name)
    return cards


def _notes(v: Variant, split: Any) -> list[str]:
    return kind_of(v.bundle.task).notes(v.encoded(split))


# How a task kind's models are timed (``TaskKind.efficiency``): name -> (variants, split, config,
# memory=...) -> an Efficiency per variant.
efficiency_measures: Registry[Callable[..., list[Any]]] = Registry("efficiency measure")
efficiency_measures.add("forward", measure_efficiency)
efficiency_measures.add("generation", measure_variants)
