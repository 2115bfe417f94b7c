"""LoRA and AdaLoRA adapters through peft: their settings, the peft config with Lepton's defaults
and checks, wrapping a model, AdaLoRA's resumable rank state and saving an adapter. Shared by the
training stages (finetune on encoders, and generative training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from lepton.core import atomic
from lepton.core.config import StrictModel
from lepton.core.errors import MissingExtraError, StageError


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


class RankAllocatorState:
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
