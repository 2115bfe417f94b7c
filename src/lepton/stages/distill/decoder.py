"""``distill`` of a decoder-only generative model: token-level knowledge distillation on the
training pairs (or documents). The loss per batch is

    alpha_task * cross-entropy on the target tokens
  + alpha_kd * KL(teacher || student) of the next-token distributions at ``temperature`` (x T²),
    on the target tokens only (``decoder_compress.token_kd_loss``)
  + alpha_hidden * MSE of mapped hidden states (student layer -> teacher layer; default evenly
    spaced; needs the same width)

The teacher (an earlier stage by name, or a model folder) runs beside the student on each batch
(no cache: logits over a 49k vocabulary per token would not fit one); it must share the student's
tokenizer. Training is the shared loop (``generative.training``): length-grouped batches,
keep-best on dev, exact resume after a kill, progress. ``alpha_attention`` and ``transfer`` are
encoder features and are refused here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import require_torch_decoder, training_data
from lepton.stages.distill import DistillConfig, default_layer_map

log = logging.getLogger(__name__)


@register(DistillConfig, family="decoder")
def distill_decoder(bundle: ModelBundle, config: DistillConfig, ctx: RunContext) -> ModelBundle:
    from lepton.stages.training_decoder import train_generative

    where = f"stages.{ctx.stage_index}"
    student = require_torch_decoder(bundle, ctx, "distill")
    if config.alpha_attention > 0 or config.transfer is not None:
        raise StageError(f"{where}: alpha_attention and transfer apply to encoder distillation only")
    if config.sequence_kd:
        raise StageError(f"{where}.sequence_kd: sequence-level distillation is for encoder-decoders")
    if getattr(config, "method", "full") != "full":
        raise StageError(f"{where}.method: distillation trains every weight of a decoder (method: full)")
    teacher, described = load_teacher(config, bundle, ctx)
    layer_map = _layer_map(config, student, teacher, where)
    train, dev = training_data(bundle, ctx)
    teacher.to(ctx.device).eval()

    def loss_fn(model: Any, batch: dict[str, Any], _: list[int]) -> torch.Tensor:
        labels = batch["labels"]
        hidden = bool(layer_map) and config.alpha_hidden > 0
        out = model(**batch, output_hidden_states=hidden)
        with torch.no_grad():
            ref = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=hidden)
        from lepton.models.decoder_structure import hidden_state_loss, token_kd_loss

        loss = config.alpha_task * out.loss if config.alpha_task > 0 else out.logits.sum() * 0.0
        if config.alpha_kd > 0:
            loss = loss + config.alpha_kd * token_kd_loss(out.logits, ref.logits, labels,
                                                          temperature=config.temperature)
        if hidden:
            pairs = [(s + 1, t + 1) for s, t in layer_map.items()]  # hidden_states[0] is the embeddings
            loss = loss + config.alpha_hidden * hidden_state_loss(out.hidden_states, ref.hidden_states, pairs,
                                                                  batch["attention_mask"])
        return loss

    summary = train_generative(bundle, config, ctx, train, dev_enc=dev, label="distill", loss_fn=loss_fn)
    summary.update({"teacher": described, "temperature": config.temperature, "alpha_task": config.alpha_task,
                    "alpha_kd": config.alpha_kd, "alpha_hidden": config.alpha_hidden,
                    "layer_map": {str(k): v for k, v in layer_map.items()} if layer_map else None,
                    "kd": "token-level KL on the target tokens"})
    ctx.stage_summary = summary
    return bundle


def load_teacher(config: DistillConfig, bundle: ModelBundle, ctx: RunContext) -> tuple[Any, str]:
    from lepton.models.decoder import load_generative
    from lepton.runtimes.saved import is_saved_model, store

    where = f"stages.{ctx.stage_index}.teacher"
    if config.teacher in ctx.snapshots:
        folder, described = ctx.snapshots[config.teacher], f"stage {config.teacher!r}"
    else:
        folder, described = Path(config.teacher).expanduser(), config.teacher
        if not folder.is_dir():
            raise StageError(f"{where}: {config.teacher!r} is neither an earlier stage of this recipe nor a model "
                             f"folder (earlier stages: {', '.join(sorted(ctx.snapshots)) or 'none'})")
    if is_saved_model(folder):
        teacher_bundle = store().load_bundle(folder, verify=config.teacher not in ctx.snapshots)
        if not teacher_bundle.runtime_info.trainable:
            raise StageError(f"{where}: the teacher ({described}) runs on {teacher_bundle.runtime}; "
                             "distill from a PyTorch model (a stage before export)")
        teacher = teacher_bundle.model
    else:
        teacher, _ = load_generative(str(folder))
    if teacher.config.vocab_size != bundle.model.config.vocab_size:
        raise StageError(f"{where}: the teacher ({described}) has a vocabulary of {teacher.config.vocab_size}, "
                         f"the student {bundle.model.config.vocab_size}; "
                         "token-level distillation needs the same tokenizer")
    return teacher, described


def _layer_map(config: DistillConfig, student: Any, teacher: Any, where: str) -> dict[int, int]:
    if config.alpha_hidden == 0:
        return {}
    if student.config.hidden_size != teacher.config.hidden_size:
        raise StageError(f"{where}.alpha_hidden: student width {student.config.hidden_size} and teacher width "
                         f"{teacher.config.hidden_size} differ (hidden-state loss needs the same width)")
    s, t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    layer_map = dict(config.layer_map) if config.layer_map else default_layer_map(s, t)
    bad = [(a, b) for a, b in layer_map.items() if not (0 <= a < s and 0 <= b < t)]
    if bad:
        raise StageError(f"{where}.layer_map: {bad[0][0]} -> {bad[0][1]} is out of range "
                         f"(student {s} layers, teacher {t})")
    return layer_map
