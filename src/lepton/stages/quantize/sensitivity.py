"""Per-layer quantization sensitivity and mixed precision for ``quantize`` (``sensitivity``,
``max_drop``): which layers hurt most when quantized, and keeping the worst in float until the dev
metric is within budget. Works on either runtime through the stage's ``quantize_once``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.core.errors import StageError
from lepton.stages.quantize.ort import weight_matmuls
from lepton.runtimes.parity import check_split_fits
from lepton.tasks import encode

if TYPE_CHECKING:
    from lepton.stages.quantize import QuantizeConfig

log = logging.getLogger(__name__)


def layer_candidates(bundle: ModelBundle, config: QuantizeConfig) -> list[str]:
    """The layers (PyTorch Linear names, ONNX node names) this method quantizes."""
    from lepton.models import int8 as torch_int8

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


def mixed_precision(bundle: ModelBundle, quantized: ModelBundle, config: QuantizeConfig, ctx: RunContext,
                     quantize_once: Any) -> tuple[ModelBundle, dict[str, Any]]:
    """Per-layer sensitivity (only that layer quantized), then, with ``max_drop``, the most
    sensitive layers back in float, one at a time, until the dev metric is within budget."""
    from lepton.evaluation.harness import predict_logits
    from lepton.runtimes import for_bundle
    from lepton.tasks import kind_of, label_ids

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
    kind = kind_of(bundle.task)
    metric = kind.headline
    # In percentage points, signed so that larger is better (a drop is base - score).
    sign = 100 if kind.higher_is_better(metric) else -100

    def score(b: ModelBundle) -> tuple[float, list[np.ndarray]]:
        logits = predict_logits(for_bundle(b), enc, pad, batch_size=32)
        return sign * kind.quick_metrics(logits, enc, bundle.task, gold)[metric], logits

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
