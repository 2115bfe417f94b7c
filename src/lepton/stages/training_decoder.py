"""Training a generative model with Lepton's one training loop (``stages.training.train``):
fine-tuning on prompt/target pairs (all weights, or LoRA adapters merged at the end) and
continued language-model pretraining on text.

The loop brings length-grouped batches, AdamW with warm-up, keep-best on dev, checkpoints with
exact resume after a kill and the progress display; this module supplies what differs for
generation: the examples (``GenEncoded``), their batches (target-only labels) and the dev score
(the mean NLL per target token, lower is better).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.tasks.generate import is_encoder_decoder
from lepton.tasks.prompt_encoding import GenEncoded, collate, pad_id_of
from lepton.tasks.scoring import token_nll_sums

log = logging.getLogger(__name__)


@dataclass
class _Examples:
    """What ``train`` reads of its data: the count and each example's length."""

    lengths: list[int]

    def __len__(self) -> int:
        return len(self.lengths)


def dev_loss(model: Any, tokenizer: Any, dev: GenEncoded | None, batch_size: int = 16) -> Any:
    """``evaluate()`` for ``train``: mean NLL per scored token on dev; None without dev data."""
    if dev is None or len(dev) == 0:
        return None

    def evaluate() -> dict[str, float]:
        nll, count = token_nll_sums(model, dev, pad_id_of(tokenizer), batch_size=batch_size)
        model.train()
        return {"loss": sum(nll) / max(sum(count), 1)}

    return evaluate


def smoothed_loss(epsilon: float, seq2seq: bool) -> Any:
    """``loss_fn`` for ``train``: cross-entropy with label smoothing ``epsilon`` on the target
    tokens (torch's ``cross_entropy(label_smoothing=...)``; padding and prompt labels are -100)."""
    import torch.nn.functional as F

    def loss(model: Any, batch: dict[str, Any], indices: list[int]) -> Any:
        labels = batch["labels"]
        logits = model(**batch).logits
        if not seq2seq:  # a causal model predicts token t+1 at position t
            logits, labels = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=-100, label_smoothing=epsilon)

    return loss


def dev_text_metric(bundle: ModelBundle, dev_split: Any, metric: str, items: int | None) -> Any:
    """``evaluate()`` for ``train`` when selecting by BLEU or chrF: the dev prompts decoded with the
    task's generation settings at greedy (beam search costs too much for every evaluation), scored
    with sacrebleu; the dev loss beside it."""
    from sacrebleu.metrics import BLEU, CHRF

    from lepton.tasks import kind_of
    from lepton.tasks.generate import generate
    from lepton.tasks.generative_kind import settings_of

    kind, task = kind_of(bundle.task), bundle.task
    n = len(dev_split) if items is None else min(items, len(dev_split))
    prompts = [kind.render(bundle.tokenizer, task, p) for p in list(dev_split.texts)[:n]]
    refs = [str(t) for t in list(dev_split.labels)[:n]]
    settings = settings_of(task).model_copy(update={"strategy": "greedy", "num_beams": 4})
    dev_enc = kind.encode_for(bundle.model, dev_split, task, bundle.tokenizer)
    loss_of = dev_loss(bundle.model, bundle.tokenizer, dev_enc)

    def evaluate() -> dict[str, float]:
        hyps = generate(bundle.model, bundle.tokenizer, prompts, settings, max_prompt_tokens=task.max_length)
        scorer = BLEU() if metric == "bleu" else CHRF()
        values = {metric: float(scorer.corpus_score(hyps, [refs]).score)}
        values.update(loss_of())
        return values

    return evaluate


