"""``export``: the current PyTorch model to ONNX, run from then on by ONNX Runtime.

The model is exported with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``):
the dynamo exporter, torch 2.13's default, needs ``onnxscript``, which Lepton does not require.
Tracing uses eager attention (the exported graph is the plain MatMul/Softmax pattern ONNX
Runtime's fusions recognise); batch and sequence axes are dynamic, and the traced example has one
padded row so the attention-mask path is in the graph.

``optimize: true`` then runs ONNX Runtime's transformer optimizer
(``onnxruntime.transformers.optimizer``, model type ``bert``): LayerNorm, SkipLayerNorm, GELU and
embedding fusions, and attention fusion. Attention fusion needs one head count for all layers: a
model whose heads were pruned to different counts per layer keeps attention unfused
(``fuse_attention`` says so in the summary). The unfused graph is kept beside the fused one for a
following ``quantize: static_int8`` (the fused Attention op has no QDQ form).

Parity: the exported (and optimized) graph and the PyTorch model run on up to ``parity_items``
real inputs of ``parity_split`` (dev by default; then test, then train), in padded batches of
``parity_batch``. The largest absolute logit difference (real tokens only, for token
classification) and the share of identical predictions are reported; a difference beyond ``atol``
stops the run.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.runtimes.parity import compare_logits, parity_inputs
from lepton.stages.base import StageConfig, register
from lepton.tasks import kind_of

log = logging.getLogger(__name__)

EXPORTER = "torch.onnx TorchScript exporter (dynamo=False)"


class ExportConfig(StageConfig):
    accepts_runtimes: ClassVar[tuple[str, ...]] = ("torch",)
    produces_runtime: ClassVar[str | None] = "onnxruntime"
    contract_example: ClassVar[dict[str, Any]] = {"parity_items": 8}

    kind: Literal["export"] = "export"
    format: Literal["onnx"] = "onnx"
    opset: int = Field(default=17, ge=14, le=21)
    optimize: bool = True  # ONNX Runtime transformer fusions
    fuse_attention: bool | None = None  # None: fuse when every layer has the config's head count
    atol: float = Field(default=1e-3, gt=0)  # largest allowed |logit difference| vs PyTorch
    parity_items: int = Field(default=64, ge=1)
    parity_split: Literal["dev", "test", "train"] = "dev"
    parity_batch: int = Field(default=8, ge=1)

    smoke_caps: ClassVar[dict[str, Any]] = {"parity_items": 16}


# ------------------------------------------------------------------- export


class _Computed(torch.nn.Module):
    """Stands in for an encoder whose outputs are already computed (see ``_LogitsOnly``)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: Any = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.outputs


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in a fixed order -> logits (what the exported graph computes).

    With extra heads (a multi-task model) the encoder runs once and every head reads its outputs:
    each task model is called with its encoder swapped for ``_Computed``, so the graph holds one
    encoder and one small head per task, with outputs ``logits`` and ``logits.<task>``.
    """

    def __init__(self, model: torch.nn.Module, names: list[str], heads: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model, self.names = model, names
        self.heads = torch.nn.ModuleDict(heads or {})

    def forward(self, *inputs: torch.Tensor) -> Any:
        kwargs = dict(zip(self.names, inputs))
        if not len(self.heads):
            return self.model(**kwargs).logits
        prefix = self.model.base_model_prefix
        encoder = getattr(self.model, prefix)
        computed = _Computed()
        computed.outputs = encoder(**kwargs)
        logits = []
        for task_model in [self.model, *self.heads.values()]:
            own = getattr(task_model, prefix)
            setattr(task_model, prefix, computed)
            try:
                logits.append(task_model(**kwargs).logits)
            finally:
                setattr(task_model, prefix, own)
        return tuple(logits)


def export_onnx(model: torch.nn.Module, example: dict[str, torch.Tensor], path: Path, *, opset: int,
                token_level: bool, heads: dict[str, Any] | None = None) -> list[str]:
    """Trace ``model`` (float, CPU) to ``path``; returns the graph's input names. ``heads``:
    name -> (task model sharing ``model``'s encoder, token level?) for extra outputs."""
    from lepton.runtimes.heads import bind

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]
    heads = heads or {}
    # One deep copy of everything, so the heads keep sharing the copied encoder.
    model, head_models = copy.deepcopy((model, {n: bind(m, model) for n, (m, _) in heads.items()}))
    model = model.cpu().float().eval()
    for m in head_models.values():
        m.cpu().float().eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if token_level else {0: "batch"}
    outputs = ["logits"]
    for name, (_, head_token_level) in heads.items():
        outputs.append(f"logits.{name}")
        axes[f"logits.{name}"] = {0: "batch", 1: "sequence"} if head_token_level else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter's deprecation notice and tracer warnings about Python-side
        # shape checks (constant for an encoder: key length == mask length) are expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(_LogitsOnly(model, names, head_models), tuple(example[n] for n in names), str(path),
                          input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return names


