"""``finetune``: fine-tuning with AdamW, linear warm-up/decay, best-checkpoint selection, early
stopping and exact resume after a crash (the loop itself is ``lepton.stages.training.train``).

``method`` picks what is trained:

- ``full``: every weight.
- ``lora``: low-rank adapters (peft's LoRA: rank ``r``, ``alpha``, ``dropout``, ``target_modules``)
  beside frozen weights; the task head stays trainable (``modules_to_save``).
- ``adalora``: AdaLoRA, adapters whose ranks start at ``init_r`` and are pruned towards an average
  of ``target_r`` between steps ``tinit`` and ``total - tfinal`` (shares of all steps when < 1).

Adapters are merged into the base weights at the end, so later stages and the artifact see an
ordinary model; the unmerged adapter is saved too, in ``<output>/adapter/<stage name>``. The
summary reports the trainable parameter count and share.

``qat: true`` (method ``full``) trains with fake INT8 quantization where a following
``quantize: static_int8`` rounds (``lepton.stages.finetune.qat``; ``qat_settings`` tunes the observers) and
removes it at the end: the stage still outputs an ordinary float model.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from lepton.core import outdir
from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.adapters import (
    AdaLoraSettings,
    LoraSettings,
    RankAllocatorState,
    adapter_config,
    save_adapter,
    wrap_with_adapters,
)
from lepton.stages.base import register
from lepton.stages.finetune.qat import QatSettings, insert_fake_quant
from lepton.stages.training import TrainJob, TrainSettings, dev_evaluator, plan_steps, task_metric, train
from lepton.tasks import encode

log = logging.getLogger(__name__)


class FinetuneConfig(TrainSettings):
    trains_head: ClassVar[bool] = True
    is_baseline: ClassVar[bool] = True
    contract_example: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 8}

    kind: Literal["finetune"] = "finetune"
    method: Literal["full", "lora", "adalora"] = "full"
    lora: LoraSettings | None = None  # method lora; defaults filled in
    adalora: AdaLoraSettings | None = None  # method adalora; defaults filled in
    qat: bool = False  # quantization-aware training (fake INT8), for a following static_int8
    qat_settings: QatSettings | None = None  # with qat; None: the defaults
    # QLoRA-style, decoders: the frozen base weights are first rounded to what 4-bit MatMulNBits
    # (round to nearest, groups of base_group_size) computes, so the adapters learn against the
    # deployed weights; a later quantize (weight_only, bits 4, the same group size) keeps them apart.
    base_bits: Literal[4] | None = None
    base_group_size: int = Field(default=32, ge=16)
    # Generative models: cross-entropy against (1 - e) on the reference token and e spread over
    # the vocabulary (Szegedy et al.; 0.1 in the Transformer paper). 0: the model's own loss.
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("base_bits")
    @classmethod
    def _base_bits_method(cls, value: int | None, info: ValidationInfo) -> int | None:
        method = info.data.get("method", "full")
        if value is not None and method != "lora":
            raise ValueError(f"base_bits works with method: lora only (this stage's method is {method})")
        return value

    @field_validator("base_group_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"base_group_size must be a power of two, as quantize's group_size (got {value})")
        return value

    @field_validator("qat")
    @classmethod
    def _qat_method(cls, value: bool, info: ValidationInfo) -> bool:
        method = info.data.get("method", "full")
        if value and method != "full":
            raise ValueError(f"qat works with method: full only (this stage's method is {method}: "
                             "adapters merged after training would undo what fake quantization taught)")
        return value

    @field_validator("qat_settings")
    @classmethod
    def _qat_settings_need_qat(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("qat"):
            raise ValueError("qat_settings apply with qat: true")
        return value

    @model_validator(mode="before")
    @classmethod
    def _method_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        method = data.get("method", "full")
        for other in ("lora", "adalora"):
            if other != method and data.get(other) is not None:
                raise ValueError(f"{other} settings apply to method: {other} "
                                 f"(this stage's method is {method})")
        if method in ("lora", "adalora") and data.get(method) is None:
            data = {**data, method: {}}
        return data


@register(FinetuneConfig)
def finetune(bundle: ModelBundle, config: FinetuneConfig, ctx: RunContext) -> ModelBundle:
    """Fine-tune the model on data.train (all weights, or adapters), selecting on data.dev."""
    metric = task_metric(config, bundle, ctx)
    split = ctx.split("train")
    if split.labels is None:
        raise StageError("finetune needs labelled data.train")
    data = encode(split, bundle.task, bundle.tokenizer)
    if config.base_bits is not None:
        raise StageError(f"stages.{ctx.stage_index}.base_bits: training adapters on a 4-bit base is built for "
                         "generative decoders (their weights go to MatMulNBits)")
    if config.label_smoothing:
        raise StageError(f"stages.{ctx.stage_index}.label_smoothing: built for generative models (for "
                         "classifiers, distill's soft targets do what smoothing does, from a teacher)")
    if config.method == "full":
        fake = (insert_fake_quant(bundle.model, config.qat_settings or QatSettings(),
                                  plan_steps(len(data), config)) if config.qat else None)
        summary = train(bundle, config, ctx, TrainJob(
            data=data, metric=metric, evaluate=dev_evaluator(bundle.model, bundle, ctx),
            on_step=fake.on_step if fake else None, on_trained=fake.remove if fake else None))
        if fake is not None:
            summary["qat"] = fake.summary()
    else:
        summary = _finetune_adapters(bundle, config, ctx, data, metric)
    summary["skipped_rows"] = len(split.skipped)
    ctx.stage_summary = summary
    return bundle


def _finetune_adapters(bundle: ModelBundle, config: FinetuneConfig, ctx: RunContext, data: Any,
                       metric: str) -> dict[str, Any]:
    where = f"stages.{ctx.stage_index}.{config.method}"
    settings = config.lora if config.method == "lora" else config.adalora
    assert settings is not None  # filled in by FinetuneConfig
    base_params = sum(p.numel() for p in bundle.model.parameters())
    total_steps = plan_steps(len(data), config)
    peft_config = adapter_config(config.method, settings, bundle.model, total_steps, where)
    torch.manual_seed(ctx.seed)  # the adapters' initial weights
    peft_model = wrap_with_adapters(bundle.model, peft_config, where)
    trainable, total = peft_model.get_nb_trainable_parameters()
    adapter_params = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    log.info("finetune (%s): %d of %d parameters trainable (%.2f%%)", config.method, trainable, total,
             100 * trainable / total)
    name = ctx.stage_name or f"{ctx.stage_index}-finetune"
    adapter_dir = outdir.inside(ctx.out_dir, "adapter", name)  # names are plain; this double-checks

    def merge() -> None:
        save_adapter(peft_model, adapter_dir)
        bundle.model = peft_model.merge_and_unload()

    adalora = config.method == "adalora"
    live = peft_model.peft_config["default"]  # as peft filled it in (default targets, rank pattern)
    summary = train(bundle, config, ctx, TrainJob(
        data=data, model=peft_model, metric=metric, evaluate=dev_evaluator(peft_model, bundle, ctx),
        on_step=peft_model.base_model.update_and_allocate if adalora else None,
        stateful={"adalora": RankAllocatorState(peft_model)} if adalora else {},
        on_trained=merge))
    summary.update({
        "method": config.method, "trainable_params": trainable, "all_params": total,
        "trainable_share": round(trainable / total, 6), "adapter_params": adapter_params,
        "model_params": base_params, "target_modules": sorted(live.target_modules or []),
        "modules_to_save": sorted(live.modules_to_save or []),
        "adapter_dir": str(adapter_dir), "merged": True,
    })
    if adalora:
        pattern = live.rank_pattern or {}
        summary["adalora_ranks"] = {k: int(sum(bool(x) for x in v)) for k, v in pattern.items()}
    return summary

# Registered on import: the implementation for generative models.
from lepton.stages.finetune import decoder as _decoder  # noqa: E402, F401
