"""``distill``: train the model (the student) to imitate a teacher on data.train.

The loss is a weighted sum (``alpha_*`` weights; a zero weight switches a part off):

- ``alpha_task``: the task's own loss on the gold labels.
- ``alpha_kd``: soft-label distillation, ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``
  at ``temperature`` T (Hinton et al. 2015), averaged over examples (token classification: over
  every real token position).
- ``alpha_hidden``: mean squared error between the student's and the teacher's hidden states at
  mapped layers, over real token positions. Where the widths differ, a learned projection
  (``nn.Linear``, student width -> teacher width) per mapped layer is trained with the student and
  thrown away afterwards; it is never part of the saved model.
- ``alpha_attention``: mean squared error between attention probabilities (every head, real
  positions) at mapped layers. A pair of layers with different head counts is skipped, and the
  summary says so. Both models run eager attention for this (SDPA does not return the maps).

``layer_map`` maps student layer ``i`` to teacher layer ``j`` (0-based encoder layers, the output
of layer i). Default: evenly spaced, student layer ``i`` -> teacher layer ``round((i+1)*T/S) - 1``
for S student and T teacher layers (halves round up): 3 of 6 -> ``{0: 1, 1: 3, 2: 5}``, equal
depths -> identity.

The teacher is an earlier stage of the same recipe by name (``teacher: finetune``), a saved Lepton
model, or a transformers folder with a trained task head; it must use the student's tokenizer
and labels. Its outputs are computed once (eval mode, no dropout) and cached in
``<output>/cache/teacher/`` under a key of (teacher weights sha256, the tokenized training inputs,
the cached layers), so later epochs, a resumed run and a rerun into the same output folder read
them instead of running the teacher; the summary reports the seconds saved. Logits are stored as
float32, hidden states and attention maps as float16. When those would exceed ``cache_max_mb`` the
teacher runs beside the student on every batch instead.

``transfer``: more text (a data split in the recipe's own columns; labels, if any, are ignored) the
student learns from through the teacher's outputs only: the classic transfer set of knowledge
distillation, where unlabelled in-domain text carries most of what the teacher knows. The task
loss sees only data.train's labelled examples; a batch with none of them skips it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from lepton.core.errors import StageError
from lepton.core.registry import suggest
from lepton.data import DataSplitConfig
from lepton.models.structure import layer_list, layer_sizes
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.distill.teacher_cache import (
    TeacherBatch,
    TeacherCache,
    cache_key,
    read_cache,
    teacher_batch,
    write_cache,
)
from lepton.stages.training import TrainJob, TrainSettings, dev_evaluator, task_metric, train
from lepton.tasks import IGNORE, Encoded, encode, kind_of

log = logging.getLogger(__name__)

class DistillConfig(TrainSettings):
    trains_head: ClassVar[bool] = True
    contract_example: ClassVar[dict[str, Any]] = {"teacher": "teacher", "epochs": 1, "batch_size": 8}
    contract_before: ClassVar[tuple[dict[str, Any], ...]] = (
        {"kind": "finetune", "name": "teacher", "epochs": 1, "batch_size": 8},)

    kind: Literal["distill"] = "distill"
    teacher: str  # an earlier stage's name in this recipe, or a model folder
    temperature: float = Field(default=2.0, gt=0)
    alpha_task: float = Field(default=0.5, ge=0)
    alpha_kd: float = Field(default=0.5, ge=0)
    alpha_hidden: float = Field(default=0.0, ge=0)
    alpha_attention: float = Field(default=0.0, ge=0)
    layer_map: dict[int, int] | None = None  # student layer -> teacher layer; default evenly spaced
    cache_teacher: bool = True
    cache_max_mb: float = Field(default=2048, ge=0)  # larger caches: run the teacher live instead
    transfer: DataSplitConfig | None = None  # unlabelled text for the teacher-output losses only
    # Encoder-decoders: sequence-level KD (Kim & Rush, 2016): the student trains on the teacher's
    # decoded outputs (the recipe's generation settings, e.g. beam search) instead of the references.
    sequence_kd: bool = False

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.alpha_task + self.alpha_kd + self.alpha_hidden + self.alpha_attention <= 0:
            raise ValueError("every alpha is 0; give alpha_task, alpha_kd, alpha_hidden or "
                             "alpha_attention a positive weight")
        if self.layer_map is not None:
            if not self.layer_map:
                raise ValueError("layer_map is empty (leave it out for the default mapping)")
            if any(k < 0 or v < 0 for k, v in self.layer_map.items()):
                raise ValueError("layer_map indices count from 0 (the first encoder layer)")
            if self.alpha_hidden == 0 and self.alpha_attention == 0:
                raise ValueError("layer_map applies to alpha_hidden and alpha_attention; give one "
                                 "of them a positive weight")
        return self


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Evenly spaced: student layer i -> teacher layer round((i+1)*T/S) - 1, halves rounding up."""
    s, t = student_layers, teacher_layers
    return {i: max(0, min(t - 1, math.floor((i + 1) * t / s + 0.5) - 1)) for i in range(s)}


