"""Per-layer quantization sensitivity and mixed precision for ``quantize`` (``sensitivity``,
``max_drop``): which layers hurt most when quantized, and keeping the worst in float until the dev
metric is within budget. Works on either runtime through the stage's ``quantize_once``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.runtimes.parity import check_split_fits
from lepton.stages.quantize.ort import weight_matmuls
from lepton.tasks import encode

if TYPE_CHECKING:
    from lepton.stages.quantize import QuantizeConfig

log = logging.getLogger(__name__)


def layer_candidates(bundle: ModelBundle, config: QuantizeConfig) -> list[str]:
    """The layers (PyTorch Linear names, ONNX node names) this method quantizes."""
    from lepton.models import int8 as torch_int8

    if bundle.runtime_info.trainable:
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
    enc, gold, n = _check_sample(bundle, config, ctx)
    scorer = _Scorer(bundle.task, enc, gold, bundle.tokenizer.pad_token_id or 0)
    metric = scorer.metric
    base, base_logits = scorer.score(bundle)
    full, _ = scorer.score(quantized)
    layers = layer_candidates(bundle, config)
    report: dict[str, Any] = {"metric": metric, "split": config.check_split, "items": n, "float": round(base, 3),
                              "all_quantized": round(full, 3), "layers": len(layers)}
    ranking = list(layers)
    if config.sensitivity or (config.max_drop is not None and base - full > config.max_drop):
        ranking = _sensitivity_ranking(layers, scorer, base, base_logits, config, quantize_once, report)
    if config.max_drop is None:
        return quantized, report
    kept, drop = _keep_float_until_within(ranking, scorer, base, base - full, config.max_drop, quantize_once)
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


def _check_sample(bundle: ModelBundle, config: QuantizeConfig, ctx: RunContext) -> tuple[Any, Any, int]:
    """The first ``sensitivity_items`` examples of the labelled ``check_split``, encoded, their gold
    label ids, and how many they are."""
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
    return encode(sample, bundle.task, bundle.tokenizer), label_ids(sample, bundle.task), n


class _Scorer:
    """A model's headline metric on the check sample, in percentage points, signed so that larger
    is better (a drop is base - score)."""

    def __init__(self, task: Any, enc: Any, gold: Any, pad: int) -> None:
        from lepton.tasks import kind_of

        self.task, self.enc, self.gold, self.pad = task, enc, gold, pad
        self.kind = kind_of(task)
        self.metric = self.kind.headline
        self.sign = 100 if self.kind.higher_is_better(self.metric) else -100

    def score(self, b: ModelBundle) -> tuple[float, list[np.ndarray]]:
        """The signed metric of ``b`` and its logits."""
        from lepton.evaluation.harness import predict_logits
        from lepton.runtimes import for_bundle

        logits = predict_logits(for_bundle(b), self.enc, self.pad, batch_size=32)
        return self.sign * self.kind.quick_metrics(logits, self.enc, self.task, self.gold)[self.metric], logits


def _output_error(logits: list[np.ndarray], base_logits: list[np.ndarray]) -> float:
    """Mean absolute difference of ``logits`` from the float model's."""
    return float(np.mean([np.mean(np.abs(a - b)) for a, b in zip(logits, base_logits)]))


def _sensitivity_ranking(layers: list[str], scorer: _Scorer, base: float, base_logits: list[np.ndarray],
                         config: QuantizeConfig, quantize_once: Any, report: dict[str, Any]) -> list[str]:
    """Each layer quantized alone: its metric drop and output error; the layers ranked most
    sensitive first by ``sensitivity_measure`` (the ranking goes into ``report``)."""
    every = frozenset(layers)
    sens = {}
    for name in layers:
        trial, _ = quantize_once(every - {name}, "trial.onnx")
        value, logits = scorer.score(trial)
        sens[name] = {"metric_drop": round(base - value, 3),
                      "output_error": round(_output_error(logits, base_logits), 6)}
    key = "metric_drop" if config.sensitivity_measure == "metric" else "output_error"
    ranking = sorted(layers, key=lambda k: (-sens[k][key], k))  # most sensitive first
    report["sensitivity"] = {"measure": config.sensitivity_measure, "ranking": [
        {"layer": k, **sens[k]} for k in ranking]}
    return ranking


def _keep_float_until_within(ranking: list[str], scorer: _Scorer, base: float, drop: float,
                             max_drop: float, quantize_once: Any) -> tuple[list[str], float]:
    """The most sensitive layers kept in float, one more at a time (never all), until the drop
    from ``base`` is within ``max_drop``; returns them and the last drop."""
    kept: list[str] = []
    while drop > max_drop and len(kept) < len(ranking) - 1:
        kept.append(ranking[len(kept)])
        trial, _ = quantize_once(frozenset(kept), "trial.onnx")
        drop = base - scorer.score(trial)[0]
    return kept, drop
