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
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from lepton.core import atomic

from lepton.core import outdir
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.core.config import StrictModel
from lepton.core.errors import MissingExtraError, StageError
from lepton.stages.finetune.qat import QatSettings, insert_fake_quant
from lepton.stages.base import register
from lepton.stages.training import TrainJob, TrainSettings, dev_evaluator, plan_steps, task_metric, train
from lepton.tasks import encode, kind_of

log = logging.getLogger(__name__)


class AdapterSettings(StrictModel):
    alpha: float = Field(default=16.0, gt=0)  # scaling: the update is (alpha / r) * B @ A
    dropout: float = Field(default=0.1, ge=0, lt=1)
    # Names (or name suffixes) of the Linear layers to adapt; default: peft's choice for the
    # architecture (BERT, MiniLM, RoBERTa: query and value).
    target_modules: list[str] | None = None
    # Modules trained whole beside the adapters; default: the task head (every top-level module
    # of the model other than the encoder, e.g. "classifier").
    modules_to_save: list[str] | None = None


class LoraSettings(AdapterSettings):
    r: int = Field(default=8, ge=1)


class AdaLoraSettings(AdapterSettings):
    init_r: int = Field(default=12, ge=1)  # every adapter's starting rank
    target_r: int = Field(default=8, ge=1)  # the average rank the budget shrinks to
    tinit: float = Field(default=0.1, ge=0)  # warm-up without rank pruning; < 1: share of all steps
    tfinal: float = Field(default=0.2, ge=0)  # final steps with the ranks fixed; < 1: share
    delta_t: int = Field(default=10, ge=1)  # steps between budget reallocations
    beta1: float = Field(default=0.85, gt=0, lt=1)  # smoothing of the importance scores
    beta2: float = Field(default=0.85, gt=0, lt=1)  # smoothing of their uncertainty
    orth_reg_weight: float = Field(default=0.5, ge=0)  # orthogonality penalty on P and Q

    @model_validator(mode="after")
    def _budget_shrinks(self) -> AdaLoraSettings:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        return self


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
    own = kind_of(bundle.task).finetune(bundle, config, ctx)  # kinds that train their own way
    if own is not None:
        ctx.stage_summary = own
        return bundle
    metric = task_metric(config, bundle, ctx)
    split = ctx.split("train")
    if split.labels is None:
        raise StageError("finetune needs labelled data.train")
    data = encode(split, bundle.task, bundle.tokenizer)
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


# ---------------------------------------------------------------------------------------------
# LoRA and AdaLoRA through peft


def _require_peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise MissingExtraError("finetune method lora/adalora needs peft: "
                                "pip install 'lepton[peft]'") from err
    return peft


def default_modules_to_save(model: torch.nn.Module) -> list[str]:
    """The task head: every top-level module with weights other than the encoder."""
    encoder = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != encoder and any(True for _ in child.parameters())]


def _linear_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                   if isinstance(mod, torch.nn.Linear)})


def _steps(value: float, total: int) -> int:
    return int(value * total) if value < 1 else int(value)


def adapter_config(method: str, settings: AdapterSettings, model: torch.nn.Module, total_steps: int,
                   where: str) -> Any:
    """The peft config for ``method`` with Lepton's defaults and checks."""
    peft = _require_peft()
    heads = settings.modules_to_save
    if heads is None:
        heads = default_modules_to_save(model)
    children = dict(model.named_children())
    missing = [m for m in heads if m not in children]
    if missing:
        raise StageError(f"{where}.modules_to_save: {type(model).__name__} has no top-level module "
                         f"{missing[0]!r} (it has: {', '.join(children)})")
    common = {"lora_alpha": settings.alpha, "lora_dropout": settings.dropout,
              "target_modules": settings.target_modules, "modules_to_save": heads or None}
    if method == "lora":
        assert isinstance(settings, LoraSettings)
        return peft.LoraConfig(r=settings.r, **common)
    assert isinstance(settings, AdaLoraSettings)
    tinit, tfinal = _steps(settings.tinit, total_steps), _steps(settings.tfinal, total_steps)
    if tinit >= total_steps - tfinal:
        raise StageError(f"{where}: tinit ({tinit} steps) must come before the final phase, which "
                         f"starts at step {total_steps - tfinal} of {total_steps}; lower tinit/tfinal "
                         "or train longer")
    return peft.AdaLoraConfig(init_r=settings.init_r, target_r=settings.target_r, tinit=tinit,
                              tfinal=tfinal, deltaT=settings.delta_t, beta1=settings.beta1,
                              beta2=settings.beta2, orth_reg_weight=settings.orth_reg_weight,
                              total_step=total_steps, **common)


def wrap_with_adapters(model: torch.nn.Module, peft_config: Any, where: str) -> Any:
    """``peft.get_peft_model``, with a clear error when the target modules do not fit the model."""
    peft = _require_peft()
    try:
        return peft.get_peft_model(model, peft_config)
    except ValueError as err:
        text = str(err)
        if "target_modules" in text or "not found in the base model" in text:
            model_type = getattr(getattr(model, "config", None), "model_type", "?")
            raise StageError(f"{where}.target_modules: {peft_config.target_modules or 'the default'} "
                             f"matches no layer of this {model_type} model; its Linear layers are "
                             f"named: {', '.join(_linear_names(model))}") from None
        raise StageError(f"{where}: {text.splitlines()[0]}") from None


class _RankAllocatorState:
    """AdaLoRA's importance scores and rank pattern, so a resumed run allocates the same ranks."""

    def __init__(self, peft_model: Any) -> None:
        self.tuner = peft_model.base_model

    def _parts(self) -> tuple[Any, Any]:
        name = self.tuner.trainable_adapter_name
        return self.tuner.rankallocator, self.tuner.peft_config[name]

    def state_dict(self) -> dict[str, Any]:
        allocator, cfg = self._parts()
        return {"ipt": dict(allocator.ipt), "exp_avg_ipt": dict(allocator.exp_avg_ipt),
                "exp_avg_unc": dict(allocator.exp_avg_unc), "rank_pattern": cfg.rank_pattern}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        allocator, cfg = self._parts()
        allocator.ipt, allocator.exp_avg_ipt = dict(state["ipt"]), dict(state["exp_avg_ipt"])
        allocator.exp_avg_unc = dict(state["exp_avg_unc"])
        cfg.rank_pattern = state["rank_pattern"]


def save_adapter(peft_model: Any, dest: Path) -> Path:
    """``save_pretrained`` into a temp folder renamed into place (an old adapter is replaced whole)."""
    return atomic.write_folder(dest, lambda tmp: peft_model.save_pretrained(str(tmp)))


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
        stateful={"adalora": _RankAllocatorState(peft_model)} if adalora else {},
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
