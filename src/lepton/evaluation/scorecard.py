"""The typed results: one Scorecard per evaluated variant, and the Report that holds them all.

This is the one definition of report.json; ``lepton.pipeline.report.json_schema()`` derives its JSON Schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from lepton.evaluation.environment import Environment
from lepton.evaluation.explanation import Explanation
from lepton.evaluation.fairness import Fairness
from lepton.evaluation.slices import Slices
from lepton.evaluation.stereotypes import StereotypePreference
from lepton.tasks.quality import Quality

REPORT_SCHEMA_VERSION = 1


class LatencyStats(BaseModel):
    """Milliseconds per call."""

    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float
    n: int  # timed calls
    tokens_mean: float  # mean tokens per item (including special tokens and any padding)
    round_medians: list[float] = []  # median of each interleaved round: the spread across rounds


class Efficiency(BaseModel):
    runtime: str
    device: str
    threads: int
    warmup: int  # untimed calls before timing
    rounds: int = 1  # interleaved timing rounds (A B C A B C ...)
    latency_ms: dict[str, LatencyStats]  # "b1_real" (real dev inputs), "b1_fixed128" ...
    throughput: dict[str, float]  # "b32" -> items/s over real dev inputs with dynamic padding (median of rounds)
    throughput_spread: dict[str, list[float]] = {}  # "b32" -> [min, median, max] over rounds
    peak_rss_mb: float | None  # process peak resident memory while measuring this variant
    peak_rss_note: str  # how peak_rss_mb was obtained
    size_mb: float  # weights as saved (MB = 1e6 bytes)
    size_compressed_mb: float | None = None  # the weights after zlib: shows what zeros buy
    params: int
    nonzero_params: int
    sparsity: float
    flops_per_item: float | None  # estimate at the mean real input length
    seconds: float  # wall time of the efficiency measurement
    # Generative models: MLPerf's single-stream and offline scenarios (lepton.evaluation.generation_efficiency)
    generative: dict[str, Any] | None = None


class Comparison(BaseModel):
    """This variant against the baseline on the same examples (paired)."""

    baseline: str
    metric: str  # the headline metric compared
    delta: float  # this variant minus the baseline
    ci95_low: float
    ci95_high: float
    p_bootstrap: float  # two-sided paired bootstrap p-value
    p_mcnemar: float | None  # exact McNemar test on per-example correctness (classification)
    significant: bool  # the CI of the delta excludes 0
    verdict: str  # "no significant change" | "significantly better" | "significantly worse"
    speedup_b1: float | None  # baseline b1_real p50 / this p50
    speedup_throughput: float | None  # this / baseline at the largest common batch size
    smaller: float | None  # baseline size / this size
    smaller_compressed: float | None = None  # the same ratio for zlib-compressed weights
    label: str  # "faster and smaller", "smaller, not faster", "faster", "no gain", "slower" ...


class Robustness(BaseModel):
    """Accuracy under seeded input perturbations, and its drop from clean accuracy."""

    seed: int
    rate: float  # share of words (or characters for typos) perturbed
    metric: str
    clean: float
    perturbed: dict[str, float]  # perturbation -> metric value
    drop: dict[str, float]  # perturbation -> clean - perturbed


class Calibration(BaseModel):
    ece: float  # expected calibration error, equal-width confidence bins
    bins: list[dict[str, Any]]  # lower, upper, count, mean_confidence, accuracy


class Scorecard(BaseModel):
    name: str  # "pretrained", "finetune", ...
    stage_path: list[str]  # stages applied to reach this variant
    split: str
    n_examples: int
    quality: Quality
    efficiency: Efficiency
    notes: list[str] = Field(default_factory=list)
    comparison: Comparison | None = None  # None for the baseline itself
    robustness: Robustness | None = None
    calibration: Calibration | None = None
    slices: Slices | None = None  # quality per slice, the worst one, drops against the baseline
    fairness: Fairness | None = None  # counterfactual identity-term swaps (classifiers)
    stereotypes: StereotypePreference | None = None  # likelihood preference for stereotypes (decoders)
    explanation: Explanation | None = None  # token attributions: faithfulness, agreement with the baseline


class Report(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    lepton_version: str
    created: str  # ISO 8601, UTC
    recipe: dict[str, Any]  # the resolved recipe
    baseline: str | None  # name of the variant deltas are computed against
    variants: list[Scorecard]
    environment: Environment
    stages: list[dict[str, Any]] = Field(default_factory=list)  # stage history with timings
    # lepton update: the gain on the new data and the forgetting on the original data, against
    # the parent and naive fine-tuning (lepton.pipeline.update_report)
    update: dict[str, Any] | None = None
    # Which split chose (keep-best, early stopping, quantize's max_drop) and which one scored:
    # {"chose_on", "chose_examples", "carved_from_train", "scored_on", "scored_examples"}
    selection: dict[str, Any] | None = None