def _uniform_heads(model: Any) -> bool:
    from lepton.models.structure import layer_list

    layers = layer_list(model)
    heads = model.config.num_attention_heads if hasattr(model.config, "num_attention_heads") else None
    if layers is None or heads is None:
        return False
    return all(getattr(getattr(getattr(layer, "attention", None), "self", None), "num_attention_heads", heads)
               == heads for layer in layers)


def optimize_graph(src: Path, dest: Path, config: Any, *, fuse_attention: bool) -> dict[str, int]:
    """ONNX Runtime's transformer fusions on ``src`` -> ``dest``; returns the fused-op counts."""
    from lepton.runtimes.ort import quiet_onnxruntime, require

    require("onnxruntime")
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = fuse_attention
    # transformers 5 reshapes heads with -1, so the optimizer cannot read the head count from the
    # graph: it is given from the config.
    heads = int(getattr(config, "num_attention_heads", 0) or 0) if fuse_attention else 0
    hidden = int(getattr(config, "hidden_size", 0) or 0) if fuse_attention else 0
    with quiet_onnxruntime():
        optimized = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden,
                                   optimization_options=options, opt_level=None, use_gpu=False)
        optimized.save_model_to_file(str(dest))
        fused = optimized.get_fused_operator_statistics()
    return {k: int(v) for k, v in fused.items() if v}


@register(ExportConfig)
def export(bundle: ModelBundle, config: ExportConfig, ctx: RunContext) -> ModelBundle:
    """Export to ONNX, optionally fuse, check parity; the bundle then runs on ONNX Runtime."""
    from lepton.runtimes.ort import require

    where = f"stages.{ctx.stage_index}"
    require("onnx")
    require("onnxruntime")
    model = bundle.model
    if not bundle.runtime_info.trainable:
        raise StageError(f"{where}: export needs a PyTorch model; this one already runs on {bundle.runtime}")
    _check_float32(model, where)
    folder = ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-export"
    folder.mkdir(parents=True, exist_ok=True)
    batches, split_name = parity_inputs(bundle, ctx, config.parity_split, config.parity_items,
                                        config.parity_batch)
    example = _example_with_padding(batches)
    summary, path, raw, names = _write_graph(bundle, config, example, folder)
    candidate = _onnx_bundle(bundle, config, path, raw, names)
    check = _check_parity(bundle, candidate, batches, split_name, config.atol, summary)
    summary["size_mb"] = round(path.stat().st_size / 1e6, 3)
    ctx.stage_summary = summary
    log.info("export: %s, max |logit diff| %.2e on %d %s inputs, %.1f%% same predictions",
             path.name, check["max_abs_diff"], check["compared"], split_name, 100 * check["agreement"])
    if check["max_abs_diff"] > config.atol:
        hint = " (try optimize: false)" if config.optimize else ""
        raise StageError(f"{where}: ONNX parity failed: max |logit difference| {check['max_abs_diff']:.3g} "
                         f"> atol {config.atol:g} on {check['compared']} {split_name} inputs "
                         f"({100 * check['agreement']:.1f}% same predictions){hint}")
    return candidate


def _check_float32(model: Any, where: str) -> None:
    """Export takes a float32 model: quantizing and casting come after it, on the ONNX graph."""
    from lepton.models import int8 as torch_int8

    if torch_int8.is_dynamic_int8(model):
        raise StageError(f"{where}: export a float model: put quantize after export "
                         "(ONNX Runtime quantizes the exported graph)")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise StageError(f"{where}: export a float32 model (this one is {dtype}); "
                         "cast after export with quantize: fp16")


