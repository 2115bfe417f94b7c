"""Quantization on ONNX Runtime (``quantize`` after ``export``): dynamic and static (QDQ, calibrated,
optionally SmoothQuant) int8, weight-only MatMulNBits and fp16, all through
``onnxruntime.quantization``. See ``lepton.stages.quantize``."""

from __future__ import annotations

import collections
import copy
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.runtimes.parity import check_split_fits
from lepton.tasks import collate, encode

if TYPE_CHECKING:
    from lepton.stages.quantize import QuantizeConfig


def weight_matmuls(model_proto: Any, exclude: list[str]) -> list[str]:
    """Names of MatMul nodes whose second input is a weight (an initializer), minus ``exclude``."""
    weights = {init.name for init in model_proto.graph.initializer}
    return [n.name for n in model_proto.graph.node
            if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights
            and not any(p in n.name for p in exclude)]


def weight_gemms(model_proto: Any, exclude: list[str]) -> list[str]:
    """Names of Gemm nodes whose second input is a weight (an initializer), minus ``exclude``."""
    weights = {init.name for init in model_proto.graph.initializer}
    return [n.name for n in model_proto.graph.node
            if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in weights
            and not any(p in n.name for p in exclude)]


def calibration_inputs(bundle: ModelBundle, ctx: RunContext, config: QuantizeConfig,
                       input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """One input per example of a seeded sample of the calibration split, as numpy int64."""
    name = config.calibration_split
    where = f"data.{name} (the calibration set of stages.{ctx.stage_index})"
    if name not in ctx.splits:
        raise StageError(f"stages.{ctx.stage_index}: static_int8 calibrates on data.{name}; add it "
                         "to the recipe or set calibration_split")
    split = ctx.splits[name]
    check_split_fits(split, bundle.task, where)
    chosen = sorted(random.Random(ctx.seed).sample(range(len(split)), min(config.calibration_items, len(split))))
    sample = type(split)(name=split.name, kind=split.kind, texts=[split.texts[i] for i in chosen],
                         text_pairs=[split.text_pairs[i] for i in chosen] if split.text_pairs is not None else None,
                         labels=None, sources=[split.sources[i] for i in chosen])
    enc = encode(sample, bundle.task, bundle.tokenizer)
    pad = bundle.tokenizer.pad_token_id or 0
    # Histogram calibrators stack activations across inputs: those need one shape for all.
    pad_to = max(enc.lengths) if config.calibration != "minmax" else None
    out = []
    for i in range(len(enc)):
        batch = collate(enc, [i], pad, pad_to=pad_to, with_labels=False)
        feed = {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in input_names}
        if "token_type_ids" in input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        out.append(feed)
    return out


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of prepared inputs."""

    def __init__(self, inputs: list[dict[str, np.ndarray]]) -> None:
        self._inputs = inputs
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._inputs):
            return None
        self._next += 1
        return self._inputs[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def smooth_quant(proto: Any, inputs: list[dict[str, np.ndarray]], alpha: float, dest: Path) -> dict[str, Any]:
    """SmoothQuant (Xiao et al. 2023) on an ONNX graph: for each activation feeding weight MatMuls,
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) per input channel j; the activation is divided by s
    (one inserted Mul) and the weights' rows multiplied by it, so the float result is unchanged while
    activation outliers move into the weights, which per-channel int8 handles better. Writes the
    smoothed graph to ``dest``; returns what was smoothed."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in proto.graph.initializer}
    uses = collections.Counter(i for node in proto.graph.node for i in node.input)
    groups: dict[str, list[Any]] = collections.defaultdict(list)
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] not in weights:
            groups[node.input[0]].append(node)
    # A weight the exporter shares between nodes (identical tensors are stored once) cannot take
    # one activation's scale: leave such groups as they are.
    groups = {k: v for k, v in groups.items() if all(uses[n.input[1]] == 1 for n in v)}
    if not groups:
        return {"smoothed_inputs": 0}
    probe = copy.deepcopy(proto)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in groups if name not in known)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(groups)
    amax = {name: None for name in names}
    for feed in inputs:
        mask = feed["attention_mask"].astype(bool).reshape(-1)
        for name, value in zip(names, session.run(names, feed)):
            flat = np.abs(value.reshape(-1, value.shape[-1]))
            if flat.shape[0] == mask.shape[0]:
                flat = flat[mask]  # padding positions are never seen at inference
            m = flat.max(axis=0)
            amax[name] = m if amax[name] is None else np.maximum(amax[name], m)
    for name, nodes in groups.items():
        w_max = np.max([np.abs(numpy_helper.to_array(weights[n.input[1]])).max(axis=1) for n in nodes], axis=0)
        scale = (np.maximum(amax[name], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        scale = np.clip(scale, 1e-2, 1e2)  # keep it numerically tame where a channel is ~0
        for n in nodes:
            w = numpy_helper.to_array(weights[n.input[1]]) * scale[:, None]
            weights[n.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), n.input[1]))
        inv = f"{name}_smooth_inverse_scale"
        proto.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv))
        smoothed = f"{name}_smoothed"
        mul = helper.make_node("Mul", [name, inv], [smoothed], name=f"{name}_SmoothQuant")
        for n in nodes:
            n.input[0] = smoothed
        first = min(list(proto.graph.node).index(n) for n in nodes)
        proto.graph.node.insert(first, mul)
    onnx.save(proto, str(dest))
    return {"smoothed_inputs": len(groups), "alpha": alpha,
            "matmuls": sum(len(v) for v in groups.values())}