# ---------------------------------------------------------------------------------------------
# The teacher


@dataclass
class TeacherInfo:
    folder: Path
    described: str  # for messages: "stage 'finetune'" or the folder
    identity: str  # sha256 of the weights
    layers: int
    hidden_size: int
    heads: list[int]  # attention heads per layer
    lepton: bool  # a saved Lepton model (has lepton.json)


def _weights_sha(folder: Path) -> str:
    from lepton.core.atomic import sha256
    from lepton.models import WEIGHT_FILES

    digest = hashlib.sha256()
    found = False
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            digest.update(sha256(folder / name).encode())
            found = True
    for shard in sorted(folder.glob("model-*.safetensors")):
        digest.update(sha256(shard).encode())
        found = True
    if not found:
        raise StageError(f"{folder}: no model weights found (expected model.safetensors)")
    return digest.hexdigest()


def resolve_teacher(config: DistillConfig, bundle: ModelBundle, ctx: RunContext) -> TeacherInfo:
    """Find the teacher (an earlier stage by name, or a folder) and check it fits the student."""
    from transformers import AutoConfig

    from lepton.runtimes.saved import is_saved_model, store

    where = f"stages.{ctx.stage_index}.teacher"
    name = config.teacher
    if name in ctx.snapshots:
        folder, described = ctx.snapshots[name], f"stage {name!r}"
    else:
        folder, described = Path(name).expanduser(), str(name)
        if not folder.is_dir():
            earlier = sorted(ctx.snapshots)
            raise StageError(f"{where}: {name!r} is neither an earlier stage of this recipe nor a model "
                             f"folder{suggest(name, earlier)} (earlier stages: "
                             f"{', '.join(earlier) or 'none'})")
    lepton = is_saved_model(folder)
    heads: list[int] | None = None
    if lepton:
        manifest = store().read_manifest(folder, verify=name not in ctx.snapshots)
        labels = (manifest.get("task") or {}).get("labels")
        if labels != bundle.task.labels:
            raise StageError(f"{where}: the teacher ({described}) predicts {labels}, the student "
                             f"{bundle.task.labels}; distillation needs the same labels in the "
                             "same order")
        kind = (manifest.get("task") or {}).get("kind")
        if kind != bundle.task.kind:
            raise StageError(f"{where}: the teacher ({described}) is a {kind} model, the student "
                             f"a {bundle.task.kind} model")
        identity = store().file_digests(folder, manifest).get("model.safetensors") or _weights_sha(folder)
        structure = manifest.get("structure")
        if isinstance(structure, dict):
            heads = [int(h) for h in structure.get("num_attention_heads", [])]
    else:
        identity = _weights_sha(folder)
    try:
        cfg = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise StageError(f"{where}: cannot read the teacher's config in {folder}: "
                         f"{str(err).splitlines()[0]}") from None
    if not lepton and getattr(cfg, "num_labels", None) != bundle.task.num_labels:
        raise StageError(f"{where}: the teacher in {folder} has {cfg.num_labels} labels, the student "
                         f"{bundle.task.num_labels}")
    layers = int(getattr(cfg, "num_hidden_layers", 0))
    return TeacherInfo(folder=folder, described=described, identity=identity, layers=layers,
                       hidden_size=int(getattr(cfg, "hidden_size", 0)),
                       heads=heads or [int(getattr(cfg, "num_attention_heads", 0))] * layers,
                       lepton=lepton)