def _write_graph(bundle: ModelBundle, config: ExportConfig, example: dict[str, torch.Tensor],
                 folder: Path) -> tuple[dict[str, Any], Path, Path, list[str]]:
    """Export the model (every head an output of the one graph) to ONNX in ``folder``, then, with
    ``optimize``, fuse it. Returns the summary so far, the graph's path, the unfused graph's path
    (the same file when not optimized) and the graph's input names."""
    from lepton.runtimes.ort import ONNX_FILE

    model = bundle.model
    t0 = time.perf_counter()
    raw = folder / "unfused.onnx"
    heads = {name: (head.model, kind_of(head.task).token_level) for name, head in bundle.heads.items()}
    names = export_onnx(model, example, raw, opset=config.opset,
                        token_level=kind_of(bundle.task).token_level, heads=heads)
    export_s = time.perf_counter() - t0
    summary: dict[str, Any] = {"format": "onnx", "exporter": EXPORTER, "opset": config.opset,
                               "inputs": names, "export_seconds": round(export_s, 2)}
    path = folder / ONNX_FILE
    if config.optimize:
        fuse = _uniform_heads(model) if config.fuse_attention is None else config.fuse_attention
        t1 = time.perf_counter()
        fused = optimize_graph(raw, path, model.config, fuse_attention=fuse)
        summary.update(optimized=True, fuse_attention=fuse, fused_ops=fused,
                       optimize_seconds=round(time.perf_counter() - t1, 2))
        if config.fuse_attention is None and not fuse:
            summary["note"] = ("attention left unfused: layers have different head counts "
                               "(the fused Attention op takes one)")
    else:
        raw.replace(path)
        raw = path
        summary["optimized"] = False
    return summary, path, raw, names


def _onnx_bundle(bundle: ModelBundle, config: ExportConfig, path: Path, raw: Path,
                 names: list[str]) -> ModelBundle:
    """The bundle that runs the exported graph on ONNX Runtime, with the same task, heads and history."""
    from lepton.models.structure import describe
    from lepton.runtimes.ort import OnnxModel
    from lepton.runtimes.torch_eager import work_per_token

    model = bundle.model
    work = work_per_token(model)
    info = {"exporter": EXPORTER, "opset": config.opset, "optimized": config.optimize,
            "inputs": names, "structure": describe(model), "quantization": None,
            "work": ({"linear_macs_per_token": work[0], "attention_width": work[1]} if work else None),
            # In memory only (a machine-local path): the unfused graph, for static quantization.
            "unfused_path": str(raw)}
    onnx_model = OnnxModel(path=path, config=copy.deepcopy(model.config), info=info)
    from lepton.runtimes.heads import Head

    return ModelBundle(model=onnx_model, tokenizer=bundle.tokenizer, task=bundle.task,
                       runtime="onnxruntime", source=bundle.source, history=bundle.history,
                       train_hooks=bundle.train_hooks, main_task=bundle.main_task,
                       heads={n: Head(task=h.task, model=None) for n, h in bundle.heads.items()})


def _check_parity(bundle: ModelBundle, candidate: ModelBundle, batches: list[dict[str, torch.Tensor]],
                  split_name: str, atol: float, summary: dict[str, Any]) -> dict[str, Any]:
    """The exported graph's logits against the PyTorch model's on the parity inputs, every head's
    output too, into ``summary``; returns the worst output's comparison."""
    from lepton.runtimes import for_bundle
    from lepton.runtimes.heads import head_bundle
    from lepton.runtimes.ort import OrtRuntime

    check = compare_logits(for_bundle(bundle), OrtRuntime(candidate), batches)
    summary["parity"] = {"split": split_name, "atol": atol, **check}
    for name in bundle.heads:  # every head's output against its PyTorch model, same inputs
        head_check = compare_logits(for_bundle(head_bundle(bundle, name)),
                                    OrtRuntime(head_bundle(candidate, name)), batches)
        summary.setdefault("heads_parity", {})[name] = head_check
        if head_check["max_abs_diff"] > check["max_abs_diff"]:
            check = {**head_check, "head": name}  # the worst output decides the parity check
    return check


def _example_with_padding(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Two rows, the second padded: tracing then records the attention-mask path."""
    batch = max(batches, key=lambda b: int(b["input_ids"].shape[1]))
    first = {k: v[:1] for k, v in batch.items()}
    width = int(first["input_ids"].shape[1])
    second = {k: v[:1].clone() for k, v in batch.items()}
    cut = max(1, width - max(1, width // 3))  # the last third (at least one token) is padding
    second["attention_mask"][:, cut:] = 0
    second["input_ids"][:, cut:] = 0
    return {k: torch.cat([first[k], second[k]]) for k in first}

# Registered on import: the implementation for generative models.
from lepton.stages.export import decoder as _decoder  # noqa: E402, F401
from lepton.stages.export import seq2seq as _seq2seq  # noqa: E402, F401
