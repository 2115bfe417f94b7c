"""``quantize``: lower-precision weights (and activations) for the current model, on the runtime
it runs on.

| method | PyTorch (``runtime: torch``) | ONNX Runtime (after ``export``) |
|---|---|---|
| ``dynamic_int8`` | ``torch.ao`` dynamic quantization of ``nn.Linear`` (int8 weights; activations quantized per call) | ``quantize_dynamic``: MatMul, fused Attention, embeddings |
| ``static_int8`` | not available: add ``export`` first | ``quantize_static``, QDQ format, weights per channel, activations calibrated on a seeded sample of ``data.train`` |
| ``weight_only`` | not available (see ``WEIGHT_ONLY_TORCH_NOTE``) | MatMulNBits: int4 or int8 (``bits``) weights in groups of ``group_size`` along the input; ``accuracy_level: 4`` computes with int8 activations |
| ``fp16`` / ``bf16`` | casts the weights | ``fp16``: ONNX Runtime's float16 conversion (inputs/outputs stay as they were); ``bf16``: not available |

``per_channel`` (default true) gives each output channel of a weight its own scale: outputs stay
much closer to float32 than one scale per tensor. ``exclude`` keeps layers in float: module names
(PyTorch) or ONNX node names (ONNX Runtime) containing any of the given strings.

Static INT8 quantizes the MatMuls whose second input is a weight (QDQ pairs around them; ONNX
Runtime fuses them into QLinearMatMul), and the Gemms with a weight (the pooler and classifier,
Linears on 2-D inputs); attention's own activation x activation products stay float. Embedding
tables stay float here: ``quantize_embeddings`` before ``export`` stores them in 8 bits. It works
on the graph as exported, before the transformer optimizer's fusions: the fused Attention op has
no QDQ form, and ONNX Runtime runs the int8 MatMuls of a fused graph as weight-only kernels
(measured slower). ``calibration``: ``minmax`` (ranges as seen),
``percentile`` (clip at the ``percentile``-th percentile of |x|) or ``entropy`` (KL-divergence
thresholds); the histogram methods stack every calibration activation, so their inputs are padded
to one length. The calibration sample is ``calibration_items`` examples drawn with the run's seed.

Sensitivity and mixed precision (int8 and weight-only): ``sensitivity: true`` quantizes one layer
at a time (PyTorch Linear / ONNX node; static INT8 reuses the first calibration's ranges) and ranks
the layers by ``sensitivity_measure``: the mean |logit change| (``output_error``, smooth even on a
few hundred examples) or the drop of the dev metric (``metric``), on the first
``sensitivity_items`` labelled examples of ``check_split``. ``max_drop: 0.5`` measures the fully
quantized model's dev-metric drop (in points) and, while it exceeds the budget, puts the most
sensitive remaining layer back in float and measures again; the summary lists the layers kept in
float and whether the budget was met.

Before INT8 quantization the stage checks the CPU: without AVX512-VNNI, AVX-VNNI or AMX-INT8 int8
kernels are no faster than float32 here, and it says so (a warning and the stage summary). The
quantized model is then compared with the model it came from on ``check_items`` real inputs
(largest |logit difference| and prediction agreement, reported, not gated: quantization changes
outputs by design; the harness measures what that costs in accuracy).
"""

from __future__ import annotations

import collections
import copy
import logging
import random
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from lepton.bundle import ModelBundle, RunContext
from lepton.errors import StageError
from lepton.runtimes.parity import check_split_fits, compare_logits, parity_inputs
from lepton.stages.base import StageConfig, register
from lepton.tasks import collate, encode

log = logging.getLogger(__name__)

Method = Literal["dynamic_int8", "static_int8", "weight_only", "fp16", "bf16"]
_STATIC_ONLY = ("calibration", "calibration_split", "calibration_items", "percentile",
                "activation_type", "smooth_quant", "smooth_alpha")
_WEIGHT_ONLY = ("bits", "group_size", "accuracy_level")


