"""The training loop every training stage shares (finetune, distill, pretrain); not a stage itself.

``train`` owns what is the same for all of them: length-grouped batches, AdamW with linear
warm-up/decay, gradient accumulation and clipping, dev evaluation with keep-best and early
stopping, atomic checkpoints with exact resume, the bundle's train hooks and the progress display.
A stage says what differs: the model to train, the examples, how a batch is built, the loss, extra
trainable modules, and how dev is scored.

Resume is exact because everything random is a function of saved state: the batch order of an
epoch comes from (seed, epoch), dropout (and MLM masking) from the saved torch RNG state, and
checkpoints are taken only at optimizer-step boundaries (no half-accumulated gradients to lose).

Many processes (``lepton.core.distributed``): every rank walks the same plan and takes its slice of each
batch; DistributedDataParallel averages the gradients, so every rank takes the same optimizer
step. Rank 0 alone evaluates, decides (keep-best, early stopping; broadcast to the others), shows
progress and writes checkpoints; every rank loads them on resume. At the end rank 0's chosen
weights are broadcast, so all ranks leave with the same model.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from lepton.core import atomic, distributed
from lepton.core.errors import StageError
from lepton.core.progress import StepProgress
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import StageConfig
from lepton.tasks import Encoded, collate, kind_of, sorted_batches, train_batches

log = logging.getLogger(__name__)

# Test hook: SIGKILL this process right after this optimizer step (see tests/test_finetune.py).
_KILL_AT_STEP = int(os.environ.get("LEPTON_TEST_KILL_AT_STEP", "0") or 0)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch, list[int]], torch.Tensor]  # (model, batch, example indices)


class TrainSettings(StageConfig):
    """Settings of every stage that trains; finetune, distill and pretrain add their own."""

    trains: ClassVar[bool] = True

    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)  # stop after this many optimizer steps
    lr: float = Field(default=5e-5, gt=0, lt=1)
    batch_size: int = Field(default=32, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.06, ge=0)  # < 1: share of all steps; >= 1: a step count
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    group_by_length: bool = True
    eval_every: int | None = Field(default=None, ge=1)  # optimizer steps; None: after each epoch
    metric: str | None = None  # selection metric; default: the task's headline metric; "loss" works too
    keep_best: bool = True
    early_stopping: int | None = Field(default=None, ge=1)  # evaluations without improvement
    checkpoint_every: int = Field(default=200, ge=1)  # optimizer steps between resume points
    # Generative models selecting by metric bleu or chrf: the dev score is computed on at most
    # this many dev pairs, decoded greedily (None: all of them).
    dev_items: int | None = Field(default=None, ge=1)

    smoke_caps: ClassVar[dict[str, Any]] = {"epochs": 1, "max_steps": 20}


@dataclass
class TrainState:
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    step: int = 0  # optimizer steps taken
    items: int = 0
    train_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    evals: list[dict[str, Any]] = field(default_factory=list)


def plan_steps(n_examples: int, config: TrainSettings) -> int:
    """How many optimizer steps ``train`` will take (AdaLoRA's budget schedule needs it up front)."""
    n_batches = math.ceil(n_examples / config.batch_size)
    total = math.ceil(n_batches / config.grad_accum) * config.epochs
    return min(total, config.max_steps) if config.max_steps is not None else total


def _optimizer(modules: Sequence[torch.nn.Module], config: TrainSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            if not param.requires_grad:
                continue
            # Biases and LayerNorm weights are not decayed (standard for BERT-style fine-tuning).
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one call; the default on CPU loops over ~100
    # tensors in Python each step (a measurable share of a small model's step time).
    try:
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except (RuntimeError, ValueError):  # dtypes or devices the fused kernel does not take
        return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


def evaluate_dev(model: torch.nn.Module, enc: Encoded, bundle: ModelBundle, dev_labels: Any,
                 device: str, batch_size: int = 64) -> dict[str, float]:
    """Loss and the task's metrics on dev (no bootstrap: this is for model selection)."""

    model.eval()
    logits: list[np.ndarray | None] = [None] * len(enc)
    loss_sum, loss_n = 0.0, 0
    pad = bundle.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for idx in sorted_batches(enc.lengths, batch_size):
            batch = {k: v.to(device) for k, v in collate(enc, idx, pad).items()}
            out = model(**batch)
            loss_sum += float(out.loss) * len(idx)
            loss_n += len(idx)
            arr = out.logits.float().cpu().numpy()
            for row, i in enumerate(idx):
                logits[i] = arr[row]
    model.train()
    metrics = kind_of(bundle.task).quick_metrics(logits, enc, bundle.task, dev_labels)
    metrics["loss"] = loss_sum / max(loss_n, 1)
    return metrics


def task_metric(config: TrainSettings, bundle: ModelBundle, ctx: RunContext) -> str:
    """The selection metric for a task model: the recipe's, checked, or the task's headline."""
    kind = kind_of(bundle.task)
    metric = config.metric or kind.headline
    if metric not in kind.metric_names():
        raise StageError(f"stages.{ctx.stage_index}.metric: unknown metric {metric!r} for {kind.name} "
                         f"(known: {', '.join(kind.metric_names())})")
    return metric


def dev_evaluator(model: torch.nn.Module, bundle: ModelBundle,
                  ctx: RunContext) -> Callable[[], dict[str, float]] | None:
    """Scores ``model`` on labelled data.dev with the task's metrics; None without such data."""
    from lepton.tasks import encode, label_ids

    dev = ctx.selection()
    if dev is None or dev.labels is None:
        return None
    enc = encode(dev, bundle.task, bundle.tokenizer)
    gold = label_ids(dev, bundle.task)
    return lambda: evaluate_dev(model, enc, bundle, gold, ctx.device)


def _save_checkpoint(stage_dir: Path, model: torch.nn.Module, extra: torch.nn.Module | None,
                     optimizer: Any, scheduler: Any, stateful: dict[str, Any], state: TrainState,
                     best: dict[str, torch.Tensor] | None, rng_ranks: list[Any] | None = None) -> None:
    """Write a resume point atomically and durably: a temp folder (every file fsynced) renamed
    into place, then a pointer file. A full disk or read-only folder is one StorageError line
    and the previous checkpoint stays the resume point.

    ``rng_ranks``: every rank's (torch, cuda) RNG states when several processes train.
    """
    from safetensors.torch import save_file, save_model

    name = f"ckpt-{state.step:07d}"

    def fill(tmp: Path) -> None:
        save_model(model, str(tmp / "model.safetensors"))
        if extra is not None:
            save_model(extra, str(tmp / "extra.safetensors"))
        if best is not None:
            save_file(best, str(tmp / "best.safetensors"))
        # Serialized in memory and written by our own writer, so a full disk is an OSError
        # (torch.save into a path reports it as a bare RuntimeError).
        buffer = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng_torch": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "rng_ranks": rng_ranks or [],
                    "stateful": {k: obj.state_dict() for k, obj in stateful.items()}}, buffer)
        (tmp / "trainer.pt").write_bytes(buffer.getvalue())
        (tmp / "state.json").write_text(json.dumps(asdict(state)))

    atomic.write_folder(stage_dir / name, fill)
    atomic.write_text(stage_dir / "latest", name)
    for old in stage_dir.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


