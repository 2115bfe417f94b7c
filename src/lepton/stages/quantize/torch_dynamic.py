"""Quantization on PyTorch (``quantize`` with ``runtime: torch``): dynamic int8 Linears through
``lepton.models.int8``, fp16/bf16 casts. See ``lepton.stages.quantize``."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle

if TYPE_CHECKING:
    from lepton.stages.quantize import QuantizeConfig

WEIGHT_ONLY_TORCH_NOTE = (
    " (in PyTorch, torchao 0.18 on this CPU: int8 weight-only runs but is no faster than float32 "
    "in eager mode, and int4 weight-only needs the mslk kernels, which are GPU-only)")


def torch_quantize(bundle: ModelBundle, config: QuantizeConfig, where: str,
                    skip: frozenset[str] = frozenset()) -> tuple[Any, dict[str, Any]]:
    from lepton.models import int8 as torch_int8

    model = bundle.model
    if torch_int8.is_dynamic_int8(model):
        raise StageError(f"{where}: the model is already int8")
    if config.method in ("static_int8", "weight_only"):
        raise StageError(f"{where}: {config.method} runs on ONNX Runtime: add `- kind: export` before this stage"
                         + (WEIGHT_ONLY_TORCH_NOTE if config.method == "weight_only" else ""))
    if config.method == "dynamic_int8":
        if next(model.parameters()).device.type != "cpu":
            raise StageError(f"{where}: PyTorch dynamic int8 runs on CPU only (device is "
                             f"{next(model.parameters()).device})")
        names = [n for n in torch_int8.linear_names(model, config.exclude) if n not in skip]
        if not names:
            raise StageError(f"{where}: no Linear layer left to quantize (exclude: {config.exclude})")
        quantized = torch_int8.quantize_dynamic_int8(copy.deepcopy(model), names, per_channel=config.per_channel)
        return quantized, {"quantized_linears": len(names), "kept_float": _kept(model, names),
                           "engine": torch.backends.quantized.engine,
                           "note": "torch.ao.quantization dynamic int8 (deprecated in torch 2.13, still works)"}
    dtype = torch.float16 if config.method == "fp16" else torch.bfloat16
    return copy.deepcopy(model).to(dtype), {"dtype": str(dtype).removeprefix("torch.")}


def _kept(model: Any, names: list[str]) -> int:
    return sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear)) - len(names)
