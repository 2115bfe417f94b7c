"""``distill`` of an encoder-decoder, the classic recipe for smaller translation models:

- token-level KD: ``alpha_task`` x cross-entropy on the target tokens + ``alpha_kd`` x KL(teacher ||
  student) of the output distributions at ``temperature`` (x T²), both on the target positions
  (teacher and student read the same source and the same target prefix);
- sequence-level KD (``sequence_kd: true``, Kim & Rush 2016): the teacher first decodes every
  training source with the recipe's generation settings (beam search where the task says so), and
  the student trains on those outputs instead of the references (the KL term, if any, too). The
  decoded targets are kept in the stage folder, so a resumed run does not decode again.

The teacher (an earlier stage by name, or a model folder) must share the student's tokenizer; the
student is usually a smaller model made by ``drop_layers`` or ``prune`` from it. Training is the
shared loop (length-grouped batches, keep-best on dev, exact resume, progress).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch

from lepton.core import atomic
from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import require_torch_decoder, training_data
from lepton.stages.distill import DistillConfig
from lepton.stages.distill.decoder import load_teacher

log = logging.getLogger(__name__)


@register(DistillConfig, family="encoder-decoder", example={"teacher": "teacher", "epochs": 1, "batch_size": 8,
                                                              "sequence_kd": True})
def distill_seq2seq(bundle: ModelBundle, config: DistillConfig, ctx: RunContext) -> ModelBundle:
    from lepton.models.decoder_structure import token_kd_loss
    from lepton.stages.training_decoder import train_generative

    where = f"stages.{ctx.stage_index}"
    require_torch_decoder(bundle, ctx, "distill")
    if config.alpha_attention > 0 or config.alpha_hidden > 0 or config.transfer is not None:
        raise StageError(f"{where}: alpha_hidden, alpha_attention and transfer are not offered for encoder-decoders "
                         "(token-level and sequence-level KD are)")
    teacher, described = load_teacher(config, bundle, ctx)
    teacher.to(ctx.device).eval()
    train, dev = training_data(bundle, ctx)
    decoded: dict[str, Any] = {}
    if config.sequence_kd:
        train, decoded = _teacher_targets(teacher, bundle, ctx)

    def loss_fn(model: Any, batch: dict[str, Any], _: list[int]) -> torch.Tensor:
        labels = batch["labels"]
        out = model(**batch)
        loss = config.alpha_task * out.loss if config.alpha_task > 0 else out.logits.sum() * 0.0
        if config.alpha_kd > 0:
            with torch.no_grad():
                ref = teacher(**batch).logits
            keep = labels != -100  # no shift: an encoder-decoder's logits at t predict labels[t]
            loss = loss + config.alpha_kd * token_kd_loss(out.logits[keep][None], ref[keep][None],
                                                          temperature=config.temperature)
        return loss

    summary = train_generative(bundle, config, ctx, train, dev_enc=dev, label="distill", loss_fn=loss_fn)
    summary.update({"teacher": described, "temperature": config.temperature, "alpha_task": config.alpha_task,
                    "alpha_kd": config.alpha_kd,
                    "kd": ("sequence-level: targets decoded by the teacher" if config.sequence_kd else
                           "token-level KL on the target tokens"), **decoded})
    ctx.stage_summary = summary
    return bundle


def _teacher_targets(teacher: Any, bundle: ModelBundle, ctx: RunContext) -> tuple[Any, dict[str, Any]]:
    """data.train with the teacher's outputs as targets (decoded once; kept for a resumed run)."""
    from lepton.tasks import kind_of
    from lepton.tasks.generate import generate
    from lepton.tasks.generative_kind import settings_of
    from lepton.tasks.prompt_encoding import encode_seq2seq

    split, task = ctx.split("train"), bundle.task
    kind = kind_of(task)
    prompts = [kind.render(bundle.tokenizer, task, str(p)) for p in split.texts]
    settings = settings_of(task)
    cache = (ctx.stage_dir or ctx.work_dir / f"stage-{ctx.stage_index}-distill") / "teacher-targets.json"
    hyps, seconds = None, 0.0
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("prompts") == len(prompts) and saved.get("settings") == settings.model_dump(mode="json"):
            hyps, seconds = saved["targets"], saved["seconds"]
            log.info("distill: reusing the teacher's %d decoded targets", len(hyps))
    if hyps is None:
        log.info("distill: the teacher decodes %d training sources (%s)", len(prompts), settings.strategy)
        t0 = time.perf_counter()
        hyps = generate(teacher, bundle.tokenizer, prompts, settings, max_prompt_tokens=task.max_length)
        seconds = time.perf_counter() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache, json.dumps({"prompts": len(prompts), "settings": settings.model_dump(mode="json"),
                                             "seconds": seconds, "targets": hyps}, ensure_ascii=False))
    enc = encode_seq2seq(bundle.tokenizer, prompts, hyps, max_prompt_tokens=task.max_length,
                         max_target_tokens=int(task.options.get("max_target_length") or 128))
    same = sum(h.strip() == str(r).strip() for h, r in zip(hyps, split.labels or []))
    return enc, {"sequence_kd": {"examples": len(hyps), "decode_seconds": round(seconds, 1),
                                 "decoding": settings.strategy, "identical_to_reference": same}}
