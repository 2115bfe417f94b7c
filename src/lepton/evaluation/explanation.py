"""Why a model decides: the recipe settings (``evaluate.explain``) and the typed results a
scorecard carries (``Scorecard.explanation``). Pydantic only, so the report schema and the recipe
load without torch; the measuring lives in ``lepton.evaluation.explain`` and the attribution
methods in ``lepton.evaluation.attribution``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from lepton.core.config import StrictModel
from lepton.tasks.quality import Metric

METHODS = ("occlusion", "ig")


class ExplainConfig(StrictModel):
    """``evaluate.explain``: token attributions of every variant on a seeded sample of the
    evaluation split, their faithfulness, and their agreement with the baseline's."""

    smoke_caps: ClassVar[dict[str, Any]] = {"items": 16}

    enabled: bool = True
    items: int = Field(default=24, ge=2)  # examples explained (a seeded sample, the same for every variant)
    # occlusion: leave one token out, on every runtime as shipped; ig: integrated gradients
    # (captum) for PyTorch variants, occlusion for the others (the variant's method is recorded)
    method: Literal["occlusion", "ig"] = "occlusion"
    steps: int = Field(default=64, ge=2, le=1024)  # integrated gradients: interpolation steps
    fractions: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.5])  # top-k shares for faithfulness
    top_fraction: float = Field(default=0.2, gt=0, le=1)  # the share of tokens in the top-k overlap
    divergent: int = Field(default=3, ge=0, le=20)  # examples shown where a variant's reasons diverge most
    samples: int = Field(default=4, ge=0, le=20)  # examples rendered with shaded tokens in report.html

    @field_validator("method")
    @classmethod
    def _captum_for_ig(cls, value: str) -> str:
        # Checked with the recipe, not after training: integrated gradients come from captum.
        import importlib.util

        if value == "ig" and importlib.util.find_spec("captum") is None:
            raise ValueError("method ig needs captum: pip install 'lepton[explain]' (or use method: occlusion)")
        return value

    @field_validator("fractions")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < f <= 1 for f in value):
            raise ValueError("fractions must be a non-empty list of shares in (0, 1], e.g. [0.1, 0.2, 0.5]")
        return value


class TokenScores(BaseModel):
    """One explained example: its tokens (special tokens left out) and their attributions toward
    the class explained (positive: for it; negative: against it)."""

    index: int  # the example's position in the evaluation split
    tokens: list[str]
    scores: list[float]
    label: str  # the class explained
    probability: float  # the variant's probability of that class on the whole input


class Faithfulness(BaseModel):
    """Remove (comprehensiveness) or keep only (sufficiency) the top-k attributed tokens and
    measure the drop in the explained class's probability, averaged over ``fractions`` (AOPC,
    DeYoung et al. 2020, ERASER); the same for a seeded random ranking of the same tokens."""

    fractions: list[float]
    comprehensiveness: Metric  # higher: the top tokens carry the prediction
    sufficiency: Metric  # lower: the top tokens alone keep it
    random_comprehensiveness: Metric
    random_sufficiency: Metric
    comprehensiveness_gain: Metric  # method minus random, paired per example (> 0: better than random)
    sufficiency_gain: Metric  # random minus method, paired per example (> 0: better than random)


class Divergent(BaseModel):
    """An example where this variant's reasons differ most from the baseline's."""

    index: int
    tokens: list[str]
    baseline_scores: list[float]
    scores: list[float]
    spearman: float
    baseline_top: list[str]  # the baseline's top-k tokens, strongest first
    top: list[str]  # this variant's


class Agreement(BaseModel):
    """This variant's attributions against the baseline's, on the same examples and class."""

    baseline: str
    n: int  # examples compared (those both variants tokenize alike)
    top_fraction: float
    top_k_overlap: Metric  # shared share of the top-k tokens (1: the same top tokens)
    spearman: Metric  # rank correlation of the attributions per example, averaged
    divergent: list[Divergent] = []


class Explanation(BaseModel):
    method: str  # "occlusion" or "ig" (integrated gradients)
    target: str  # which class is explained: "baseline prediction" or "own prediction"
    items: int  # examples explained
    seed: int
    seconds: float  # wall time of this variant's attributions, faithfulness and agreement
    faithfulness: Faithfulness
    agreement: Agreement | None = None  # None for the baseline (or without one)
    samples: list[TokenScores] = []  # the first examples, rendered in report.html
