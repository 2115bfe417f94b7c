"""``export`` of a decoder-only generative model: ONNX with its KV cache (past keys and values as
inputs and outputs; dynamic batch, sequence and past lengths), through Lepton's own exporter
(``generative.onnx_decoder.export_torch``; why not ONNX Runtime GenAI's builder by default is said
there: its graphs cannot run left-padded batches of different lengths). The bundle then holds an
``OrtCausalLM`` run by Lepton's ONNX Runtime loop.

Parity: greedy generation of ``parity_items`` real prompts (of ``parity_split``), PyTorch against
the graph in one left-padded batch: every prompt's tokens must be identical, and the largest
difference of the first-step logits within ``atol``; otherwise the run stops. The recipe's
``optimize`` (ONNX Runtime's encoder fusions) does not apply to decoder graphs and is recorded as
not applied.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from lepton.core.atomic import write_folder
from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import real_prompts, rebundle, require_torch_decoder
from lepton.stages.export import ExportConfig

log = logging.getLogger(__name__)

PARITY_NEW_TOKENS = 16


@register(ExportConfig, family="decoder", example={"parity_items": 4})
def export_decoder(bundle: ModelBundle, config: ExportConfig, ctx: RunContext) -> ModelBundle:
    from lepton.models.weight_only import WeightOnlyLinear
    from lepton.runtimes.ort import require
    from lepton.runtimes.ort_decoder import OrtCausalLM
    from lepton.stages.export.onnx_decoder import (
        EXPORTER,
        ONNX_FILE,
        check_parity,
        export_torch,
        folder_size,
    )

    where = f"stages.{ctx.stage_index}"
    require("onnx")
    require("onnxruntime")
    model = require_torch_decoder(bundle, ctx, "export")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32 or any(isinstance(m, WeightOnlyLinear) for m in model.modules()):
        raise StageError(f"{where}: export a float32 model (this one is {dtype} or quantized); quantize after export")
    model = model.cpu().eval()
    folder = (ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-export") / "decoder"
    t0 = time.perf_counter()

    def fill(tmp: Path) -> None:
        export_torch(model, tmp / ONNX_FILE, opset=config.opset)
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)

    write_folder(folder, fill)
    export_s = time.perf_counter() - t0
    prompts, split = real_prompts(bundle, ctx, config.parity_split, config.parity_items)
    parity = check_parity(model, bundle.tokenizer, folder / ONNX_FILE, prompts, max_new_tokens=PARITY_NEW_TOKENS,
                          threads=torch.get_num_threads())
    if parity["max_abs_logit_diff"] > config.atol:
        raise StageError(f"{where}.atol: the exported graph's first-step logits differ from PyTorch's by "
                         f"{parity['max_abs_logit_diff']:.3g} (> {config.atol}) on data.{split}")
    params = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {"exporter": EXPORTER, "opset": config.opset, "precision": "fp32", "params": params,
                            "kv_cache": True, "layers": model.config.num_hidden_layers}
    ctx.stage_summary = {"format": "onnx", "kind": "decoder with KV cache", **info,
                         "export_seconds": round(export_s, 2), "size_mb": round(folder_size(folder) / 1e6, 3),
                         "optimize": "not applied (ONNX Runtime's transformer fusions are for encoder graphs)",
                         "parity": {"split": split, **parity}}
    log.info("export: decoder with KV cache, %d/%d prompts identical, max |logit diff| %.3g",
             parity["identical"], parity["prompts"], parity["max_abs_logit_diff"])
    return rebundle(bundle, OrtCausalLM(folder, info=info), runtime="onnxruntime")
