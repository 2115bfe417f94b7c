"""``prune``: remove weights (``magnitude``, ``2:4``) or whole structures (``heads``, ``ffn``).

``magnitude``: unstructured pruning of the encoder's Linear weights (not embeddings, pooler or task
head) to ``sparsity``. ``scope: global`` ranks every weight together; ``scope: layer`` gives each
weight matrix the same sparsity. ``schedule: oneshot`` zeroes the weights now; ``gradual`` leaves
them and has the next ``finetune`` raise sparsity after each optimizer step along the cubic schedule
of Zhu & Gupta (2017), ``s_t = s * (1 - (1 - (t - start_step) / (end_step - start_step))^3)``, with
masks recomputed every ``update_every`` steps and at ``end_step`` (default: that finetune's last
step). Either way the masks stay applied through the next finetune, so recovery training does not
regrow pruned weights. If that finetune ends before ``end_step``, or its ``keep_best`` restores a
checkpoint from earlier in the ramp, the final masks are applied at its end, so the model shipped
(and scored) always has the target sparsity; the hook's summary says whether it was reached during
training. On CPU dense kernels zeros cost as much as any weight: the file gets more
compressible, the model no faster; the summary says so and measures the compressed size.

``2:4`` (N:M with ``n``, ``m``): in every group of ``m`` consecutive weights along the input
dimension only the ``n`` largest survive. GPUs with sparse tensor cores can run that pattern faster;
on CPU it is a size and accuracy experiment, and labelled as such.

``heads`` / ``ffn``: structured pruning that physically removes attention heads (their q/k/v rows
and output-projection columns) or FFN neurons (intermediate rows and output columns), so the model
really gets smaller and faster. ``sparsity`` is the fraction of heads / neurons removed, per layer
(``scope: layer``) or ranked across layers (``global``; scores are L2-normalized per layer first,
as Michel et al. 2019 do). Importance: ``gradient`` accumulates ``|dLoss/dmask|`` for a mask of
ones multiplied onto each head's context output / each neuron's activation over ``batches`` training
batches (the first-order estimate of Michel et al.; for neurons it is ``|sum activation * grad|``);
``magnitude`` is a data-free proxy (norm of a head's q/k/v rows and output columns; for a neuron the
product of its input-row and output-column norms). Every layer keeps at least one head and one
neuron; a setting that cannot (``scope: layer`` with a fraction that rounds to all of them, or
``heads:`` naming every head of a layer) is an error. ``heads: {layer: [head, ...]}`` removes
exactly the heads named (current indices) instead of ranking.

Layers of different sizes cannot be described by a transformers config: Lepton records them in the
manifest (``lepton.models.structure``) and ``lepton.load`` rebuilds them. FFN pruning with ``scope: layer``
leaves every layer the same size, which the config can say: unless heads were pruned too, such a
model loads in plain transformers as well.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import StageConfig, register
from lepton.stages.prune.masks import UNSTRUCTURED_NOTE, MaskKeeper, encoder_linears, masked_oneshot
from lepton.stages.prune.structured import remove_structures

log = logging.getLogger(__name__)


class PruneConfig(StageConfig):
    contract_example: ClassVar[dict[str, Any]] = {"method": "heads", "sparsity": 0.5, "importance": "magnitude"}

    kind: Literal["prune"] = "prune"
    method: Literal["magnitude", "heads", "ffn", "2:4"]
    # magnitude: share of encoder weights zeroed; heads / ffn: share of heads / neurons removed.
    sparsity: float | None = Field(default=None, ge=0, lt=1, validate_default=True)
    scope: Literal["global", "layer"] = "global"
    schedule: Literal["oneshot", "gradual"] = Field(default="oneshot", validate_default=True)
    start_step: int | None = Field(default=None, ge=0)  # gradual: first step of the ramp (default 0)
    end_step: int | None = Field(default=None, ge=1)  # gradual: final sparsity here (default: last step)
    update_every: int = Field(default=10, ge=1)  # gradual: steps between mask updates
    importance: Literal["gradient", "magnitude"] = "gradient"  # heads / ffn
    batches: int = Field(default=8, ge=1)  # heads / ffn, gradient importance: training batches used
    batch_size: int = Field(default=32, ge=1)
    heads: dict[int, list[int]] | None = None  # heads: exactly these {layer: [head, ...]} go
    n: int = Field(default=2, ge=1)  # N:M: weights kept in every group of m
    m: int = Field(default=4, ge=2, validate_default=True)

    @field_validator("method", mode="before")
    @classmethod
    def _unquoted_two_four(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124.
        return "2:4" if value == 124 and not isinstance(value, bool) else value

    @field_validator("sparsity")
    @classmethod
    def _sparsity_per_method(cls, value: float | None, info: ValidationInfo) -> float | None:
        method = info.data.get("method")
        if method == "2:4" and value is not None:
            raise ValueError("method 2:4 fixes the sparsity at 1 - n/m; leave sparsity out")
        if value is None and method in ("magnitude", "ffn"):
            raise ValueError(f"method {method} needs sparsity: a fraction in [0, 1)")
        return value

    @field_validator("schedule")
    @classmethod
    def _gradual_only_magnitude(cls, value: str, info: ValidationInfo) -> str:
        method = info.data.get("method")
        if value == "gradual" and method is not None and method != "magnitude":
            raise ValueError(f"schedule gradual works only with method magnitude; method {method} "
                             "removes structures once (use oneshot, then finetune)")
        return value

    @field_validator("start_step", "end_step")
    @classmethod
    def _only_gradual(cls, value: int | None, info: ValidationInfo) -> int | None:
        schedule = info.data.get("schedule")
        if value is not None and schedule is not None and schedule != "gradual":
            raise ValueError(f"{info.field_name} applies to schedule: gradual only")
        start = info.data.get("start_step")
        if info.field_name == "end_step" and value is not None and start is not None and value <= start:
            raise ValueError(f"end_step {value} must come after start_step {start}")
        return value

    @field_validator("heads")
    @classmethod
    def _explicit_heads(cls, value: dict[int, list[int]] | None,
                        info: ValidationInfo) -> dict[int, list[int]] | None:
        if value is None:
            return None
        if info.data.get("method") != "heads":
            raise ValueError("heads: {layer: [head, ...]} is for method heads")
        if info.data.get("sparsity") is not None:
            raise ValueError("give either sparsity or heads, not both")
        for layer, heads in value.items():
            if layer < 0 or any(h < 0 for h in heads):
                raise ValueError(f"layer and head indices count from 0 (layer {layer}: {heads})")
            if len(set(heads)) != len(heads):
                raise ValueError(f"layer {layer} lists a head more than once")
        return {layer: sorted(heads) for layer, heads in value.items()}

    @model_validator(mode="after")
    def _heads_need_a_target(self) -> PruneConfig:
        if self.method == "heads" and self.sparsity is None and self.heads is None:
            raise ValueError("method heads needs sparsity (the fraction of heads removed) "
                             "or heads: {layer: [head, ...]}")
        return self

    @field_validator("m")
    @classmethod
    def _n_below_m(cls, value: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if n is not None and n >= value:
            raise ValueError(f"n ({n}) must be smaller than m ({value}): n of every m weights stay")
        return value

    def needs_training_after(self) -> str | None:
        return "gradual pruning happens during training" if self.schedule == "gradual" else None


# ------------------------------------------------------------------- counting


def _counts(model: Any) -> tuple[int, int]:
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return total, nonzero


def _sizes_summary(model: Any, before: tuple[int, int]) -> dict[str, Any]:
    total, nonzero = _counts(model)
    return {"params_before": before[0], "params_after": total, "nonzero_before": before[1],
            "nonzero_after": nonzero, "sparsity": round(1 - nonzero / total, 6) if total else 0.0}


@register(PruneConfig)
def prune(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> ModelBundle:
    """Prune the model in place (see the module docstring for the methods)."""
    where = f"stages.{ctx.stage_index}"
    before = _counts(bundle.model)
    if config.method in ("heads", "ffn"):
        summary = remove_structures(bundle, config, ctx, where)
    elif config.schedule == "gradual":
        modules = encoder_linears(bundle.model)
        if not modules:
            raise StageError(f"{where}.method: magnitude prunes the Linear layers of base_model.encoder; "
                             f"{type(bundle.model).__name__} has none")
        bundle.train_hooks.append(MaskKeeper(modules, None, stage=ctx.stage_index,
                                             final=float(config.sparsity or 0), scope=config.scope,
                                             start=config.start_step or 0, end=config.end_step,
                                             every=config.update_every))
        summary = {"method": "magnitude", "schedule": "gradual", "scope": config.scope,
                   "target_sparsity": config.sparsity,
                   "note": "weights are pruned during the next finetune stage; this stage's scorecard "
                           "is the model before pruning. " + UNSTRUCTURED_NOTE}
    else:
        summary = masked_oneshot(bundle, config, ctx, where)
    summary.update(_sizes_summary(bundle.model, before))
    log.info("prune %s: %d -> %d parameters, %d non-zero", config.method, summary["params_before"],
             summary["params_after"], summary["nonzero_after"])
    ctx.stage_summary = summary
    return bundle

# Registered on import: the implementation for generative models.
from lepton.stages.prune import decoder as _decoder  # noqa: E402, F401

# Registered on import: the implementation for encoder-decoder models.
from lepton.stages.prune import seq2seq as _seq2seq  # noqa: E402, F401
