"""``export`` of an encoder-decoder (T5, Marian, BART ...): two ONNX graphs, the encoder with the
cross-attention keys and values computed once per input, and the decoder with its self-attention
cache (``lepton.stages.export.onnx_seq2seq``). The bundle then holds an ``OrtSeq2SeqLM`` run by
Lepton's ONNX Runtime loop, greedy or beam search.

Parity: ``parity_items`` real prompts (of ``parity_split``) in one right-padded batch, greedy and
beam search (the recipe's ``num_beams``, else 4), PyTorch against the graphs: every prompt's tokens
must be identical and the first-step logits within ``atol``; otherwise the run stops. The recipe's
``optimize`` (ONNX Runtime's encoder fusions) is recorded as not applied.
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


@register(ExportConfig, family="encoder-decoder", example={"parity_items": 4})
def export_seq2seq_stage(bundle: ModelBundle, config: ExportConfig, ctx: RunContext) -> ModelBundle:
    from lepton.runtimes.ort import require
    from lepton.runtimes.ort_seq2seq import OrtSeq2SeqLM
    from lepton.stages.export.onnx_seq2seq import EXPORTER, check_parity, decoder_layers, export_seq2seq
    from lepton.tasks.generative_kind import settings_of

    where = f"stages.{ctx.stage_index}"
    require("onnx")
    require("onnxruntime")
    model = require_torch_decoder(bundle, ctx, "export")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise StageError(f"{where}: export a float32 model (this one is {dtype}); quantize after export")
    model = model.cpu().eval()
    folder = (ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-export") / "seq2seq"
    t0 = time.perf_counter()

    def fill(tmp: Path) -> None:
        export_seq2seq(model, tmp, opset=config.opset)
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)

    write_folder(folder, fill)
    export_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {"exporter": EXPORTER, "opset": config.opset, "precision": "fp32", "params": params,
                            "kv_cache": True, "decoder_layers": len(decoder_layers(model))}
    graphs = OrtSeq2SeqLM(folder, info=info)
    prompts, split = real_prompts(bundle, ctx, config.parity_split, config.parity_items)
    settings = settings_of(bundle.task)
    beams = settings.num_beams if settings.strategy == "beam" else 4
    parity = check_parity(model, bundle.tokenizer, graphs, prompts, max_new_tokens=PARITY_NEW_TOKENS, num_beams=beams)
    if parity["max_abs_logit_diff"] > config.atol:
        raise StageError(f"{where}.atol: the exported graphs' first-step logits differ from PyTorch's by "
                         f"{parity['max_abs_logit_diff']:.3g} (> {config.atol}) on data.{split}")
    ctx.stage_summary = {"format": "onnx", "kind": "encoder (with cross-attention K/V) and decoder with its cache",
                         **info, "export_seconds": round(export_s, 2), "size_mb": round(graphs.size_bytes() / 1e6, 3),
                         "optimize": "not applied (ONNX Runtime's transformer fusions are for encoder-only graphs)",
                         "parity": {"split": split, "num_beams": beams, **parity}}
    log.info("export: encoder-decoder, greedy %d/%d and beam %d/%d prompts identical, max |logit diff| %.3g",
             parity["greedy"]["identical"], parity["prompts"], parity["beam"]["identical"], parity["prompts"],
             parity["max_abs_logit_diff"])
    return rebundle(bundle, graphs, runtime="onnxruntime")
