"""The evaluation harness: quality with confidence intervals and measured efficiency, the same way
for every variant and every runtime."""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lepton.evaluation.metrics import predicted_ids, tags_of
from lepton.evaluation.quality import Quality, sequence_quality, token_quality
from lepton.evaluation.scorecard import Efficiency, LatencyStats, Scorecard
from lepton.runtimes import Runtime, for_bundle
from lepton.tasks import Encoded, collate, label_ids, sorted_batches

log = logging.getLogger(__name__)


def predict_logits(runtime: Runtime, enc: Encoded, pad_id: int, batch_size: int = 64) -> list[np.ndarray]:
    """Logits per example in input order (length-sorted batches keep padding small)."""
    out: list[Any] = [None] * len(enc)
    for idx in sorted_batches(enc.lengths, batch_size):
        arr = runtime.logits(collate(enc, idx, pad_id, with_labels=False))
        for row, i in enumerate(idx):
            out[i] = arr[row]
    return out


def measure_quality(bundle: Any, split: Any, enc: Encoded, logits: list[np.ndarray], *,
                    resamples: int, seed: int) -> Quality:
    task = bundle.task
    gold = label_ids(split, task)
    pred = predicted_ids(logits, enc, task)
    if task.kind == "sequence_classification":
        return sequence_quality(gold, pred, task.labels, resamples=resamples, seed=seed)
    true_tags = [[task.labels[i] for i in sent] for sent in gold]
    return token_quality(true_tags, tags_of(pred, task), resamples=resamples, seed=seed)


# ---------------------------------------------------------------------------------------------
# Efficiency


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


def _reset_peak_rss() -> bool:
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak is this variant's, not the run's.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset_ok: bool) -> tuple[float | None, str]:
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM of the process, reset before this variant"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6,
            "ru_maxrss: peak of the whole process so far (could not reset)")


def _stats(ms: list[float], tokens: list[int]) -> LatencyStats:
    a = np.asarray(ms)
    return LatencyStats(p50=float(np.percentile(a, 50)), p95=float(np.percentile(a, 95)),
                        p99=float(np.percentile(a, 99)), mean=float(a.mean()), min=float(a.min()),
                        max=float(a.max()), n=len(ms), tokens_mean=float(np.mean(tokens)))


def _time_calls(runtime: Runtime, batches: list[dict[str, Any]], warmup: int) -> list[float]:
    for b in batches[: max(warmup, 0)]:
        runtime.logits(b)
    times = []
    for b in batches:
        start = time.perf_counter()
        runtime.logits(b)
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure_efficiency(bundle: Any, runtime: Runtime, enc: Encoded, config: Any) -> Efficiency:
    """Latency at batch 1 (real inputs, and at a fixed length), throughput at larger batches."""
    started = time.perf_counter()
    pad = bundle.tokenizer.pad_token_id or 0
    n = min(config.latency_items, len(enc))
    reset_ok = _reset_peak_rss()
    latency: dict[str, LatencyStats] = {}
    throughput: dict[str, float] = {}
    with _threads(config.threads) as threads:
        real = [collate(enc, [i], pad, with_labels=False) for i in range(n)]
        latency["b1_real"] = _stats(_time_calls(runtime, real, config.warmup),
                                    [enc.lengths[i] for i in range(n)])
        if config.fixed_length:
            reps = min(n, 30)
            fixed = [collate(enc, [i], pad, pad_to=config.fixed_length, with_labels=False)
                     for i in range(reps)]
            width = [int(b["input_ids"].shape[1]) for b in fixed]
            latency[f"b1_fixed{config.fixed_length}"] = _stats(
                _time_calls(runtime, fixed, min(config.warmup, 3)), width)
        for bs in sorted(set(config.batch_sizes)):
            if bs == 1:
                continue
            # Consecutive items in data order: a realistic mix of lengths, padded per batch.
            groups = [list(range(s, min(s + bs, len(enc)))) for s in range(0, len(enc), bs)]
            groups = groups[: config.throughput_batches + 1]
            batches = [collate(enc, g, pad, with_labels=False) for g in groups]
            runtime.logits(batches[0])  # warm-up at this shape
            timed = batches[1:] or batches
            t0 = time.perf_counter()
            for b in timed:
                runtime.logits(b)
            items = sum(int(b["input_ids"].shape[0]) for b in timed)
            throughput[f"b{bs}"] = items / (time.perf_counter() - t0)
    peak, note = _peak_rss_mb(reset_ok)
    total, nonzero = runtime.parameter_counts()
    mean_tokens = float(np.mean(enc.lengths))
    return Efficiency(
        runtime=runtime.name, device=runtime.device, threads=threads, warmup=config.warmup,
        latency_ms=latency, throughput=throughput, peak_rss_mb=peak, peak_rss_note=note,
        size_mb=runtime.size_bytes() / 1e6, params=total, nonzero_params=nonzero,
        sparsity=1 - nonzero / total if total else 0.0,
        flops_per_item=runtime.flops_per_item(mean_tokens),
        seconds=time.perf_counter() - started,
    )


def evaluate_bundle(bundle: Any, split: Any, enc: Encoded, config: Any, *, name: str,
                    stage_path: list[str], seed: int) -> Scorecard:
    """Measure one variant on one split: quality (with CIs), then efficiency."""
    runtime = for_bundle(bundle)
    pad = bundle.tokenizer.pad_token_id or 0
    log.info("evaluate %s: quality on %d %s examples", name, len(enc), split.name)
    logits = predict_logits(runtime, enc, pad)
    quality = measure_quality(bundle, split, enc, logits, resamples=config.bootstrap, seed=seed)
    log.info("evaluate %s: efficiency (%s)", name, runtime.name)
    efficiency = measure_efficiency(bundle, runtime, enc, config)
    notes = []
    if bundle.task.kind == "token_classification" and enc.word_ids is not None:
        cut = sum(1 for w, nw in zip(enc.word_ids, enc.n_words or [])
                  if nw and (max((x for x in w if x is not None), default=-1) + 1) < nw)
        if cut:
            notes.append(f"{cut} sentences were longer than max_length; their cut-off words count as 'O'")
    return Scorecard(name=name, stage_path=stage_path, split=split.name, n_examples=len(enc),
                     quality=quality, efficiency=efficiency, notes=notes)
