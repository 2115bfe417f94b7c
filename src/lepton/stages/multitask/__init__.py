"""``multitask``: fine-tune one shared encoder for several tasks at once, one head per task.

The recipe's own ``task`` and ``data`` are the main task (named ``main``, default "main"); the
stage adds more under ``tasks:``, each with its own task section and data::

    - kind: multitask
      main: sst2
      sampling: temperature      # proportional | temperature | uniform
      temperature: 2.0
      tasks:
        agnews:
          task: {kind: sequence_classification, text: text, label: label}
          data: {train: {path: ...}, dev: {path: ...}}

Each batch holds examples of one task (length-grouped within that task); which task comes next
is drawn with probability proportional to ``n_task ** (1 / temperature)`` (``proportional`` is
temperature 1, ``uniform`` is infinite temperature), so a small task is seen more often than its
share of the data without being repeated endlessly. An epoch is as many batches as the tasks'
examples fill; a task whose batches run out starts a fresh shuffle of its data. The plan is a
pure function of (seed, epoch), so ``--resume`` replays it exactly.

Model selection uses the mean of every task's selection metric on its own dev set. At the end
each task is scored on its dev set with bootstrap CIs (in the stage summary). The artifact holds
every head: ``lepton.load(path).predict(texts, task="agnews")``. The run's evaluation harness
measures the main task (``lepton evaluate MODEL --task NAME`` measures another). ``export`` puts
every head in one ONNX graph (one encoder pass, an output per head), which ``quantize`` keeps.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from lepton.core.config import PlainName, StrictModel
from lepton.core.errors import StageError
from lepton.data import DataSplitConfig, Split, load_split
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.runtimes.heads import Head, check_name, make_head
from lepton.stages.base import register
from lepton.stages.training import TrainJob, TrainSettings, evaluate_dev, train
from lepton.tasks import (
    Encoded,
    TaskConfig,
    TaskSpec,
    build_task,
    collate,
    encode,
    kind_of,
    label_ids,
    train_batches,
)

log = logging.getLogger(__name__)


class TaskData(StrictModel):
    train: DataSplitConfig
    dev: DataSplitConfig | None = None


class ExtraTask(StrictModel):
    task: TaskConfig
    data: TaskData
    weight: float = Field(default=1.0, gt=0)  # multiplies this task's loss


class MultitaskConfig(TrainSettings):
    trains_head: ClassVar[bool] = True
    adds_heads: ClassVar[bool] = True
    contract_example: ClassVar[dict[str, Any]] = {
        "epochs": 1, "batch_size": 8,
        "tasks": {"again": {"task": "{task}", "data": {"train": {"path": "{train}"}, "dev": {"path": "{dev}"}}}}}

    kind: Literal["multitask"] = "multitask"
    main: PlainName = "main"  # the name of the recipe's own task among the heads
    main_weight: float = Field(default=1.0, gt=0)
    tasks: dict[PlainName, ExtraTask]  # names become file names and URL paths
    sampling: Literal["proportional", "temperature", "uniform"] = "temperature"
    temperature: float = Field(default=2.0, ge=1)

    @field_validator("tasks")
    @classmethod
    def _some_tasks(cls, value: dict[str, ExtraTask]) -> dict[str, ExtraTask]:
        if not value:
            raise ValueError("give at least one task besides the recipe's own")
        return value


class _MultiTaskModel(torch.nn.Module):
    """The task models (sharing one encoder) behind one forward: ``task_id`` picks the head."""

    def __init__(self, models: dict[str, Any], weights: list[float]) -> None:
        super().__init__()
        self.names = list(models)
        self.heads = torch.nn.ModuleDict(models)
        self.weights = weights

    def forward(self, task_id: torch.Tensor, **batch: Any) -> Any:
        t = int(task_id.reshape(-1)[0])
        out = self.heads[self.names[t]](**batch)
        if out.loss is not None and self.weights[t] != 1.0:
            out.loss = out.loss * self.weights[t]
        return out


def sampling_probabilities(sizes: list[int], sampling: str, temperature: float) -> list[float]:
    """Task probabilities: n ** (1/T), normalised (T = 1 proportional, T = infinity uniform)."""
    power = {"proportional": 1.0, "uniform": 0.0}.get(sampling, 1.0 / temperature)
    raw = [n ** power for n in sizes]
    return [r / sum(raw) for r in raw]


def plan_epoch(sizes: list[int], lengths: list[list[int]], batch_size: int, probs: list[float], *,
               seed: int, epoch: int, group_by_length: bool) -> list[tuple[int, list[int]]]:
    """The epoch's batches as (task, local indices), a pure function of (seed, epoch)."""
    rng = random.Random(seed * 7_919 + epoch)
    n_batches = sum(math.ceil(n / batch_size) for n in sizes)
    choices = rng.choices(range(len(sizes)), weights=probs, k=n_batches)
    queues: list[list[list[int]]] = [[] for _ in sizes]
    refills = [0] * len(sizes)
    plan = []
    for t in choices:
        if not queues[t]:
            # A fresh shuffle of task t's data each time its batches run out.
            queues[t] = train_batches(lengths[t], batch_size, seed=seed + 104_729 * (t + 1),
                                      epoch=epoch * 1_000 + refills[t], group_by_length=group_by_length)
            refills[t] += 1
        plan.append((t, queues[t].pop(0)))
    return plan