def load_teacher(info: TeacherInfo, bundle: ModelBundle, ctx: RunContext, *, eager: bool) -> Any:
    from lepton.runtimes.saved import store

    where = f"stages.{ctx.stage_index}.teacher"
    if info.lepton:
        teacher = store().load_bundle(info.folder, verify=False, device=ctx.device)
        model, tokenizer = teacher.model, teacher.tokenizer
    else:
        from lepton.models import load_tokenizer

        auto = kind_of(bundle.task).auto_model()
        model, info_ = auto.from_pretrained(info.folder, output_loading_info=True)
        head = [k for k in info_.get("missing_keys", []) if not k.startswith(model.base_model_prefix)]
        if head:
            raise StageError(f"{where}: {info.folder} has no trained task head (missing {head[0]}); "
                             "a teacher must be a fine-tuned model")
        tokenizer = load_tokenizer(str(info.folder))
        model.to(ctx.device)
    if tokenizer.get_vocab() != bundle.tokenizer.get_vocab():
        raise StageError(f"{where}: the teacher ({info.described}) uses another vocabulary than the "
                         "student; distillation here needs the same tokenizer")
    if eager:
        model.set_attn_implementation("eager")
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The loss


@dataclass
class LossPlan:
    mapping: dict[int, int]  # student layer -> teacher layer
    hidden_pairs: list[tuple[int, int]]  # (student layer, teacher layer)
    attention_pairs: list[tuple[int, int]]
    projections: torch.nn.ModuleDict  # str(student layer) -> Linear, where the widths differ


