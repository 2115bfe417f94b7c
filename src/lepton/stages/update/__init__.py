"""``update``: continue training a saved Lepton model on new labelled data (``lepton update``),
with a method that limits what it forgets of what it learned before.

``method`` picks how:

- ``naive``: plain fine-tuning on the new data (every weight trains).
- ``replay``: rehearsal; a stored sample of the *original* training data is mixed into every
  epoch beside the new data. The sample is the parent's ``data/rehearsal.jsonl`` (saved with
  every model, ``output.rehearsal_items``), or ``replay_data`` (any data file in the task's
  columns); ``replay_items`` caps it.
- ``l2sp``: L2-SP, a penalty ``l2sp / 2 * sum((w - w_parent)^2)`` pulling every weight towards
  the parent's (new classifier rows have no parent and are left free); ``fisher: true`` weights
  each weight's term by its diagonal Fisher information under the parent (EWC), estimated on the
  rehearsal sample when there is one, else on the new inputs with the parent's own predictions.
- ``lora``: peft LoRA adapters beside frozen weights, the classifier's old rows kept exactly as
  the parent's (only new label rows train); the adapter is saved in
  ``<output>/adapter/<stage name>`` and **merged** into the weights at the end, so the artifact
  has the parent's shape and later stages (export, quantize) run unchanged.

New labels: a class the parent never saw already has its own new classifier row when the stage
starts (``lepton.tasks.new_labels``, when the run loads the parent); the parent's rows are kept.
The parent is the recipe's model when it is a saved Lepton model; the stage also runs on any
other model (then nothing is "old": no rehearsal sample, every row trains).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from lepton.core import outdir
from lepton.core.atomic import sha256
from lepton.core.errors import StageError
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.runtimes.saved import is_saved_model, store
from lepton.stages.adapters import LoraSettings, adapter_config, save_adapter, wrap_with_adapters
from lepton.stages.base import register
from lepton.stages.training import TrainJob, TrainSettings, dev_evaluator, plan_steps, task_metric, train
from lepton.stages.update.penalty import Anchor, fisher_weights
from lepton.tasks import Encoded, encode

log = logging.getLogger(__name__)

REHEARSAL = "data/rehearsal.jsonl"  # the sample a saved model carries (lepton.pipeline.lineage)
METHODS = ("naive", "replay", "l2sp", "lora")


class UpdateConfig(TrainSettings):
    trains_head = True
    is_baseline = True
    contract_example: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 8}

    kind: Literal["update"] = "update"
    method: Literal["naive", "replay", "l2sp", "lora"] = "naive"
    replay_data: str | None = None  # replay: a data file in the task's columns; default: the parent's sample
    replay_items: int | None = Field(default=None, ge=1)  # replay: at most this many (seeded sample)
    l2sp: float = Field(default=0.01, gt=0)  # l2sp: the penalty's strength
    fisher: bool = False  # l2sp: weight each term by the parent's Fisher information (EWC)
    fisher_items: int = Field(default=256, ge=8)  # l2sp with fisher: examples it is estimated on
    lora: LoraSettings | None = None  # method lora; defaults filled in

    @model_validator(mode="before")
    @classmethod
    def _method_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        method = data.get("method", "naive")
        misplaced = {"replay_data": "replay", "replay_items": "replay", "fisher": "l2sp", "fisher_items": "l2sp",
                     "lora": "lora"}
        for key, owner in misplaced.items():
            if data.get(key) not in (None, False) and method != owner:
                raise ValueError(f"{key} applies to method: {owner} (this stage's method is {method})")
        if method == "lora" and data.get("lora") is None:
            data = {**data, "lora": {}}
        return data


def parent_folder(bundle: ModelBundle) -> Path | None:
    """The saved Lepton model the run started from (the recipe's model), if it is one."""
    folder = Path(bundle.source).expanduser() if bundle.source else None
    return folder if folder is not None and is_saved_model(folder) else None


def _old_rows(parent: Path | None, bundle: ModelBundle) -> int:
    """How many classifier rows the parent had (0: no parent, every row is new)."""
    if parent is None:
        return 0
    labels = (store().read_manifest(parent, verify=False).get("task") or {}).get("labels") or []
    return len(labels) if bundle.task.labels[:len(labels)] == labels else 0


@register(UpdateConfig)
def update(bundle: ModelBundle, config: UpdateConfig, ctx: RunContext) -> ModelBundle:
    """Train the parent on data.train by ``config.method``, selecting on data.dev."""
    metric = task_metric(config, bundle, ctx)
    split = ctx.split("train")
    if split.labels is None:
        raise StageError(f"stages.{ctx.stage_index} (update) needs labelled data.train "
                         f"({split.sources[0].rsplit(':', 1)[0] if split.sources else 'data.train'} has no labels)")
    parent = parent_folder(bundle)
    old_rows = _old_rows(parent, bundle)
    data = encode(split, bundle.task, bundle.tokenizer)
    summary: dict[str, Any] = {"method": config.method, "parent": str(parent) if parent else None,
                               "old_rows": old_rows, "new_labels": bundle.task.labels[old_rows:] if old_rows else [],
                               "new_examples": len(data)}
    replay = _replay(config, parent, bundle, ctx) if config.method in ("replay", "l2sp") else None
    if config.method == "replay":
        assert replay is not None
        data = Encoded.concat([data, replay[0]])
        summary["replay"] = replay[1]
    if config.method == "lora":
        summary.update(_train_lora(bundle, config, ctx, data, metric, old_rows))
    else:
        summary.update(train(bundle, config, ctx, _job(bundle, config, ctx, data, metric, replay)))
    summary["skipped_rows"] = len(split.skipped)
    ctx.stage_summary = summary
    return bundle


def _job(bundle: ModelBundle, config: UpdateConfig, ctx: RunContext, data: Encoded, metric: str,
         replay: tuple[Encoded, dict[str, Any]] | None) -> TrainJob:
    """The shared loop's job for naive, replay and l2sp (the penalty as an extra loss term)."""
    job = TrainJob(data=data, metric=metric, evaluate=dev_evaluator(bundle.model, bundle, ctx), label="update")
    if config.method != "l2sp":
        return job
    weights = None
    if config.fisher:
        sample = replay[0] if replay is not None and len(replay[0]) else data
        weights = fisher_weights(bundle.model, sample, bundle, ctx.device, config.fisher_items, ctx.seed)
    anchor = Anchor(bundle.model, config.l2sp, _old_rows(parent_folder(bundle), bundle), weights)

    def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], indices: list[int]) -> torch.Tensor:
        return model(**batch).loss + anchor.penalty(bundle.model)

    job.loss_fn = loss
    return job