_CHECKPOINT_NAME = re.compile(r"ckpt-\d{7}")


def _load_checkpoint(stage_dir: Path, model: torch.nn.Module, extra: torch.nn.Module | None,
                     optimizer: Any, scheduler: Any, stateful: dict[str, Any],
                     ) -> tuple[TrainState, dict[str, torch.Tensor] | None] | None:
    """The latest checkpoint, loaded into ``model`` and the optimizer; None when there is none.
    A damaged one (truncated, wrong files, not a checkpoint) is one StageError line."""
    pointer = stage_dir / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise StageError(f"{pointer}: checkpoint pointer is unreadable ({atomic.describe(err)}); "
                         "use --force to start over") from None
    if not _CHECKPOINT_NAME.fullmatch(name):
        raise StageError(f"{pointer}: checkpoint pointer is damaged (names {name[:40]!r}); "
                         "use --force to start over")
    ckpt = stage_dir / name
    if not (ckpt / "state.json").is_file():
        raise StageError(f"{ckpt}: checkpoint is incomplete; use --force to start over")
    try:
        return _read_checkpoint(ckpt, model, extra, optimizer, scheduler, stateful)
    except StageError:
        raise
    except Exception as err:  # safetensors, torch.load, json: any of them says "damaged" here
        cause = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise StageError(f"{ckpt}: checkpoint is damaged ({type(err).__name__}: {cause}); "
                         "use --force to start over") from None