def ort_quantize(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, folder: Path,
                  where: str, skip: frozenset[str] = frozenset(), file: str = "") -> tuple[Any, dict[str, Any]]:
    from lepton.runtimes.ort import ONNX_FILE, OnnxModel, quiet_onnxruntime, require

    onnx = require("onnx")
    require("onnxruntime")
    source: OnnxModel = bundle.model
    info = {k: v for k, v in source.info.items() if k != "unfused_path"}
    if info.get("quantization"):
        raise StageError(f"{where}: the ONNX model is already quantized ({info['quantization']['method']})")
    if config.method == "weight_only" and config.algorithm != "rtn":
        raise StageError(f"{where}.algorithm: {config.algorithm} is built for exported decoders; encoder graphs "
                         "take algorithm: rtn")
    if config.method == "bf16":
        raise StageError(f"{where}: bf16 is not available on ONNX Runtime's CPU provider; "
                         "quantize before export (runtime torch) or use fp16")
    dest = folder / (file or ONNX_FILE)
    with quiet_onnxruntime():
        details = _ort_convert(bundle, config, ctx, dest, where, skip)
    ops = collections.Counter(n.op_type for n in onnx.load(str(dest), load_external_data=False).graph.node)
    details["quantized_ops"] = {k: v for k, v in sorted(ops.items()) if k in _QUANT_OPS}
    info["quantization"] = {"method": config.method, "per_channel": config.per_channel,
                            "reduce_range": config.reduce_range,
                            **{k: v for k, v in details.items() if k in ("calibration", "bits", "group_size")}}
    return OnnxModel(path=dest, config=copy.deepcopy(source.config), info=info), details