def _replay(config: UpdateConfig, parent: Path | None, bundle: ModelBundle,
            ctx: RunContext) -> tuple[Encoded, dict[str, Any]] | None:
    """The rehearsal sample encoded for this task, and its record (path, sha256, items). Method
    replay without one is refused; l2sp uses it (when there is one) for the Fisher estimate."""
    where = f"stages.{ctx.stage_index}"
    if config.replay_data is not None:
        cfg = DataSplitConfig(path=config.replay_data, limit=config.replay_items, seed=ctx.seed)
        columns = ctx.columns
    else:
        path = parent / REHEARSAL if parent is not None else None
        if path is None or not path.is_file():
            if config.method != "replay":
                return None
            what = f"the parent {parent} has no {REHEARSAL}" if parent is not None else \
                "the recipe's model is not a saved Lepton model with a rehearsal sample"
            raise StageError(f"{where}.replay_data: method replay needs the original training data's sample, "
                             f"but {what} (it was saved with output.rehearsal_items: 0, or before Lepton kept "
                             "one); give one with --replay-data FILE (replay_data: in a recipe), or choose "
                             "another method")
        cfg = DataSplitConfig(path=str(path), format="jsonl", limit=config.replay_items, seed=ctx.seed)
        columns = Columns(text="text", text_pair="text_pair" if bundle.task.pair else None, label="label")
    replay = load_split(cfg, columns, name="replay", kind=bundle.task.split_kind)
    if replay.labels is None:
        raise StageError(f"{where}.replay_data: {cfg.path} has no labels")
    enc = encode(replay, bundle.task, bundle.tokenizer)
    file = Path(cfg.path).expanduser()
    log.info("update: replaying %d examples of the original training data from %s", len(enc), cfg.path)
    return enc, {"path": cfg.path, "sha256": sha256(file) if file.is_file() else None, "items": len(enc)}


def _train_lora(bundle: ModelBundle, config: UpdateConfig, ctx: RunContext, data: Encoded, metric: str,
                old_rows: int) -> dict[str, Any]:
    """LoRA adapters on frozen weights; the classifier's old rows held at the parent's values
    after every step (only new label rows move); merged at the end."""
    assert config.lora is not None  # filled in by UpdateConfig
    where = f"stages.{ctx.stage_index}.lora"
    peft_config = adapter_config("lora", config.lora, bundle.model, plan_steps(len(data), config), where)
    kept = _head_rows(bundle.model, bundle.task.num_labels, old_rows)
    torch.manual_seed(ctx.seed)  # the adapters' initial weights
    peft_model = wrap_with_adapters(bundle.model, peft_config, where)
    trainable, total = peft_model.get_nb_trainable_parameters()
    adapter_dir = outdir.inside(ctx.out_dir, "adapter", ctx.stage_name or f"{ctx.stage_index}-update")

    def hold(step: int) -> None:
        _restore_rows(peft_model, kept)

    def merge() -> None:
        _restore_rows(peft_model, kept)
        save_adapter(peft_model, adapter_dir)
        bundle.model = peft_model.merge_and_unload()

    summary = train(bundle, config, ctx, TrainJob(
        data=data, model=peft_model, metric=metric, evaluate=dev_evaluator(peft_model, bundle, ctx),
        on_step=hold, on_trained=merge, label="update"))
    summary.update({"trainable_params": trainable, "all_params": total,
                    "trainable_share": round(trainable / total, 6), "adapter_dir": str(adapter_dir),
                    "merged": True, "old_rows_frozen": old_rows})
    return summary


Rows = tuple[int, torch.Tensor, torch.Tensor | None]  # (row count, old rows' weight, bias)


def _head_rows(model: torch.nn.Module, rows: int, old_rows: int) -> Rows | None:
    """The classifier's first ``old_rows`` rows (weight, bias) as they are now; None when none."""
    from lepton.tasks.new_labels import output_layer

    if old_rows == 0:
        return None
    _, _, layer = output_layer(model, rows)
    bias = layer.bias.detach().clone()[:old_rows] if layer.bias is not None else None
    return rows, layer.weight.detach().clone()[:old_rows], bias


def _restore_rows(model: torch.nn.Module, kept: Rows | None) -> None:
    """Put the kept rows back into every copy of the classifier (peft keeps a trainable copy)."""
    if kept is None:
        return
    rows, weight, bias = kept
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == rows \
                    and module.in_features == weight.shape[1]:
                module.weight[:len(weight)] = weight.to(module.weight.device)
                if bias is not None and module.bias is not None:
                    module.bias[:len(bias)] = bias.to(module.bias.device)