class QuantizeConfig(StageConfig):
    accepts_runtimes: ClassVar[tuple[str, ...]] = ("torch", "onnxruntime")
    produces_runtime: ClassVar[str | None] = None  # stays on the runtime it was given
    quantizes: ClassVar[bool] = True

    kind: Literal["quantize"] = "quantize"
    method: Method
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights (ONNX Runtime): may help int8 accuracy without VNNI
    exclude: list[str] = Field(default_factory=list)  # module / node names (substrings) kept in float
    # static_int8
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_split: Literal["train", "dev", "test"] = "train"
    calibration_items: int = Field(default=128, ge=1)
    percentile: float = Field(default=99.999, gt=90, le=100)
    activation_type: Literal["uint8", "int8"] = "uint8"
    smooth_quant: bool = False  # migrate activation outliers into the weights before calibrating
    smooth_alpha: float = Field(default=0.5, ge=0, le=1)
    # weight_only
    bits: Literal[4, 8] = 4
    group_size: int = Field(default=32, ge=16)  # weights per scale, along the input dimension
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4  # MatMulNBits compute: 4 = int8 activations (fastest on CPU)
    # the comparison with the input model
    check_items: int = Field(default=64, ge=1)
    check_split: Literal["dev", "test", "train"] = "dev"
    # sensitivity analysis and mixed precision (int8 and weight-only methods)
    sensitivity: bool = False  # report each layer's sensitivity (only that layer quantized)
    sensitivity_measure: Literal["output_error", "metric"] = "output_error"
    max_drop: float | None = Field(default=None, ge=0)  # dev-metric points; keep layers float until met
    sensitivity_items: int = Field(default=256, ge=8)  # labelled check_split examples used

    smoke_caps: ClassVar[dict[str, Any]] = {"check_items": 16, "sensitivity_items": 8}

    def apply_smoke(self) -> None:
        super().apply_smoke()
        if self.method == "static_int8":  # elsewhere the setting does not apply (and may not be set)
            self.calibration_items = min(self.calibration_items, 16)

    @model_validator(mode="after")
    def _static_settings(self) -> QuantizeConfig:
        given = [k for k in _STATIC_ONLY if k in self.model_fields_set]
        if given and self.method != "static_int8":
            raise ValueError(f"{given[0]} applies to method static_int8 only")
        given = [k for k in _WEIGHT_ONLY if k in self.model_fields_set]
        if given and self.method != "weight_only":
            raise ValueError(f"{given[0]} applies to method weight_only only")
        if (self.sensitivity or self.max_drop is not None) and self.method in ("fp16", "bf16"):
            raise ValueError("sensitivity and max_drop apply to int8 and weight_only methods")
        if self.group_size & (self.group_size - 1):
            raise ValueError(f"group_size must be a power of two (got {self.group_size})")
        if "percentile" in self.model_fields_set and self.calibration != "percentile":
            raise ValueError("percentile applies to calibration: percentile only")
        if self.method in ("fp16", "bf16") and ({"per_channel", "reduce_range"} & self.model_fields_set):
            raise ValueError(f"per_channel and reduce_range apply to int8 methods, not {self.method}")
        return self

    def runtime_problem(self, runtime: str) -> str | None:
        if runtime == "torch" and self.method in ("static_int8", "weight_only"):
            return f"{self.method} runs on ONNX Runtime; add an export stage before it"
        if runtime == "onnxruntime" and self.method == "bf16":
            return "bf16 is not available on ONNX Runtime's CPU provider; quantize before export, or use fp16"
        return None


# ------------------------------------------------------------------- the CPU


def cpu_check(method: str) -> dict[str, Any]:
    """What this CPU offers for ``method``; warns when int8 cannot be fast here."""
    from lepton.evaluation.environment import describe, fingerprint, int8_fast

    env = fingerprint()
    out: dict[str, Any] = {"cpu": describe(env)}
    if method.endswith("int8"):
        fast = int8_fast(env)
        out["int8_fast_here"] = fast
        if not fast and env.cpu_flags:
            out["cpu_note"] = ("this CPU has no AVX512-VNNI, AVX-VNNI or AMX-INT8: int8 matrix "
                               "products run no faster than float32 here; expect a smaller model, "
                               "not a much faster one")
            log.warning("quantize: %s", out["cpu_note"])
    elif method == "bf16":
        out["bf16_native_here"] = bool(env.cpu_flags.get("amx_bf16"))
    return out


# ------------------------------------------------------------------- PyTorch


def _torch_quantize(bundle: ModelBundle, config: QuantizeConfig, where: str,
                    skip: frozenset[str] = frozenset()) -> tuple[Any, dict[str, Any]]:
    from lepton import torch_int8

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


# ------------------------------------------------------------------- ONNX Runtime

WEIGHT_ONLY_TORCH_NOTE = (
    " (in PyTorch, torchao 0.18 on this CPU: int8 weight-only runs but is no faster than float32 "
    "in eager mode, and int4 weight-only needs the mslk kernels, which are GPU-only)")


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


