"""``quantize`` of a generative model.

On ONNX Runtime (after ``export``): ``weight_only`` (MatMulNBits, ``bits`` 4 or 8, groups of
``group_size`` along the input dimension, round-to-nearest; at 4 bits the embedding table too, as
GatherBlockQuantized) and ``dynamic_int8`` (int8 weights, activations quantized at run time), both
through onnxruntime's quantizers (``generative.weight_quant``). On PyTorch: ``dynamic_int8``,
``fp16`` and ``bf16`` as for encoders (``lepton.stages.quantize.torch_dynamic``).

``algorithm`` (``weight_only``): ``rtn`` (round to nearest, onnxruntime), ``hqq`` (Half-Quadratic,
onnxruntime, no data; the embedding table stays float) or ``awq`` (NNCF's activation-aware scales
and scale estimation on the graph, calibrated on the prefill of ``calibration_items`` sequences of
``calibration_split`` as the task encodes them for training; the seconds it took are in the
summary). GPTQ is not offered: onnxruntime runs it only through Intel Neural Compressor, and NNCF's
ONNX backend refuses it. Sensitivity and mixed precision (``weight_only`` on an exported decoder), as for encoders but
per decoder layer (its seven MatMuls; the output layer and the embedding table are groups of
their own): ``sensitivity: true`` quantizes one group at a time and reports how far it moves the
first-step logits on ``check_items`` prompts (``output_error``) and the headline metric on
``sensitivity_items`` examples of ``check_split`` (``metric``: BLEU points, or bits per byte);
``max_drop`` keeps the most sensitive groups in float, one at a time, until the headline metric
is within ``max_drop`` points of the float graph's.

Check: greedy outputs of ``check_items`` real prompts, the input model against the quantized
one (identical share, mean shared prefix), and sizes before and after.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lepton.core.errors import StageError
from lepton.runtimes import for_bundle
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import agreement, real_prompts, rebundle
from lepton.stages.quantize import QuantizeConfig

log = logging.getLogger(__name__)


@register(QuantizeConfig, family="decoder",
          example={"method": "weight_only", "bits": 4, "group_size": 16, "check_items": 4},
          before=({"kind": "export", "parity_items": 4},))
def quantize_generative(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext) -> ModelBundle:
    where = f"stages.{ctx.stage_index}"
    if (config.sensitivity or config.max_drop is not None) and not (
            bundle.runtime_info.is_graph and config.method == "weight_only"):
        raise StageError(f"{where}.sensitivity: sensitivity and max_drop work with method weight_only on an "
                         "exported decoder (put export before this stage)")
    return quantize_and_check(bundle, config, ctx, _on_ort)


def quantize_and_check(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, on_ort: Any) -> ModelBundle:
    """Quantize (``on_ort(bundle, config, ctx, where)`` on an exported graph, PyTorch's own methods
    otherwise), then compare greedy outputs of real prompts and the sizes before and after."""
    where = f"stages.{ctx.stage_index}"
    t0 = time.perf_counter()
    if bundle.runtime_info.is_graph:
        model, details = on_ort(bundle, config, ctx, where)
    elif bundle.runtime_info.trainable:
        model, details = on_torch(bundle, config, where)
    else:
        raise StageError(f"{where}: quantize does not know runtime {bundle.runtime!r}")
    seconds = time.perf_counter() - t0
    before, after = for_bundle(bundle).size_bytes(), for_bundle(rebundle(bundle, model)).size_bytes()
    prompts, split = real_prompts(bundle, ctx, config.check_split, config.check_items)
    check = agreement(bundle.model, model, bundle.tokenizer, prompts, max_prompt_tokens=bundle.task.max_length)
    ctx.stage_summary = {"method": config.method, "runtime": bundle.runtime, **details,
                         "seconds": round(seconds, 2), "size_mb_before": round(before / 1e6, 3),
                         "size_mb_after": round(after / 1e6, 3), "smaller": round(before / max(after, 1), 2),
                         "vs_input": {"split": split, **check}}
    log.info("quantize %s (%s): %.1f -> %.1f MB, %d/%d greedy outputs identical", config.method, bundle.runtime,
             before / 1e6, after / 1e6, check["identical"], check["prompts"])
    return rebundle(bundle, model)


def _on_ort(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, where: str) -> tuple[Any, dict]:
    from lepton.runtimes.ort_decoder import OrtCausalLM
    from lepton.stages.quantize.weight_only import quantize_onnx_dynamic_int8, quantize_onnx_weights

    source = bundle.model
    folder = (ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-quantize") / "decoder"
    if config.method == "weight_only":
        graph_dir, adapted = source.folder, qlora_adapters(bundle, config, where)
        if adapted is not None:
            from lepton.stages.quantize.weight_only import split_adapters

            graph_dir = folder.parent / "adapters-split"
            adapted["modules"] = split_adapters(source.folder, graph_dir, adapted.pop("weights"))
        groups = layer_groups(graph_dir)
        excluded = [n for names in groups.values() for n in names if any(e in n for e in config.exclude)]
        excluded += [n for names in groups.values() for n in names if "/lora_A/" in n or "/lora_B/" in n]
        algorithm = {"rtn": "default"}.get(config.algorithm, config.algorithm)
        calibration = calibration_sequences(bundle, config, ctx) if config.calibrated else None

        def once(keep_float: Sequence[str], dest: Path) -> dict[str, Any]:
            return quantize_onnx_weights(graph_dir, dest, bits=config.bits, block_size=config.group_size,
                                         accuracy_level=config.accuracy_level,
                                         embeddings=config.bits == 4 and algorithm != "hqq",
                                         exclude=tuple(excluded) + tuple(keep_float), algorithm=algorithm,
                                         calibration=calibration)

        def trial(keep_float: Sequence[str], dest: Path) -> Any:
            once(keep_float, dest)
            return OrtCausalLM(dest, info=source.info)

        mixed = None
        if config.sensitivity or config.max_drop is not None:
            mixed = mixed_precision(bundle, config, ctx, groups, trial, folder.parent / "trial")
            excluded += [n for g in mixed.get("kept_float", []) for n in groups[g]]
        details = once([], folder)
        details["kept_float_nodes"] = len(excluded)
        if adapted is not None:
            details["adapters"] = adapted
        if mixed is not None:
            details["mixed_precision"] = mixed
    elif config.method == "dynamic_int8":
        if config.exclude:
            raise StageError(f"{where}.exclude: applies to weight_only on a decoder graph")
        details = quantize_onnx_dynamic_int8(source.folder, folder, per_channel=config.per_channel,
                                             reduce_range=True if config.reduce_range else None)
    else:
        raise StageError(f"{where}.method: {config.method} is not available for an exported decoder; "
                         "use weight_only (bits: 4 or 8) or dynamic_int8")
    details.pop("size_bytes", None)
    info = {**source.info, "precision": precision_of(config), "quantization": details}
    model = OrtCausalLM(folder, info=info)
    source.generation_config.save_pretrained(folder)
    return model, details


def qlora_adapters(bundle: ModelBundle, config: QuantizeConfig, where: str) -> dict[str, Any] | None:
    """When the model's LoRA stage trained against a 4-bit base (finetune ``base_bits``) and only
    ``export`` came after it: its adapters, to run as float MatMuls beside the 4-bit base (merged
    into the weights and rounded again, the fine-tune would be lost to rounding); else None."""
    from lepton.stages.quantize.weight_only import read_adapters

    history = list(bundle.history)
    last = next((i for i in range(len(history) - 1, -1, -1)
                 if history[i].summary.get("base_quantization")), None)
    if last is None:
        return None
    record = history[last]
    base = record.summary["base_quantization"]
    later = [r.kind for r in history[last + 1:] if r.kind != "export"]
    if later:
        raise StageError(f"{where}: stage {record.name!r} trained adapters on a 4-bit base, but {later[0]} changed "
                         "the model since; quantize right after its export, or train the adapters after the change")
    if config.bits != base["bits"] or config.algorithm != "rtn" or config.group_size != base["group_size"]:
        raise StageError(f"{where}: stage {record.name!r} trained its adapters against {base['bits']}-bit weights "
                         f"rounded to nearest in groups of {base['group_size']}; quantize with bits: {base['bits']}, "
                         f"algorithm: rtn, group_size: {base['group_size']} so the deployed base is what it trained on")
    return {"stage": record.name, "adapter_dir": record.summary["adapter_dir"],
            "layout": "float LoRA MatMuls (A, then B) added to the 4-bit MatMulNBits base",
            "weights": read_adapters(record.summary["adapter_dir"])}


def calibration_sequences(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext) -> list[list[int]]:
    """Token ids of the first ``calibration_items`` examples of ``calibration_split`` as the task
    encodes them for training (prompt and target; documents in windows), cut to the task's
    ``max_length``: what the data-aware algorithms calibrate on."""
    from lepton.tasks import kind_of

    where = f"stages.{ctx.stage_index}.calibration_split"
    if config.calibration_split not in ctx.splits or len(ctx.splits[config.calibration_split]) == 0:
        raise StageError(f"{where}: algorithm {config.algorithm} calibrates on data.{config.calibration_split}, "
                         "which this recipe does not have")
    encoded = kind_of(bundle.task).encode(ctx.split(config.calibration_split), bundle.task, bundle.tokenizer)
    limit = bundle.task.max_length or 512
    rows = [list(map(int, ids))[:limit] for ids in encoded.input_ids[:config.calibration_items]]
    return [r for r in rows if r]


def on_torch(bundle: ModelBundle, config: QuantizeConfig, where: str) -> tuple[Any, dict]:
    from lepton.stages.quantize.torch_dynamic import torch_quantize

    model, details = torch_quantize(bundle, config, where)
    model.generation_config = bundle.model.generation_config
    return model, details


def precision_of(config: QuantizeConfig) -> str:
    if config.method != "weight_only":
        return "dynamic int8"
    return f"int{config.bits} weight-only" + ("" if config.algorithm == "rtn" else f" ({config.algorithm})")


# ---------------------------------------------------------------------- mixed precision


def layer_groups(folder: Path) -> dict[str, list[str]]:
    """The graph's weight nodes (MatMul, Gather of the embedding table) by decoder layer:
    ``layer.<i>``, and ``output`` / ``embeddings`` for the rest."""
    import onnx

    graph = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gather") or not any(x in weights for x in node.input):
            continue
        if node.op_type == "Gather" and node.input[0] not in weights:
            continue
        found = re.search(r"layers\.(\d+)[./]", node.name)
        key = f"layer.{found.group(1)}" if found else ("embeddings" if node.op_type == "Gather" else "output")
        groups.setdefault(key, []).append(node.name)
    return groups


def mixed_precision(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext, groups: dict[str, list[str]],
                    once: Any, work: Path) -> dict[str, Any]:
    """Per-group sensitivity (only that group quantized), then, with ``max_drop``, the most
    sensitive groups back in float until the headline metric is within budget."""
    import numpy as np

    from lepton.runtimes.ort_decoder_loop import encode_left_padded
    from lepton.tasks import kind_of

    kind = kind_of(bundle.task)
    split = ctx.split(config.check_split)
    n = min(config.sensitivity_items, len(split))
    sample = type(split)(name=split.name, kind=split.kind, texts=split.texts[:n], text_pairs=None,
                         labels=split.labels[:n] if split.labels is not None else None, sources=split.sources[:n])
    sign = 1.0 if kind.higher_is_better(kind.headline) else -1.0
    prompts, _ = real_prompts(bundle, ctx, config.check_split, config.check_items)
    ids, mask = encode_left_padded(bundle.tokenizer, prompts, add_special_tokens=False)

    def score(model: Any) -> tuple[float, Any]:
        variant = SimpleNamespace(bundle=rebundle(bundle, model), predictions=None)
        quality, _, _ = kind.measure_quality(variant, sample, SimpleNamespace(bootstrap=10), ctx.seed)
        return sign * quality.metrics[kind.headline].value, model.decoder().prefill(ids, mask)[0]

    base, base_logits = score(bundle.model)
    everything = [n for names in groups.values() for n in names]
    full, _ = score(once([], work / "all"))
    report: dict[str, Any] = {"metric": kind.headline, "split": config.check_split, "items": n,
                              "float": round(sign * base, 4), "all_quantized": round(sign * full, 4),
                              "groups": len(groups)}
    ranking = sorted(groups)
    if config.sensitivity or (config.max_drop is not None and base - full > config.max_drop):
        sens = {}
        for g in sorted(groups):
            trial = once([x for x in everything if x not in groups[g]], work / "one")
            value, logits = score(trial)
            sens[g] = {"metric_drop": round(base - value, 4),
                       "output_error": round(float(np.mean(np.abs(logits - base_logits))), 6)}
        key = "metric_drop" if config.sensitivity_measure == "metric" else "output_error"
        ranking = sorted(groups, key=lambda g: (-sens[g][key], g))
        report["sensitivity"] = {"measure": config.sensitivity_measure,
                                 "ranking": [{"layer": g, **sens[g]} for g in ranking]}
    if config.max_drop is not None:
        kept: list[str] = []
        drop = base - full
        while drop > config.max_drop and len(kept) < len(ranking) - 1:
            kept.append(ranking[len(kept)])
            trial = once([x for g in kept for x in groups[g]], work / "kept")
            drop = base - score(trial)[0]
        report.update(max_drop=config.max_drop, kept_float=kept, drop=round(drop, 4), met=drop <= config.max_drop)
        log.info("quantize: %d group(s) kept in float; %s drop %.3f (max_drop %.3f)", len(kept), kind.headline,
                 drop, config.max_drop)
    shutil.rmtree(work, ignore_errors=True)
    return report