def distill_loss(student_out: Any, teacher: TeacherBatch, mask: torch.Tensor, config: DistillConfig,
                 plan: LossPlan, *, use_task: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted loss and its parts. ``mask``: [B, W], 1 on real tokens."""
    parts: dict[str, torch.Tensor] = {}
    if config.alpha_task > 0 and use_task:
        parts["task"] = student_out.loss
    if config.alpha_kd > 0:
        temp = config.temperature
        kl = F.kl_div(F.log_softmax(student_out.logits.float() / temp, dim=-1),
                      F.log_softmax(teacher.logits / temp, dim=-1),
                      reduction="none", log_target=True).sum(-1)
        if kl.dim() == 2:  # token classification: average over real tokens
            kl = (kl * mask).sum() / mask.sum().clamp(min=1)
        else:
            kl = kl.mean()
        parts["kd"] = kl * temp * temp
    if config.alpha_hidden > 0 and plan.hidden_pairs:
        tokens = mask.sum().clamp(min=1)
        losses = []
        for i, j in plan.hidden_pairs:
            h = student_out.hidden_states[i + 1]
            if str(i) in plan.projections:
                h = plan.projections[str(i)](h)
            err = ((h.float() - teacher.hidden[j]) ** 2).mean(-1)
            losses.append((err * mask).sum() / tokens)
        parts["hidden"] = torch.stack(losses).mean()
    if config.alpha_attention > 0 and plan.attention_pairs:
        grid = (mask[:, None, :, None] * mask[:, None, None, :]).float()
        losses = []
        for i, j in plan.attention_pairs:
            a = student_out.attentions[i].float()
            err = ((a - teacher.attention[j]) ** 2) * grid
            losses.append(err.sum() / (grid.sum() * a.shape[1]).clamp(min=1))
        parts["attention"] = torch.stack(losses).mean()
    weights = {"task": config.alpha_task, "kd": config.alpha_kd, "hidden": config.alpha_hidden,
               "attention": config.alpha_attention}
    total = sum(weights[k] * v for k, v in parts.items())
    if not isinstance(total, torch.Tensor):
        total = student_out.logits.sum() * 0.0
    return total, {k: float(v.detach()) for k, v in parts.items()}


def plan_layers(config: DistillConfig, bundle: ModelBundle, teacher: TeacherInfo,
                where: str) -> tuple[LossPlan, list[str]]:
    """Which layers meet in the hidden-state and attention losses; notes on what was skipped."""
    notes: list[str] = []
    empty = LossPlan({}, [], [], torch.nn.ModuleDict())
    if config.alpha_hidden == 0 and config.alpha_attention == 0:
        return empty, notes
    layers = layer_list(bundle.model)
    if layers is None or teacher.layers < 1:
        raise StageError(f"{where}.alpha_hidden: hidden-state and attention losses need BERT-style "
                         "encoders (base_model.encoder.layer) on both sides")
    s = len(layers)
    mapping = config.layer_map or default_layer_map(s, teacher.layers)
    for i, j in sorted(mapping.items()):
        if i >= s:
            raise StageError(f"{where}.layer_map: student layer {i} is out of range (the student has "
                             f"{s} layers, 0-{s - 1})")
        if j >= teacher.layers:
            raise StageError(f"{where}.layer_map: teacher layer {j} is out of range (the teacher has "
                             f"{teacher.layers} layers, 0-{teacher.layers - 1})")
    pairs = sorted(mapping.items())
    projections = torch.nn.ModuleDict()
    width = int(bundle.model.config.hidden_size)
    hidden_pairs = pairs if config.alpha_hidden > 0 else []
    if hidden_pairs and width != teacher.hidden_size:
        for i, _ in hidden_pairs:
            projections[str(i)] = torch.nn.Linear(width, teacher.hidden_size)
    attention_pairs: list[tuple[int, int]] = []
    if config.alpha_attention > 0:
        sizes = layer_sizes(bundle.model)
        student_heads = sizes[0] if sizes else [int(bundle.model.config.num_attention_heads)] * s
        for i, j in pairs:
            if student_heads[i] != teacher.heads[j]:
                notes.append(f"attention loss skips student layer {i} -> teacher layer {j}: "
                             f"{student_heads[i]} vs {teacher.heads[j]} heads")
            else:
                attention_pairs.append((i, j))
        if not attention_pairs:
            notes.append("no layer pair has equal head counts: the attention loss is off")
    for note in notes:
        log.warning("distill: %s", note)
    return LossPlan(dict(pairs), hidden_pairs, attention_pairs, projections), notes


# ---------------------------------------------------------------------------------------------
# The stage


@register(DistillConfig)
def distill(bundle: ModelBundle, config: DistillConfig, ctx: RunContext) -> ModelBundle:
    """Train the model to imitate the teacher's outputs (and hidden states/attention maps)."""
    where = f"stages.{ctx.stage_index}"
    if config.sequence_kd:
        raise StageError(f"{where}.sequence_kd: sequence-level distillation is for encoder-decoders "
                         "(the student learns the teacher's decoded outputs)")
    metric = task_metric(config, bundle, ctx)
    split = ctx.split("train")
    if split.labels is None and config.alpha_task > 0:
        raise StageError(f"{where}.alpha_task: the task loss needs labelled data.train "
                         "(set alpha_task: 0 to distill from the teacher alone)")
    info = resolve_teacher(config, bundle, ctx)
    torch.manual_seed(ctx.seed)  # the projections' initial weights
    plan, notes = plan_layers(config, bundle, info, where)
    data, n_transfer = _training_data(split, config, bundle, ctx, where)
    token_level = kind_of(bundle.task).token_level
    hidden = sorted({j for _, j in plan.hidden_pairs})
    attention = sorted({j for _, j in plan.attention_pairs})
    eager = bool(attention)
    pad = bundle.tokenizer.pad_token_id or 0
    student = bundle.model
    previous_attn = student.config._attn_implementation
    if eager:
        student.set_attn_implementation("eager")
    cache, live_teacher, cache_info = _teacher_outputs(config, info, bundle, ctx, data, pad, token_level,
                                                       hidden, attention, eager)
    loss_fn = _DistillLoss(config, plan, cache, live_teacher, hidden, attention, ctx.device)

    def restore_attention() -> None:
        if eager:
            student.set_attn_implementation(previous_attn)

    extra = [plan.projections] if len(plan.projections) else []
    summary = train(bundle, config, ctx, TrainJob(
        data=data, loss_fn=loss_fn, extra=extra, metric=metric, evaluate=dev_evaluator(student, bundle, ctx),
        on_trained=restore_attention, label="distill"))
    passes = summary["items"] / max(len(data), 1)  # teacher passes over the data a live teacher makes
    if cache is not None:
        _record_cache_savings(cache_info, passes)
    summary.update({
        "teacher": info.described, "teacher_folder": str(info.folder),
        "temperature": config.temperature,
        "alphas": {"task": config.alpha_task, "kd": config.alpha_kd, "hidden": config.alpha_hidden,
                   "attention": config.alpha_attention},
        "layer_map": {str(i): j for i, j in plan.mapping.items()} or None,
        "projections": len(plan.projections),
        "loss_parts_mean": loss_fn.parts_mean(),
        "teacher_cache": cache_info,
        "skipped_rows": len(split.skipped),
        "transfer_examples": n_transfer,
    })
    if notes:
        summary["notes"] = notes
    ctx.stage_summary = summary
    return bundle


def _training_data(split: Any, config: DistillConfig, bundle: ModelBundle, ctx: RunContext,
                   where: str) -> tuple[Encoded, int]:
    """data.train encoded, followed by the transfer text if any; and how many transfer examples."""
    data = encode(split, bundle.task, bundle.tokenizer)
    n_transfer = 0
    if config.transfer is not None:
        data, n_transfer = _with_transfer(data, config.transfer, bundle, where, ctx.columns)
    if config.alpha_task > 0 and data.labels is None:
        raise StageError(f"{where}.alpha_task: the task loss needs labelled data.train")
    return data, n_transfer


def _teacher_outputs(config: DistillConfig, info: TeacherInfo, bundle: ModelBundle, ctx: RunContext,
                     data: Encoded, pad: int, token_level: bool, hidden: list[int], attention: list[int],
                     eager: bool) -> tuple[TeacherCache | None, Any, dict[str, Any]]:
    """Where the teacher's outputs come from: the cache (read, or built now), or, with the cache off
    or too large, the teacher itself running beside the student. Returns (cache, live teacher,
    the summary's ``teacher_cache``); one of the first two is None."""
    cache_info: dict[str, Any] = {"enabled": config.cache_teacher}
    cache: TeacherCache | None = None
    live_teacher = None
    if config.cache_teacher:
        size_mb = TeacherCache.estimate_mb(data, bundle.task.num_labels, token_level, info.hidden_size,
                                           len(hidden), [info.heads[j] for j in attention])
        cache_info["size_mb"] = round(size_mb, 2)
        if size_mb > config.cache_max_mb:
            cache_info["status"] = "too_large"
            log.warning("distill: the teacher cache would take %.0f MB (> cache_max_mb %.0f); the "
                        "teacher runs beside the student instead", size_mb, config.cache_max_mb)
        else:
            cache = _cached_teacher(info, bundle, ctx, data, pad, token_level, hidden, attention,
                                    eager, cache_info)
    else:
        cache_info["status"] = "off"
    if cache is None:
        live_teacher = load_teacher(info, bundle, ctx, eager=eager)
    return cache, live_teacher, cache_info


class _DistillLoss:
    """The training loss (``TrainJob.loss_fn``): the student's outputs against the teacher's for
    the batch, from the cache or the live teacher; sums each loss part for the summary."""

    def __init__(self, config: DistillConfig, plan: LossPlan, cache: TeacherCache | None,
                 live_teacher: Any, hidden: list[int], attention: list[int], device: Any) -> None:
        self.config, self.plan = config, plan
        self.cache, self.live_teacher = cache, live_teacher
        self.hidden, self.attention = hidden, attention
        self.device = device
        self.need_hidden, self.need_attention = bool(plan.hidden_pairs), bool(plan.attention_pairs)
        self.totals: dict[str, float] = {}
        self.batches_seen = 0

    def __call__(self, model: Any, batch: dict[str, torch.Tensor], idx: list[int]) -> torch.Tensor:
        # A batch of transfer text only has no gold label: no task loss for it.
        labelled = "labels" in batch and bool((batch["labels"] != IGNORE).any())
        use_task = self.config.alpha_task > 0 and labelled
        inputs = batch if use_task else {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs, output_hidden_states=self.need_hidden,
                    output_attentions=self.need_attention)
        width = int(batch["input_ids"].shape[1])
        if self.cache is not None:
            teacher = self.cache.for_batch(idx, width, self.device)
        else:
            teacher = teacher_batch(self.live_teacher, batch, self.hidden, self.attention)
        loss, parts = distill_loss(out, teacher, batch["attention_mask"], self.config, self.plan,
                                   use_task=use_task)
        for k, v in parts.items():
            self.totals[k] = self.totals.get(k, 0.0) + v
        self.batches_seen += 1
        return loss

    def parts_mean(self) -> dict[str, float]:
        """Each loss part's mean over the batches trained on."""
        return {k: round(v / max(self.batches_seen, 1), 6) for k, v in self.totals.items()}


def _record_cache_savings(cache_info: dict[str, Any], passes: float) -> None:
    """Add the teacher passes the cache avoided and the seconds that saved (net of reading or
    writing it) to ``cache_info``; ``passes``: the passes over the data a live teacher makes."""
    saved_passes = passes - (0 if cache_info["status"] == "hit" else 1)
    hit = cache_info["status"] == "hit"
    cost = cache_info["load_seconds"] if hit else cache_info["write_seconds"]
    cache_info["teacher_passes_avoided"] = round(max(saved_passes, 0.0), 3)
    cache_info["seconds_saved_estimate"] = round(
        max(saved_passes, 0.0) * cache_info["teacher_pass_seconds"] - cost, 2)


def _with_transfer(data: Encoded, cfg: DataSplitConfig, bundle: ModelBundle, where: str,
                   ctx_columns: Any) -> tuple[Encoded, int]:
    """data.train followed by the transfer text, whose labels are IGNORE (teacher losses only)."""
    from lepton.data import load_split

    if ctx_columns is None:
        raise StageError(f"{where}.transfer: the run does not say which columns hold the text")
    columns = dataclasses.replace(ctx_columns, label=None)  # the task's text columns, no labels
    split = load_split(cfg, columns, name=f"{where}.transfer", kind=bundle.task.split_kind)
    if len(split) == 0:
        raise StageError(f"{where}.transfer: {cfg.path} holds no examples")
    extra = encode(split, bundle.task, bundle.tokenizer)
    if (extra.token_type_ids is None) != (data.token_type_ids is None):
        raise StageError(f"{where}.transfer: its inputs do not match data.train's (token types)")
    n = len(extra)
    if data.labels is not None:  # IGNORE: the transfer text has no gold label for the task loss
        extra = dataclasses.replace(extra, labels=kind_of(bundle.task).transfer_labels(extra))
    combined = Encoded.concat([data, extra])
    log.info("distill: %d transfer examples from %s (teacher losses only)", n, cfg.path)
    return combined, n


def _cached_teacher(info: TeacherInfo, bundle: ModelBundle, ctx: RunContext, data: Encoded, pad: int,
                    token_level: bool, hidden: list[int], attention: list[int], eager: bool,
                    cache_info: dict[str, Any]) -> TeacherCache:
    key = cache_key(info.identity, data, hidden, attention)
    path = ctx.out_dir / "cache" / "teacher" / f"{key[:24]}.safetensors"
    cache_info["path"] = str(path)
    if path.is_file():
        started = time.perf_counter()
        found = read_cache(path, token_level)
        if found is not None:
            cache, meta = found
            cache_info.update({"status": "hit", "load_seconds": round(time.perf_counter() - started, 3),
                               "teacher_pass_seconds": meta.get("teacher_pass_seconds", 0.0)})
            log.info("distill: teacher outputs read from the cache %s", path)
            with contextlib.suppress(OSError):  # its last use: a size-limited cache evicts the oldest first
                os.utime(path)
            return cache
    teacher = load_teacher(info, bundle, ctx, eager=eager)
    started = time.perf_counter()
    cache = TeacherCache.build(teacher, data, pad, ctx.device, token_level, hidden, attention)
    seconds = time.perf_counter() - started
    del teacher
    started = time.perf_counter()
    write_cache(path, cache, {"teacher": info.described, "teacher_sha256": info.identity,
                               "examples": len(data), "teacher_pass_seconds": round(seconds, 3)})
    cache_info.update({"status": "built", "teacher_pass_seconds": round(seconds, 3),
                       "write_seconds": round(time.perf_counter() - started, 3)})
    log.info("distill: teacher outputs for %d examples computed in %.1f s and cached in %s",
             len(data), seconds, path)
    return cache

# Registered on import: the implementation for generative models.
from lepton.stages.distill import decoder as _decoder  # noqa: E402, F401
from lepton.stages.distill import seq2seq as _seq2seq  # noqa: E402, F401