def _ort_quantize(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, folder: Path,
                  where: str, skip: frozenset[str] = frozenset(), file: str = "") -> tuple[Any, dict[str, Any]]:
    from lepton.runtimes.ort import ONNX_FILE, OnnxModel, quiet_onnxruntime, require

    onnx = require("onnx")
    require("onnxruntime")
    source: OnnxModel = bundle.model
    info = {k: v for k, v in source.info.items() if k != "unfused_path"}
    if info.get("quantization"):
        raise StageError(f"{where}: the ONNX model is already quantized ({info['quantization']['method']})")
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
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    source = bundle.model
    details: dict[str, Any] = {}
    # Graphs from the transformer optimizer carry no type for some weights; without this
    # quantize_dynamic fails with "Unable to find data type for weight_name" (MEASURED.md).
    float_type = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if config.method == "dynamic_int8":
        from lepton.int8_embedding import scale_gathers

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
    elif config.method == "static_int8":
        unfused = source.info.get("unfused_path")
        src = Path(unfused) if unfused and Path(unfused).is_file() else source.path
        fused = src == source.path and bool(source.info.get("optimized"))
        details["graph"] = "fused" if fused else "unfused export"
        if fused:
            details["note"] = ("quantized the fused graph (the unfused export was not at hand): the "
                               "fused Attention op stays float and ONNX Runtime may run int8 MatMuls "
                               "as weight-only kernels")
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
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[config.calibration]
        extra: dict[str, Any] = dict(float_type)
        if config.calibration == "percentile":
            extra["CalibPercentile"] = config.percentile
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
    elif config.method == "weight_only":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

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
    else:  # fp16
        from onnxruntime.transformers.onnx_model import OnnxModel as OrtGraph

        graph = OrtGraph(source.proto())
        graph.convert_float_to_float16(keep_io_types=True)
        graph.save_model_to_file(str(dest))
        details["note"] = ("fp16 weights and compute where ONNX Runtime has fp16 kernels; inputs and "
                           "outputs stay as they were")
    return details


_QUANT_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "QAttention", "DynamicQuantizeMatMul",
              "QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QGemm", "QEmbedLayerNormalization",
              "MatMulIntegerToFloat", "MatMulNBits", "Cast"}


# ------------------------------------------------------------------- the stage


@register(QuantizeConfig)
def quantize(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext) -> ModelBundle:
    """Quantize on the bundle's runtime; report the CPU, sizes and the change in outputs."""
    from lepton.runtimes import for_bundle

    where = f"stages.{ctx.stage_index}"
    folder = ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-quantize"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("calibration.json", "smoothed.onnx"):  # never reuse another run's ranges
        (folder / stale).unlink(missing_ok=True)
    if bundle.runtime not in ("torch", "onnxruntime"):
        raise StageError(f"{where}: quantize does not know runtime {bundle.runtime!r}")
    summary: dict[str, Any] = {"method": config.method, "runtime": bundle.runtime, **cpu_check(config.method)}
    reference = for_bundle(bundle)
    size_before = reference.size_bytes()

    def quantize_once(skip: frozenset[str] = frozenset(), file: str = "") -> tuple[ModelBundle, dict[str, Any]]:
        if bundle.runtime == "torch":
            model, details = _torch_quantize(bundle, config, where, skip)
        else:
            model, details = _ort_quantize(bundle, config, ctx, folder, where, skip, file)
        return ModelBundle(model=model, tokenizer=bundle.tokenizer, task=bundle.task, runtime=bundle.runtime,
                           source=bundle.source, history=bundle.history, train_hooks=bundle.train_hooks,
                           heads=bundle.heads, main_task=bundle.main_task), details

    t0 = time.perf_counter()
    result, details = quantize_once()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary.update(details)
    if config.sensitivity or config.max_drop is not None:
        result, mixed = _mixed_precision(bundle, result, config, ctx, quantize_once)
        summary["mixed_precision"] = mixed
        (folder / "trial.onnx").unlink(missing_ok=True)
    candidate = for_bundle(result)
    summary["size_mb_before"] = round(size_before / 1e6, 3)
    summary["size_mb_after"] = round(candidate.size_bytes() / 1e6, 3)
    batches, split_name = parity_inputs(bundle, ctx, config.check_split, config.check_items, 8)
    summary["vs_input"] = {"split": split_name, **compare_logits(reference, candidate, batches)}
    ctx.stage_summary = summary
    log.info("quantize %s (%s): %.1f -> %.1f MB, max |logit diff| %.3g, %.1f%% same predictions",
             config.method, bundle.runtime, summary["size_mb_before"], summary["size_mb_after"],
             summary["vs_input"]["max_abs_diff"], 100 * summary["vs_input"]["agreement"])
    return result


# ------------------------------------------------------------------- sensitivity and mixed precision