@register(MultitaskConfig)
def multitask(bundle: ModelBundle, config: MultitaskConfig, ctx: RunContext) -> ModelBundle:
    """Train the main task and every extra task on one shared encoder; keep every head."""
    where = f"stages.{ctx.stage_index}"
    if not bundle.runtime_info.trainable:
        raise StageError(f"{where}: multitask training needs a PyTorch model")
    _check_settings(config, where)
    tasks = _load_tasks(bundle, config, ctx, where)
    models = _task_models(bundle, tasks, ctx.seed, where)
    mt = _MultiTaskModel(models, tasks.weights)
    pad = bundle.tokenizer.pad_token_id or 0
    data = _TrainData.build(tasks, bundle.tokenizer, config, ctx.seed, pad)
    dev = _DevSets.build(tasks, models, bundle.tokenizer, ctx.device)

    metric = "loss" if config.metric == "loss" else "mean_headline"
    log.info("%s: %s sampling, task probabilities %s", where, config.sampling,
             ", ".join(f"{n} {p:.3f}" for n, p in zip(tasks.names, data.probs)))
    summary = train(bundle, config, ctx, TrainJob(
        data=data.combined, model=mt, batch_fn=data.batch, plan=data.plan,
        evaluate=dev.evaluate if dev.sets else None, metric=metric, label="multitask"))

    bundle.heads = {name: Head(task=spec, model=models[name])
                    for name, spec in zip(tasks.names[1:], tasks.specs[1:])}
    bundle.main_task = config.main
    tasks_summary = dev.final_scores(pad, ctx.seed)
    summary.update({
        "tasks": tasks.names, "main_task": config.main,
        "train_examples_per_task": dict(zip(tasks.names, data.sizes)),
        "sampling": config.sampling, "temperature": config.temperature,
        "task_probabilities": {n: round(p, 4) for n, p in zip(tasks.names, data.probs)},
        "dev": tasks_summary,
    })
    ctx.stage_summary = summary
    return bundle


def _check_settings(config: MultitaskConfig, where: str) -> None:
    """The main task's name is usable and free; selection is on the mean headline or the loss."""
    check_name(config.main, f"{where}.main")
    if config.main in config.tasks:
        raise StageError(f"{where}.tasks.{config.main}: that name is the main task's ({where}.main)")
    if config.metric not in (None, "loss"):
        raise StageError(f"{where}.metric: multitask selects on the mean of each task's headline "
                         "metric, or on 'loss'; leave it out or write loss")


@dataclass
class _Tasks:
    """The stage's tasks in order: the main one (the recipe's task and data), then the extra ones
    in recipe order."""

    names: list[str]
    specs: list[TaskSpec]
    trains: list[Split]
    devs: list[Split | None]
    weights: list[float]


def _load_tasks(bundle: ModelBundle, config: MultitaskConfig, ctx: RunContext, where: str) -> _Tasks:
    """The main task from the run, each extra task from its own data; all need labelled training data."""
    tasks = _Tasks(names=[config.main], specs=[bundle.task], trains=[ctx.split("train")],
                   devs=[ctx.selection()], weights=[config.main_weight])
    for name, extra in config.tasks.items():
        check_name(name, f"{where}.tasks")
        columns, kind = extra.task.columns(), extra.task.split_kind
        train_split = load_split(extra.data.train, columns, name=f"{name}.train", kind=kind)
        dev_split = (load_split(extra.data.dev, columns, name=f"{name}.dev", kind=kind)
                     if extra.data.dev is not None else None)
        log.info("%s: task %s: %d train, %s dev examples", where, name, len(train_split),
                 len(dev_split) if dev_split is not None else "no")
        tasks.names.append(name)
        tasks.specs.append(build_task(extra.task, train_split))
        tasks.trains.append(train_split)
        tasks.devs.append(dev_split)
        tasks.weights.append(extra.weight)
    for name, split in zip(tasks.names, tasks.trains):
        if split.labels is None:
            raise StageError(f"{where}: task {name} needs labelled training data")
    return tasks