def _read_checkpoint(ckpt: Path, model: torch.nn.Module, extra: torch.nn.Module | None,
                     optimizer: Any, scheduler: Any, stateful: dict[str, Any],
                     ) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    from safetensors.torch import load_file, load_model

    state = TrainState(**json.loads((ckpt / "state.json").read_text(encoding="utf-8")))
    load_model(model, str(ckpt / "model.safetensors"))
    if extra is not None:
        load_model(extra, str(ckpt / "extra.safetensors"))
    saved = torch.load(ckpt / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    for key, obj in stateful.items():
        obj.load_state_dict(saved.get("stateful", {}).get(key, {}))
    torch.set_rng_state(saved["rng_torch"])
    if saved["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    ranks = saved.get("rng_ranks") or []
    if len(ranks) == distributed.world_size() > 1:  # each rank continues its own random stream
        cpu, cuda = ranks[distributed.rank()]
        torch.set_rng_state(cpu)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)
    best = load_file(str(ckpt / "best.safetensors")) if (ckpt / "best.safetensors").is_file() else None
    return state, best


def _better(higher_is_better: bool, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def _default_loss(model: torch.nn.Module, batch: Batch, indices: list[int]) -> torch.Tensor:
    return model(**batch).loss


@dataclass
class TrainJob:
    """What a training stage tells the shared loop; everything else comes from its ``TrainSettings``.

    - ``data``: the training examples; ``model``: what to train (default ``bundle.model``).
    - ``batch_fn(indices)``: the model inputs of those examples (default: padded ``data``).
    - ``loss_fn(model, batch, indices)``: the loss to minimise (default: the model's own loss).
    - ``extra``: more trainable modules (e.g. distillation's projections); optimised and
      checkpointed with the model, never part of it.
    - ``stateful``: objects with ``state_dict``/``load_state_dict`` saved in every checkpoint
      (e.g. AdaLoRA's rank allocator), so a resumed run continues exactly.
    - ``evaluate()``: dev scores, a dict holding ``metric`` and ``"loss"``; None: no selection.
    - ``on_step(step)``: after each optimizer step, before gradients are cleared.
    - ``on_trained()``: after the best weights are restored, before the train hooks finish
      (e.g. merging LoRA adapters, so hooks see the final weights).
    - ``plan(epoch)``: the batches (lists of example indices) of that epoch, a pure function of
      the epoch (default: length-grouped batches seeded by (seed, epoch)); multi-task training
      uses it to keep each batch to one task.
    - ``label``: the stage's name in logs, progress and messages.

    With several processes each rank trains on its slice of every batch
    (``lepton.core.distributed.shard``): ``batch_fn`` and ``loss_fn`` get that slice's indices, and
    ``loss_fn`` gets the DDP-wrapped model to call (read attributes from the model itself).
    """

    data: Encoded
    model: torch.nn.Module | None = None
    batch_fn: Callable[[list[int]], Batch] | None = None
    loss_fn: LossFn | None = None
    extra: Sequence[torch.nn.Module] = ()
    stateful: dict[str, Any] = field(default_factory=dict)
    evaluate: Callable[[], dict[str, float]] | None = None
    metric: str = "loss"
    on_step: Callable[[int], None] | None = None
    on_trained: Callable[[], None] | None = None
    plan: Callable[[int], list[list[int]]] | None = None
    label: str = "finetune"


def train(bundle: ModelBundle, config: TrainSettings, ctx: RunContext, job: TrainJob) -> dict[str, Any]:
    """Train ``job.model`` (default ``bundle.model``) on ``job.data``; returns a summary."""
    if len(job.data) == 0:
        raise StageError(f"{job.label}: no training examples")
    loop = _Loop(bundle, config, ctx, job)
    loop.start()
    loop.run()
    return loop.finish()


def _epoch_plan(job: TrainJob, config: TrainSettings, seed: int) -> tuple[Callable[[int], list[list[int]]], int]:
    """The batches of each epoch and the optimizer steps they make in all."""
    if job.plan is not None:
        per_epoch = math.ceil(len(job.plan(0)) / config.grad_accum)
        total = per_epoch * config.epochs
        return job.plan, min(total, config.max_steps) if config.max_steps is not None else total
    lengths = job.data.lengths

    def plan(epoch: int) -> list[list[int]]:
        return train_batches(lengths, config.batch_size, seed=seed, epoch=epoch,
                             group_by_length=config.group_by_length)

    return plan, plan_steps(len(job.data), config)


class _Loop:
    """One run of the shared training loop: set up, resume, step, evaluate, checkpoint, finish."""

    def __init__(self, bundle: ModelBundle, config: TrainSettings, ctx: RunContext, job: TrainJob) -> None:
        from transformers import get_linear_schedule_with_warmup

        self.bundle, self.config, self.ctx, self.job = bundle, config, ctx, job
        self.model = bundle.model if job.model is None else job.model
        self.device, self.label = ctx.device, job.label
        self.loss_fn = job.loss_fn or _default_loss
        pad = bundle.tokenizer.pad_token_id or 0
        self.batch_fn = job.batch_fn or (lambda idx: collate(job.data, idx, pad))
        self.plan, self.total_steps = _epoch_plan(job, config, ctx.seed)
        warmup = int(config.warmup * self.total_steps) if config.warmup < 1 else int(config.warmup)
        self.main, self.world = distributed.is_main(), distributed.world_size()
        # Rank 0 draws what one process would; the others their own dropout (and masking) streams.
        torch.manual_seed(ctx.seed + distributed.rank())
        self.extras = torch.nn.ModuleList(job.extra) if job.extra else None
        self.model.to(self.device)
        self.model.train()
        if self.extras is not None:
            self.extras.to(self.device).train()
        self.trained = [self.model] + ([self.extras] if self.extras is not None else [])
        self.optimizer = _optimizer(self.trained, config)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.total_steps)
        self.stage_dir = ctx.stage_dir or (ctx.work_dir / f"stage-{ctx.stage_index}-{job.label}")
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        self.state, self.best = TrainState(), None
        self.items_window, self.time_window = 0, time.perf_counter()
        self.done = False

    def start(self) -> None:
        """Resume from the latest checkpoint (every rank loads rank 0's), or clear old ones."""
        if self.ctx.resume:
            loaded = _load_checkpoint(self.stage_dir, self.model, self.extras, self.optimizer,
                                      self.scheduler, self.job.stateful)
            if loaded is not None:
                self.state, self.best = loaded
                log.info("%s: resuming at step %d (epoch %d, batch %d)", self.label, self.state.step,
                         self.state.epoch + 1, self.state.batch_in_epoch)
        elif self.main:
            for old in self.stage_dir.glob("ckpt-*"):
                shutil.rmtree(old, ignore_errors=True)
            (self.stage_dir / "latest").unlink(missing_ok=True)
        self.params = [p for m in self.trained for p in m.parameters()]
        # Its constructor broadcasts rank 0's weights: every rank starts from the same model.
        self.ddp = distributed.wrap(self.model, self.device)
        if self.extras is not None:
            distributed.broadcast_module(self.extras)

    def run(self) -> None:
        state, config = self.state, self.config
        self.done = state.step >= self.total_steps or state.stopped_early
        with StepProgress(self.label, self.total_steps, completed=state.step,
                          enabled=self.ctx.progress and self.main) as bar:
            while not self.done and state.epoch < config.epochs:
                batches = self.plan(state.epoch)
                self._epoch(batches, bar)
                if not self.done or state.batch_in_epoch == len(batches):
                    if not config.eval_every:
                        self._evaluate()
                        if config.early_stopping and state.bad_evals >= config.early_stopping:
                            state.stopped_early = self.done = True
                    state.epoch += 1
                    state.batch_in_epoch = 0
                if not self.done:
                    self._checkpoint()
        if self.job.evaluate is not None and (not state.evals or state.evals[-1]["step"] != state.step):
            self._evaluate()  # the final weights are a candidate too

    def _epoch(self, batches: list[list[int]], bar: StepProgress) -> None:
        """The rest of this epoch's batches (from ``batch_in_epoch``), until done."""
        state = self.state
        micro = 0
        self.optimizer.zero_grad(set_to_none=True)
        tick = time.perf_counter()
        for b in range(state.batch_in_epoch, len(batches)):
            micro += 1
            sync = micro % self.config.grad_accum == 0 or b == len(batches) - 1
            loss = self._forward_backward(batches[b], sync)
            state.items += len(batches[b])
            self.items_window += len(batches[b])
            if not sync:
                continue
            self._optimizer_step()
            state.batch_in_epoch = b + 1
            now = time.perf_counter()
            state.train_seconds += now - tick
            rate = self.items_window / max(now - self.time_window, 1e-9)
            bar.advance(1, loss=float(loss.detach()), items_s=rate, epoch=state.epoch + 1)
            if now - self.time_window > 10:
                self.items_window, self.time_window = 0, now
            self._after_step()
            tick = time.perf_counter()
            if self.done:
                break

    def _forward_backward(self, indices: list[int], sync: bool) -> torch.Tensor:
        idx, weight = distributed.shard(indices)
        # Accumulating micro-batches skip DDP's all-reduce; the step's last one does it.
        quiet = self.ddp.no_sync() if self.ddp is not self.model and not sync else contextlib.nullcontext()
        with quiet:
            batch = {k: v.to(self.device) for k, v in self.batch_fn(idx).items()}
            loss = self.loss_fn(self.ddp, batch, idx)
            if not torch.isfinite(loss):
                raise StageError(f"{self.label}: loss became {float(loss)} at step {self.state.step}; "
                                 f"lower stages.{self.ctx.stage_index}.lr")
            (loss * weight / self.config.grad_accum).backward()
        return loss

    def _optimizer_step(self) -> None:
        if self.extras is not None:
            distributed.average_gradients(self.extras.parameters())
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        if self.job.on_step is not None:
            self.job.on_step(self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        for hook in self.bundle.train_hooks:  # e.g. gradual pruning re-applies its masks
            hook.after_step(self.model, self.state.step, self.total_steps)

    def _after_step(self) -> None:
        """Evaluation, early stopping and checkpoints that fall on this optimizer step."""
        state, config = self.state, self.config
        if config.eval_every and state.step % config.eval_every == 0:
            self._evaluate()
            if config.early_stopping and state.bad_evals >= config.early_stopping:
                state.stopped_early = True
        if state.step >= self.total_steps or state.stopped_early:
            self.done = True
        if state.step % config.checkpoint_every == 0 and not self.done:
            self._checkpoint()
        if _KILL_AT_STEP and state.step == _KILL_AT_STEP:
            # Fault injection for the resume tests: die as abruptly as a killed job does.
            os.kill(os.getpid(), signal.SIGKILL)

    def _checkpoint(self) -> None:
        rng = None
        if self.world > 1:  # a collective: every rank's random streams, saved by rank 0
            cuda = torch.cuda.get_rng_state() if self.device.startswith("cuda") else None
            rng = distributed.gather_object((torch.get_rng_state(), cuda))
        if self.main:
            _save_checkpoint(self.stage_dir, self.model, self.extras, self.optimizer, self.scheduler,
                             self.job.stateful, self.state, self.best, rng_ranks=rng)

    def _evaluate(self) -> None:
        """Score dev on rank 0, keep the best weights, and share the decision with every rank."""
        state, metric = self.state, self.job.metric
        if self.job.evaluate is None:
            return
        if self.main:
            started = time.perf_counter()
            values = {k: round(float(v), 6) for k, v in self.job.evaluate().items()}
            self.model.train()
            state.evals.append({"step": state.step, "epoch": state.epoch + 1, **values,
                                "seconds": round(time.perf_counter() - started, 2),
                                "train_seconds": round(state.train_seconds, 2)})  # the curve's time axis
            if _better(kind_of(self.bundle.task).higher_is_better(metric), values[metric], state.best_metric):
                state.best_metric, state.best_step, state.bad_evals = values[metric], state.step, 0
                if self.config.keep_best:
                    self.best = {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()}
            else:
                state.bad_evals += 1
            log.info("%s: step %d dev %s %.4f (loss %.4f)%s", self.label, state.step, metric,
                     values[metric], values["loss"], " *best*" if state.best_step == state.step else "")
        if self.world > 1:  # rank 0 decides; early stopping must end every rank at the same step
            (state.best_metric, state.best_step, state.bad_evals, state.evals) = \
                distributed.broadcast_object((state.best_metric, state.best_step, state.bad_evals,
                                              state.evals))

    def finish(self) -> dict[str, Any]:
        """The chosen weights on every rank, the train hooks finished, and the summary."""
        state, bundle = self.state, self.bundle
        if self.config.keep_best and self.best is not None:
            self.model.load_state_dict(self.best)
        distributed.broadcast_module(self.model)  # rank 0's choice on every rank
        self.model.eval()
        if self.job.on_trained is not None:
            self.job.on_trained()
        hook_summaries = [hook.finish(bundle.model) for hook in bundle.train_hooks]
        bundle.train_hooks = []
        bundle.model.eval()
        summary: dict[str, Any] = {
            "steps": state.step, "epochs_run": state.epoch, "items": state.items,
            "train_seconds": round(state.train_seconds, 2),
            "items_per_s": round(state.items / state.train_seconds, 2) if state.train_seconds else None,
            "selection_metric": self.job.metric, "best_metric": state.best_metric,
            "best_step": state.best_step, "stopped_early": state.stopped_early, "evals": state.evals,
            "train_examples": len(self.job.data), "world_size": self.world,
        }
        if hook_summaries:
            summary["train_hooks"] = hook_summaries
        return summary