def _ort_convert(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, dest: Path,
                 where: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    import onnx

    # Graphs from the transformer optimizer carry no type for some weights; without this
    # quantize_dynamic fails with "Unable to find data type for weight_name" (MEASURED.md).
    float_type = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if config.method == "dynamic_int8":
        return _ort_dynamic_int8(bundle.model, config, dest, skip, float_type)
    if config.method == "static_int8":
        return _ort_static_int8(bundle, config, ctx, dest, where, skip, float_type)
    if config.method == "weight_only":
        return _ort_weight_only(bundle.model, config, dest, skip)
    return _ort_fp16(bundle.model, dest)


def _ort_dynamic_int8(source: Any, config: QuantizeConfig, dest: Path, skip: frozenset[str],
                      float_type: dict[str, Any]) -> dict[str, Any]:
    """Dynamic int8 (weights int8, activations quantized at run time) with ``quantize_dynamic``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lepton.models.int8_embedding import scale_gathers

    details: dict[str, Any] = {}
    proto = source.proto()
    excluded = [n.name for n in proto.graph.node
                if n.name in skip or any(p in n.name for p in config.exclude)]
    scales = scale_gathers(proto)  # 8-bit tables' row scales stay float32 (per-row int8 already)
    quantize_dynamic(str(source.path), str(dest), per_channel=config.per_channel,
                     reduce_range=config.reduce_range, weight_type=QuantType.QInt8,
                     nodes_to_exclude=(excluded + scales) or None, extra_options=dict(float_type))
    details["kept_float"] = len(excluded)
    if scales:
        details["int8_embedding_tables"] = len(scales)
    return details


def _ort_static_int8(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, dest: Path,
                     where: str, skip: frozenset[str], float_type: dict[str, Any]) -> dict[str, Any]:
    """Static int8 (QDQ) of the weight MatMuls and Gemms, calibrated on ``calibration_split``
    (SmoothQuant first, with ``smooth_quant``), with ``quantize_static``."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    details: dict[str, Any] = {}
    src = _static_source(bundle.model, details)
    proto = onnx.load(str(src))
    nodes = [n for n in weight_matmuls(proto, config.exclude) if n not in skip]
    if not nodes:
        raise StageError(f"{where}: no MatMul with a weight left to quantize (exclude: {config.exclude})")
    # Linears on 2-D inputs (the pooler, the classifier) trace to Gemm: int8 too, so no float
    # weight matrix is left (ONNX Runtime fuses their QDQ pairs into QGemm).
    gemms = [n for n in weight_gemms(proto, config.exclude) if n not in skip]
    inputs = calibration_inputs(bundle, ctx, config, [i.name for i in proto.graph.input])
    if config.smooth_quant:
        smoothed = dest.parent / "smoothed.onnx"
        if not smoothed.is_file():  # the same for every trial of this stage
            details["smooth_quant"] = smooth_quant(proto, inputs, config.smooth_alpha, smoothed)
        src = smoothed
    method, extra = _calibration_options(config, float_type)
    # op_types_to_quantize also limits which tensors calibration records: MatMul inputs and
    # outputs, not the attention mask (whose -3.4e38 entries break histogram calibration).
    cache = dest.parent / "calibration.json"  # ranges for this stage's later trials (mixed precision)
    quantize_static(str(src), str(dest), _Reader(inputs), quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel, reduce_range=config.reduce_range,
                    activation_type=QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_quantize=nodes + gemms,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    calibrate_method=method, extra_options=extra, calibration_cache_path=str(cache))
    details["quantized_matmuls"] = len(nodes)
    details["quantized_gemms"] = len(gemms)
    details["calibration"] = {"method": config.calibration, "split": config.calibration_split,
                              "items": len(inputs), "seed": ctx.seed}
    if config.calibration == "percentile":
        details["calibration"]["percentile"] = config.percentile
    return details


def _static_source(source: Any, details: dict[str, Any]) -> Path:
    """The graph static int8 starts from: the unfused export where it is at hand (the fused
    Attention op has no QDQ form), else the model's own graph; notes the choice in ``details``."""
    unfused = source.info.get("unfused_path")
    src = Path(unfused) if unfused and Path(unfused).is_file() else source.path
    fused = src == source.path and bool(source.info.get("optimized"))
    details["graph"] = "fused" if fused else "unfused export"
    if fused:
        details["note"] = ("quantized the fused graph (the unfused export was not at hand): the "
                           "fused Attention op stays float and ONNX Runtime may run int8 MatMuls "
                           "as weight-only kernels")
    return src


def _calibration_options(config: QuantizeConfig, float_type: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``quantize_static``'s calibration method and extra options for ``config.calibration``."""
    from onnxruntime.quantization import CalibrationMethod

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.calibration]
    extra: dict[str, Any] = dict(float_type)
    if config.calibration == "percentile":
        extra["CalibPercentile"] = config.percentile
    return method, extra


def _ort_weight_only(source: Any, config: QuantizeConfig, dest: Path, skip: frozenset[str]) -> dict[str, Any]:
    """Weight-only int4/int8 (MatMulNBits) with ONNX Runtime's ``MatMulNBitsQuantizer``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    details: dict[str, Any] = {}
    excluded = [n.name for n in source.proto().graph.node
                if n.name in skip or any(p in n.name for p in config.exclude)]
    quantizer = MatMulNBitsQuantizer(source.proto(), bits=config.bits, block_size=config.group_size,
                                     is_symmetric=True, accuracy_level=config.accuracy_level,
                                     nodes_to_exclude=excluded)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dest))
    details.update(bits=config.bits, group_size=config.group_size, accuracy_level=config.accuracy_level,
                   kept_float=len(excluded),
                   note=(f"weight-only: int{config.bits} weights in groups of {config.group_size} "
                         "(MatMulNBits); the fused attention's QKV projection and the embeddings stay float"))
    return details


def _ort_fp16(source: Any, dest: Path) -> dict[str, Any]:
    """fp16 weights and compute, inputs and outputs kept as they were."""
    from onnxruntime.transformers.onnx_model import OnnxModel as OrtGraph

    details: dict[str, Any] = {}
    graph = OrtGraph(source.proto())
    graph.convert_float_to_float16(keep_io_types=True)
    graph.save_model_to_file(str(dest))
    details["note"] = ("fp16 weights and compute where ONNX Runtime has fp16 kernels; inputs and "
                       "outputs stay as they were")
    return details


_QUANT_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "QAttention", "DynamicQuantizeMatMul",
              "QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QGemm", "QEmbedLayerNormalization",
              "MatMulIntegerToFloat", "MatMulNBits", "Cast"}
