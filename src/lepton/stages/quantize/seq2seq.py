"""``quantize`` of an encoder-decoder.

On ONNX Runtime (after ``export``): ``dynamic_int8`` (int8 weights, activations quantized at run
time) and ``weight_only`` (MatMulNBits, ``bits`` 4 or 8, round to nearest, groups of
``group_size``) through onnxruntime's quantizers, applied to both graphs (the encoder with its
cross-attention projections, and the decoder). On PyTorch: ``dynamic_int8``, ``fp16`` and ``bf16``
as for decoders. The check is the decoder-only one: greedy outputs of ``check_items`` real prompts,
the input model against the quantized one, and the sizes before and after.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from lepton.core.atomic import write_folder
from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.quantize import QuantizeConfig
from lepton.stages.quantize.decoder import precision_of, quantize_and_check

log = logging.getLogger(__name__)


@register(QuantizeConfig, family="encoder-decoder",
          example={"method": "dynamic_int8", "check_items": 4}, before=({"kind": "export", "parity_items": 4},))
def quantize_seq2seq(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext) -> ModelBundle:
    where = f"stages.{ctx.stage_index}"
    if config.sensitivity or config.max_drop is not None:
        raise StageError(f"{where}.sensitivity: sensitivity and max_drop work on exported decoder-only models")
    return quantize_and_check(bundle, config, ctx, _on_ort)


def _on_ort(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, where: str) -> tuple[Any, dict]:
    from lepton.runtimes.ort_seq2seq import DECODER, ENCODER, OrtSeq2SeqLM
    from lepton.stages.quantize.weight_only import quantize_onnx_dynamic_int8, quantize_onnx_weights

    source = bundle.model
    if config.method == "weight_only":
        if config.algorithm != "rtn" or config.exclude:
            raise StageError(f"{where}.algorithm: an exported encoder-decoder is quantized with algorithm rtn "
                             "and no exclude list")

        def one(src: Path, dest: Path) -> dict[str, Any]:
            return quantize_onnx_weights(src, dest, bits=config.bits, block_size=config.group_size,
                                         accuracy_level=config.accuracy_level)
    elif config.method == "dynamic_int8":
        if config.exclude:
            raise StageError(f"{where}.exclude: not available for an exported encoder-decoder")

        def one(src: Path, dest: Path) -> dict[str, Any]:
            return quantize_onnx_dynamic_int8(src, dest, per_channel=config.per_channel,
                                              reduce_range=True if config.reduce_range else None)
    else:
        raise StageError(f"{where}.method: {config.method} is not available for an exported encoder-decoder; "
                         "use dynamic_int8 or weight_only (bits: 4 or 8)")
    folder = (ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-quantize") / "seq2seq"
    details: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        for name in (ENCODER, DECODER):
            part = tmp / f"part-{name}"
            details[name.removesuffix(".onnx")] = one(source.folder / name, part)
            if any(p.name != "model.onnx" and p.name.startswith("model.onnx") for p in part.iterdir()):
                raise StageError(f"{where}: the quantized {name} has external data (over 2 GB); not supported")
            (part / "model.onnx").rename(tmp / name)
            shutil.rmtree(part)
        for side in ("config.json", "generation_config.json"):
            if (source.folder / side).is_file():
                shutil.copyfile(source.folder / side, tmp / side)

    write_folder(folder, fill)
    for d in details.values():
        d.pop("size_bytes", None)
    info = {**source.info, "precision": precision_of(config), "quantization": details}
    return OrtSeq2SeqLM(folder, info=info), details
