"""The typed results: one Scorecard per evaluated variant, and the Report that holds them all.

This is the one definition of report.json; ``lepton.report.json_schema()`` derives its JSON Schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from lepton.evaluation.environment import Environment
from lepton.evaluation.quality import Quality

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


class Efficiency(BaseModel):
    runtime: str
    device: str
    threads: int
    warmup: int  # untimed calls before timing
    latency_ms: dict[str, LatencyStats]  # "b1_real" (real dev inputs), "b1_fixed128" ...
    throughput: dict[str, float]  # "b32" -> items/s over real dev inputs with dynamic padding
    peak_rss_mb: float | None  # process peak resident memory while measuring this variant
    peak_rss_note: str  # how peak_rss_mb was obtained
    size_mb: float  # weights as saved (MB = 1e6 bytes)
    params: int
    nonzero_params: int
    sparsity: float
    flops_per_item: float | None  # estimate at the mean real input length
    seconds: float  # wall time of the efficiency measurement


class Scorecard(BaseModel):
    name: str  # "pretrained", "finetune", ...
    stage_path: list[str]  # stages applied to reach this variant
    split: str
    n_examples: int
    quality: Quality
    efficiency: Efficiency
    notes: list[str] = Field(default_factory=list)


class Report(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    lepton_version: str
    created: str  # ISO 8601, UTC
    recipe: dict[str, Any]  # the resolved recipe
    baseline: str | None  # name of the variant deltas are computed against
    variants: list[Scorecard]
    environment: Environment
    stages: list[dict[str, Any]] = Field(default_factory=list)  # stage history with timings
