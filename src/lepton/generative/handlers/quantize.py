"""``quantize`` of a generative model.

On ONNX Runtime (after ``export``): ``weight_only`` (MatMulNBits, ``bits`` 4 or 8, groups of
``group_size`` along the input dimension, round-to-nearest; at 4 bits the embedding table too, as
GatherBlockQuantized) and ``dynamic_int8`` (int8 weights, activations quantized at run time), both
through onnxruntime's quantizers (``generative.weight_quant``). On PyTorch: ``dynamic_int8``,
``fp16`` and ``bf16`` as for encoders (``lepton.quantize_torch``).

GPTQ/AWQ: onnxruntime's ``MatMulNBitsQuantizer`` offers GPTQ only through Intel Neural Compressor,
which is not a dependency here; HQQ is available in ``weight_quant`` but is not exposed as a recipe
setting yet. Sensitivity-ranked mixed precision (``sensitivity``, ``max_drop``) is not built for
decoders and is refused in one line.

Check: greedy outputs of ``check_items`` real prompts, the input model against the quantized
one (identical share, mean shared prefix), and sizes before and after.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lepton.bundle import ModelBundle, RunContext
from lepton.errors import StageError
from lepton.generative.handlers import handles
from lepton.generative.handlers.common import agreement, real_prompts, rebundle
from lepton.stages.quantize import QuantizeConfig

log = logging.getLogger(__name__)


@handles(QuantizeConfig, example={"method": "weight_only", "bits": 4, "group_size": 16, "check_items": 4},
         before=({"kind": "export", "parity_items": 4},))
def quantize_generative(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext) -> ModelBundle:
    where = f"stages.{ctx.stage_index}"
    if config.sensitivity or config.max_drop is not None:
        raise StageError(f"{where}.sensitivity: sensitivity-ranked mixed precision is built for classifiers "
                         "only; quantize a generative model whole (exclude: names nodes to keep in float)")
    t0 = time.perf_counter()
    if bundle.runtime == "onnxruntime":
        model, details, before, after = _on_ort(bundle, config, ctx, where)
    elif bundle.runtime == "torch":
        model, details, before, after = _on_torch(bundle, config, where)
    else:
        raise StageError(f"{where}: quantize does not know runtime {bundle.runtime!r}")
    seconds = time.perf_counter() - t0
    prompts, split = real_prompts(bundle, ctx, config.check_split, config.check_items)
    check = agreement(bundle.model, model, bundle.tokenizer, prompts, max_prompt_tokens=bundle.task.max_length)
    ctx.stage_summary = {"method": config.method, "runtime": bundle.runtime, **details,
                         "seconds": round(seconds, 2), "size_mb_before": round(before / 1e6, 3),
                         "size_mb_after": round(after / 1e6, 3), "smaller": round(before / max(after, 1), 2),
                         "vs_input": {"split": split, **check}}
    log.info("quantize %s (%s): %.1f -> %.1f MB, %d/%d greedy outputs identical", config.method, bundle.runtime,
             before / 1e6, after / 1e6, check["identical"], check["prompts"])
    return rebundle(bundle, model)


def _on_ort(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, where: str) -> tuple[Any, dict, int, int]:
    from lepton.generative.ort_model import OrtCausalLM
    from lepton.generative.weight_quant import quantize_onnx_dynamic_int8, quantize_onnx_weights

    source = bundle.model
    folder = (ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-quantize") / "decoder"
    if config.method == "weight_only":
        details = quantize_onnx_weights(source.folder, folder, bits=config.bits, block_size=config.group_size,
                                        accuracy_level=config.accuracy_level, embeddings=config.bits == 4,
                                        exclude=tuple(config.exclude))
    elif config.method == "dynamic_int8":
        if config.exclude:
            raise StageError(f"{where}.exclude: applies to weight_only on a decoder graph")
        details = quantize_onnx_dynamic_int8(source.folder, folder, per_channel=config.per_channel,
                                             reduce_range=True if config.reduce_range else None)
    else:
        raise StageError(f"{where}.method: {config.method} is not available for an exported decoder; "
                         "use weight_only (bits: 4 or 8) or dynamic_int8")
    details.pop("size_bytes", None)
    info = {**source.info, "precision": _precision(config), "quantization": details}
    model = OrtCausalLM(folder, info=info)
    source.generation_config.save_pretrained(folder)
    return model, details, source.size_bytes(), model.size_bytes()


def _on_torch(bundle: ModelBundle, config: QuantizeConfig, where: str) -> tuple[Any, dict, int, int]:
    from lepton.generative.efficiency import weights_mb
    from lepton.quantize_torch import torch_quantize

    model, details = torch_quantize(bundle, config, where)
    model.generation_config = bundle.model.generation_config
    return model, details, int(weights_mb(bundle.model) * 1e6), int(_bytes(model))


def _bytes(model: Any) -> int:
    """Weights and packed int8 parameters of a (possibly dynamically quantized) PyTorch model."""
    total = 0
    for value in model.state_dict().values():
        if hasattr(value, "element_size"):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple):  # packed params: (weight, bias)
            total += sum(v.numel() * v.element_size() for v in value if hasattr(v, "element_size"))
    return total


def _precision(config: QuantizeConfig) -> str:
    return f"int{config.bits} weight-only" if config.method == "weight_only" else "dynamic int8"