def _task_models(bundle: ModelBundle, tasks: _Tasks, seed: int, where: str) -> dict[str, Any]:
    """One head per task; the main head is the bundle's model, the others share its encoder."""
    torch.manual_seed(seed)  # the new heads' initial weights
    models: dict[str, Any] = {tasks.names[0]: bundle.model}
    for name, spec in zip(tasks.names[1:], tasks.specs[1:]):
        existing = bundle.heads.get(name)
        if existing is not None and existing.task.labels == spec.labels and existing.task.kind == spec.kind:
            from lepton.runtimes.heads import bind

            models[name] = bind(existing.model, bundle.model)  # keep training an earlier head
        else:
            models[name] = make_head(bundle.model, spec, f"{where}.tasks.{name}")
    return models


@dataclass
class _TrainData:
    """All tasks' examples in one index space (task t holds offsets[t] .. offsets[t+1]-1), with the
    epoch plan and the batches (each of one task, tagged with its ``task_id``) the trainer asks for."""

    combined: Encoded
    offsets: list[int]
    sizes: list[int]
    lengths: list[list[int]]
    probs: list[float]
    batch_size: int
    group_by_length: bool
    seed: int
    pad: int

    @classmethod
    def build(cls, tasks: _Tasks, tokenizer: Any, config: MultitaskConfig, seed: int,
              pad: int) -> _TrainData:
        encoded = [encode(split, spec, tokenizer) for split, spec in zip(tasks.trains, tasks.specs)]
        offsets = [0]
        for enc in encoded:
            offsets.append(offsets[-1] + len(enc))
        combined = Encoded.concat(encoded)
        sizes = [len(e) for e in encoded]
        probs = sampling_probabilities(sizes, config.sampling, config.temperature)
        return cls(combined=combined, offsets=offsets, sizes=sizes, lengths=[e.lengths for e in encoded],
                   probs=probs, batch_size=config.batch_size, group_by_length=config.group_by_length,
                   seed=seed, pad=pad)

    def plan(self, epoch: int) -> list[list[int]]:
        return [[self.offsets[t] + i for i in local]
                for t, local in plan_epoch(self.sizes, self.lengths, self.batch_size, self.probs,
                                           seed=self.seed, epoch=epoch,
                                           group_by_length=self.group_by_length)]

    def batch(self, idx: list[int]) -> dict[str, torch.Tensor]:
        t = next(k for k in range(len(self.sizes)) if self.offsets[k] <= idx[0] < self.offsets[k + 1])
        batch = collate(self.combined, idx, self.pad)
        batch["task_id"] = torch.tensor([t])
        return batch


@dataclass
class _DevSets:
    """Each task's labelled dev set (name, task, encoded inputs, gold labels), scored by its own
    head: the mean headline metric for model selection, bootstrap CIs at the end."""

    sets: list[tuple[str, TaskSpec, Encoded, Any]]
    models: dict[str, Any]
    tokenizer: Any
    device: Any

    @classmethod
    def build(cls, tasks: _Tasks, models: dict[str, Any], tokenizer: Any, device: Any) -> _DevSets:
        sets = []
        for name, spec, dev in zip(tasks.names, tasks.specs, tasks.devs):
            if dev is not None and dev.labels is not None:
                sets.append((name, spec, encode(dev, spec, tokenizer), label_ids(dev, spec)))
        return cls(sets=sets, models=models, tokenizer=tokenizer, device=device)

    def surrogate(self, name: str, spec: TaskSpec) -> ModelBundle:
        return ModelBundle(model=self.models[name], tokenizer=self.tokenizer, task=spec)

    def evaluate(self) -> dict[str, float]:
        scores: dict[str, float] = {}
        headline, losses = [], []
        for name, spec, enc, gold in self.sets:
            m = evaluate_dev(self.models[name], enc, self.surrogate(name, spec), gold, self.device)
            for key, value in m.items():
                scores[f"{name}/{key}"] = value
            headline.append(m[kind_of(spec).headline])
            losses.append(m["loss"])
        scores["mean_headline"] = sum(headline) / len(headline)
        scores["loss"] = sum(losses) / len(losses)
        return scores

    def final_scores(self, pad: int, seed: int) -> dict[str, Any]:
        """Final scores of every task on its own dev set, with bootstrap CIs."""
        from lepton.evaluation.harness import predict_logits, quality_of
        from lepton.runtimes import for_bundle

        tasks_summary: dict[str, Any] = {}
        for name, spec, enc, gold in self.sets:
            sub = self.surrogate(name, spec)
            sub.model.eval()
            pred_logits = predict_logits(for_bundle(sub), enc, pad)
            quality = quality_of(spec, gold, kind_of(spec).predictions(pred_logits, enc, spec),
                                 resamples=1000, seed=seed)
            tasks_summary[name] = {
                "kind": spec.kind, "labels": spec.labels, "dev_examples": len(enc),
                **{k: {"value": round(m.value, 4), "ci95": [round(m.ci95_low, 4), round(m.ci95_high, 4)]}
                   for k, m in quality.metrics.items()},
            }
        return tasks_summary
