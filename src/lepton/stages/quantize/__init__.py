"""``quantize``: lower-precision weights (and activations) for the current model, on the runtime
it runs on.

Each method on PyTorch (``runtime: torch``) and on ONNX Runtime (after ``export``):

- ``dynamic_int8``
  - PyTorch: ``torch.ao`` dynamic quantization of ``nn.Linear`` (int8 weights; activations
    quantized per call)
  - ONNX Runtime: ``quantize_dynamic``: MatMul, fused Attention, embeddings
- ``static_int8``
  - PyTorch: not available: add ``export`` first
  - ONNX Runtime: ``quantize_static``, QDQ format, weights per channel, activations calibrated on
    a seeded sample of ``data.train``
- ``weight_only``
  - PyTorch: not available (see ``WEIGHT_ONLY_TORCH_NOTE``)
  - ONNX Runtime: MatMulNBits: int4 or int8 (``bits``) weights in groups of ``group_size`` along
    the input; ``accuracy_level: 4`` computes with int8 activations. ``algorithm``: ``rtn`` (round
    to nearest, the default), and on exported decoders also ``hqq`` (Half-Quadratic, no data),
    ``awq`` (activation-aware scales, then scale estimation, through NNCF on ``calibration_items``
    sequences of ``calibration_split``; ``pip install 'lepton[quant]'``)
- ``fp16`` / ``bf16``
  - PyTorch: casts the weights
  - ONNX Runtime: ``fp16``: ONNX Runtime's float16 conversion (inputs/outputs stay as they were);
    ``bf16``: not available

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

import logging
import time
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lepton.core.errors import StageError
from lepton.runtimes import runtime_info
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.runtimes.parity import compare_logits, parity_inputs
from lepton.stages.base import StageConfig, register
from lepton.stages.quantize.ort import ort_quantize
from lepton.stages.quantize.sensitivity import mixed_precision
from lepton.stages.quantize.torch_dynamic import torch_quantize

log = logging.getLogger(__name__)

Method = Literal["dynamic_int8", "static_int8", "weight_only", "fp16", "bf16"]
_STATIC_ONLY = ("calibration", "percentile", "activation_type", "smooth_quant", "smooth_alpha")
_CALIBRATED = ("calibration_split", "calibration_items")  # static_int8, and the data-aware weight-only algorithms
_WEIGHT_ONLY = ("bits", "group_size", "accuracy_level", "algorithm")
DATA_AWARE_ALGORITHMS = ("awq",)


class QuantizeConfig(StageConfig):
    accepts_runtimes: ClassVar[tuple[str, ...]] = ("torch", "onnxruntime")
    produces_runtime: ClassVar[str | None] = None  # stays on the runtime it was given
    quantizes: ClassVar[bool] = True
    contract_example: ClassVar[dict[str, Any]] = {"method": "dynamic_int8", "check_items": 8}

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
    algorithm: Literal["rtn", "hqq", "awq"] = "rtn"  # hqq/awq: exported decoders
    # the comparison with the input model
    check_items: int = Field(default=64, ge=1)
    check_split: Literal["dev", "test", "train", "validation"] = "dev"
    # sensitivity analysis and mixed precision (int8 and weight-only methods)
    sensitivity: bool = False  # report each layer's sensitivity (only that layer quantized)
    sensitivity_measure: Literal["output_error", "metric"] = "output_error"
    max_drop: float | None = Field(default=None, ge=0)  # dev-metric points; keep layers float until met
    sensitivity_items: int = Field(default=256, ge=8)  # labelled check_split examples used

    smoke_caps: ClassVar[dict[str, Any]] = {"check_items": 16, "sensitivity_items": 8}

    def apply_smoke(self) -> None:
        super().apply_smoke()
        if self.calibrated:  # elsewhere the setting does not apply (and may not be set)
            self.calibration_items = min(self.calibration_items, 16)

    @property
    def calibrated(self) -> bool:
        """Whether the method calibrates on data (static INT8, data-aware weight-only)."""
        return self.method == "static_int8" or (self.method == "weight_only"
                                                and self.algorithm in DATA_AWARE_ALGORITHMS)

    @model_validator(mode="after")
    def _static_settings(self) -> QuantizeConfig:
        given = [k for k in _STATIC_ONLY if k in self.model_fields_set]
        if given and self.method != "static_int8":
            raise ValueError(f"{given[0]} applies to method static_int8 only")
        given = [k for k in _CALIBRATED if k in self.model_fields_set]
        if given and not self.calibrated:
            raise ValueError(f"{given[0]} applies to method static_int8, and to weight_only with algorithm "
                             f"{', '.join(DATA_AWARE_ALGORITHMS)}")
        if self.method == "weight_only" and self.algorithm in DATA_AWARE_ALGORITHMS and self.bits != 4:
            raise ValueError(f"algorithm {self.algorithm} quantizes to 4 bits (bits: 4)")
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
        if runtime_info(runtime).trainable and self.method in ("static_int8", "weight_only"):
            return f"{self.method} runs on ONNX Runtime; add an export stage before it"
        if runtime_info(runtime).is_graph and self.method == "bf16":
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
    if not (bundle.runtime_info.trainable or bundle.runtime_info.is_graph):
        raise StageError(f"{where}: quantize does not know runtime {bundle.runtime!r}")
    summary: dict[str, Any] = {"method": config.method, "runtime": bundle.runtime, **cpu_check(config.method)}
    reference = for_bundle(bundle)
    size_before = reference.size_bytes()

    def quantize_once(skip: frozenset[str] = frozenset(), file: str = "") -> tuple[ModelBundle, dict[str, Any]]:
        if bundle.runtime_info.trainable:
            model, details = torch_quantize(bundle, config, where, skip)
        else:
            model, details = ort_quantize(bundle, config, ctx, folder, where, skip, file)
        return ModelBundle(model=model, tokenizer=bundle.tokenizer, task=bundle.task, runtime=bundle.runtime,
                           source=bundle.source, history=bundle.history, train_hooks=bundle.train_hooks,
                           heads=bundle.heads, main_task=bundle.main_task), details

    t0 = time.perf_counter()
    result, details = quantize_once()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary.update(details)
    if config.sensitivity or config.max_drop is not None:
        result, mixed = mixed_precision(bundle, result, config, ctx, quantize_once)
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

# Registered on import: the implementation for generative models, and the quantize_embeddings stage.
from lepton.stages.quantize import decoder as _decoder  # noqa: E402, F401
from lepton.stages.quantize import embeddings as _embeddings  # noqa: E402, F401
from lepton.stages.quantize import seq2seq as _seq2seq  # noqa: E402, F401