def layer_candidates(bundle: ModelBundle, config: QuantizeConfig) -> list[str]:
    """The layers (PyTorch Linear names, ONNX node names) this method quantizes."""
    from lepton import torch_int8

    if bundle.runtime == "torch":
        return torch_int8.linear_names(bundle.model, config.exclude)
    import onnx

    source = bundle.model
    if config.method == "static_int8":
        unfused = source.info.get("unfused_path")
        path = unfused if unfused and Path(unfused).is_file() else source.path
        return weight_matmuls(onnx.load(str(path)), config.exclude)
    proto = source.proto()
    if config.method == "weight_only":
        return weight_matmuls(proto, config.exclude)
    weights = {init.name for init in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if not any(p in n.name for p in config.exclude) and (
                n.op_type in ("Attention", "EmbedLayerNormalization")
                or (n.op_type in ("MatMul", "Gather") and any(i in weights for i in n.input)))]


def _mixed_precision(bundle: ModelBundle, quantized: ModelBundle, config: QuantizeConfig, ctx: RunContext,
                     quantize_once: Any) -> tuple[ModelBundle, dict[str, Any]]:
    """Per-layer sensitivity (only that layer quantized), then, with ``max_drop``, the most
    sensitive layers back in float, one at a time, until the dev metric is within budget."""
    from lepton.evaluation.harness import predict_logits
    from lepton.evaluation.metrics import quick_metrics
    from lepton.runtimes import for_bundle
    from lepton.tasks import label_ids

    where = f"stages.{ctx.stage_index}"
    split = ctx.split(config.check_split)
    if split.labels is None:
        raise StageError(f"{where}: sensitivity and max_drop need labelled data.{config.check_split}")
    check_split_fits(split, bundle.task, f"data.{config.check_split}")
    n = min(config.sensitivity_items, len(split))
    sample = type(split)(name=split.name, kind=split.kind, texts=split.texts[:n],
                         text_pairs=split.text_pairs[:n] if split.text_pairs is not None else None,
                         labels=split.labels[:n], sources=split.sources[:n])
    enc, gold = encode(sample, bundle.task, bundle.tokenizer), label_ids(sample, bundle.task)
    pad = bundle.tokenizer.pad_token_id or 0
    metric = "accuracy" if bundle.task.kind == "sequence_classification" else "entity_f1"

    def score(b: ModelBundle) -> tuple[float, list[np.ndarray]]:
        logits = predict_logits(for_bundle(b), enc, pad, batch_size=32)
        return 100 * quick_metrics(logits, enc, bundle.task, gold)[metric], logits

    base, base_logits = score(bundle)

    def error(logits: list[np.ndarray]) -> float:
        return float(np.mean([np.mean(np.abs(a - b)) for a, b in zip(logits, base_logits)]))

    full, _ = score(quantized)
    layers = layer_candidates(bundle, config)
    report: dict[str, Any] = {"metric": metric, "split": config.check_split, "items": n, "float": round(base, 3),
                              "all_quantized": round(full, 3), "layers": len(layers)}
    ranking = list(layers)
    if config.sensitivity or (config.max_drop is not None and base - full > config.max_drop):
        every = frozenset(layers)
        sens = {}
        for name in layers:
            trial, _ = quantize_once(every - {name}, "trial.onnx")
            value, logits = score(trial)
            sens[name] = {"metric_drop": round(base - value, 3), "output_error": round(error(logits), 6)}
        key = "metric_drop" if config.sensitivity_measure == "metric" else "output_error"
        ranking = sorted(layers, key=lambda k: (-sens[k][key], k))  # most sensitive first
        report["sensitivity"] = {"measure": config.sensitivity_measure, "ranking": [
            {"layer": k, **sens[k]} for k in ranking]}
    if config.max_drop is None:
        return quantized, report
    kept: list[str] = []
    drop = base - full
    while drop > config.max_drop and len(kept) < len(ranking) - 1:
        kept.append(ranking[len(kept)])
        trial, _ = quantize_once(frozenset(kept), "trial.onnx")
        drop = base - score(trial)[0]
    if kept:
        quantized, _ = quantize_once(frozenset(kept))
    report.update(max_drop=config.max_drop, kept_float=kept, drop=round(drop, 3), met=drop <= config.max_drop)
    if drop > config.max_drop:
        log.warning("quantize: %s drop %.2f points exceeds max_drop %.2f even with all but one layer in float",
                    metric, drop, config.max_drop)
    else:
        log.info("quantize: %d layer(s) kept in float; %s drop %.2f points (max_drop %.2f)",
                 len(kept), metric, drop, config.max_drop)
    return quantized, report