def train_generative(bundle: ModelBundle, config: Any, ctx: RunContext, train_enc: GenEncoded, *,
                     dev_enc: GenEncoded | None = None, label: str = "finetune",
                     loss_fn: Any = None) -> dict[str, Any]:
    """Train ``bundle.model`` in place (full, or LoRA when ``config.method == 'lora'``).
    ``loss_fn(model, batch, indices)``: another loss than the model's own (distillation's).
    ``config.label_smoothing`` (finetune): the smoothed cross-entropy; ``config.metric`` bleu or
    chrf: keep-best on that score of greedy outputs on dev."""
    if len(train_enc) == 0:
        raise StageError(f"{label}: no training examples")
    if getattr(config, "qat", False):
        raise StageError(f"stages.{ctx.stage_index}.qat: quantization-aware training is for "
                         "classifiers; generative models train without it")
    seq2seq = is_encoder_decoder(bundle.model)
    if getattr(config, "label_smoothing", 0) and loss_fn is None:
        loss_fn = smoothed_loss(config.label_smoothing, seq2seq)
    select = _selection(bundle, config, ctx, dev_enc)
    pad = pad_id_of(bundle.tokenizer)
    data = _Examples(train_enc.token_lengths(seq2seq=seq2seq))

    def batch_fn(idx: list[int]) -> dict[str, Any]:
        return collate([train_enc.input_ids[i] for i in idx], [train_enc.labels[i] for i in idx], pad,
                       seq2seq=seq2seq)

    method = getattr(config, "method", "full")
    if method == "full":
        # After a LoRA stage the merged base weights are still frozen (peft froze them): a full
        # stage trains every weight.
        for p in bundle.model.parameters():
            p.requires_grad_(True)
        extra = {"loss_fn": loss_fn} if loss_fn is not None else {}
        summary = _train(bundle, config, ctx, data, batch_fn, bundle.model, dev_enc, label, select, **extra)
    elif method == "lora":
        summary = _train_lora(bundle, config, ctx, data, batch_fn, dev_enc, label, select)
    else:
        raise StageError(f"stages.{ctx.stage_index}.method: {method} is not available for generative "
                         "models (use full or lora)")
    summary["target_tokens"] = sum(1 for labels in train_enc.labels for x in labels if x != -100)
    summary["truncation"] = train_enc.truncation.describe()
    if summary.get("train_seconds"):
        summary["tokens_per_s"] = round(sum(data.lengths) * summary["epochs_run"]
                                        / summary["train_seconds"], 1) if summary["epochs_run"] else None
    return summary


def _selection(bundle: ModelBundle, config: Any, ctx: RunContext, dev_enc: GenEncoded | None) -> Any:
    """(metric, evaluate) for a text metric named by ``config.metric``; None: the dev loss."""
    metric = getattr(config, "metric", None)
    if metric in (None, "loss"):
        return None
    if metric not in ("bleu", "chrf"):
        raise StageError(f"stages.{ctx.stage_index}.metric: {metric!r} cannot select a generative model "
                         "during training (use loss, bleu or chrf)")
    dev_split = ctx.selection()
    if dev_split is None or dev_enc is None:
        raise StageError(f"stages.{ctx.stage_index}.metric: {metric} selects on dev data; the recipe has none "
                         "(add data.dev, or data.validation)")
    return metric, dev_text_metric(bundle, dev_split, metric, getattr(config, "dev_items", None))


def _train(bundle, config, ctx, data, batch_fn, model, dev_enc, label, select=None, **extra) -> dict[str, Any]:
    from lepton.stages.training import TrainJob, train

    metric, evaluate = select or ("loss", dev_loss(model, bundle.tokenizer, dev_enc))
    job = TrainJob(data=data, model=model, batch_fn=batch_fn, metric=metric,
                   evaluate=evaluate, label=label, **extra)
    return train(bundle, config, ctx, job)


def _train_lora(bundle, config, ctx, data, batch_fn, dev_enc, label, select=None) -> dict[str, Any]:
    import torch

    from lepton.stages.adapters import (
        LoraSettings,
        adapter_config,
        save_adapter,
        wrap_with_adapters,
    )
    from lepton.stages.training import plan_steps

    where = f"stages.{ctx.stage_index}.lora"
    settings = config.lora or LoraSettings()
    if settings.modules_to_save is None:
        # A language model's head is its output embedding (often tied to the input one): nothing
        # to train whole beside the adapters.
        settings = settings.model_copy(update={"modules_to_save": []})
    base = None
    base_bits = getattr(config, "base_bits", None)
    if base_bits is not None:
        from lepton.models.weight_only import roundtrip_linears

        group = int(config.base_group_size)
        base = {"bits": base_bits, "group_size": group,
                "scheme": "onnxruntime MatMulNBits round to nearest, asymmetric, dequantized",
                "linears": roundtrip_linears(bundle.model, block_size=group)}
        log.info("LoRA on a %d-bit base: %d linear weights rounded as MatMulNBits will", base_bits, base["linears"])
    peft_config = adapter_config("lora", settings, bundle.model, plan_steps(len(data), config), where)
    torch.manual_seed(ctx.seed)
    peft_model = wrap_with_adapters(bundle.model, peft_config, where)
    trainable, total = peft_model.get_nb_trainable_parameters()
    adapter_dir = ctx.out_dir / "adapter" / (ctx.stage_name or f"{ctx.stage_index}-{label}")

    def merge() -> None:
        save_adapter(peft_model, adapter_dir)
        bundle.model = peft_model.merge_and_unload()

    summary = _train(bundle, config, ctx, data, batch_fn, peft_model, dev_enc, label, select, on_trained=merge)
    live = peft_model.peft_config["default"]
    summary.update({"method": "lora", "trainable_params": trainable, "all_params": total,
                    "trainable_share": round(trainable / total, 6),
                    "target_modules": sorted(live.target_modules or []), "merged": True,
                    "adapter_dir": str(adapter_dir)})
    if base is not None:
        summary["base_quantization"] = base
    return summary
