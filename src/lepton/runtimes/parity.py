"""Parity between two runtimes of one model: the same real inputs through both, compared.

Used by every stage that changes how a model computes (export, quantize, quantize_embeddings) to
report how far the new outputs are from the old ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.tasks import collate, encode, kind_of, sorted_batches


def parity_inputs(bundle: ModelBundle, ctx: RunContext, split_name: str, items: int,
                  batch_size: int) -> tuple[list[dict[str, torch.Tensor]], str]:
    """Padded batches of the first ``items`` real inputs of ``split_name`` (or the next split
    there is), and the split's name."""
    order = [split_name] + [s for s in ("dev", "test", "train") if s != split_name]
    name = next((s for s in order if s in ctx.splits and len(ctx.splits[s]) > 0), None)
    if name is None:
        raise StageError(f"stages.{ctx.stage_index}: the parity check needs real inputs; "
                         "add data.dev (or data.train) to the recipe")
    split = ctx.splits[name]
    check_split_fits(split, bundle.task, f"data.{name}")
    split = type(split)(name=split.name, kind=split.kind, texts=split.texts[:items],
                        text_pairs=split.text_pairs[:items] if split.text_pairs is not None else None,
                        labels=None, sources=split.sources[:items])
    enc = encode(split, bundle.task, bundle.tokenizer)
    pad = bundle.tokenizer.pad_token_id or 0
    return [collate(enc, idx, pad, with_labels=False) for idx in sorted_batches(enc.lengths, batch_size)], name


def check_split_fits(split: Any, task: Any, where: str) -> None:
    """A clear error when ``split`` holds inputs of another kind of task than the model's."""
    if len(split) == 0:
        raise StageError(f"{where} has no examples")
    if split.kind != task.split_kind:
        have = "token-level (CoNLL) sentences" if split.kind == "tokens" else "sentences"
        raise StageError(f"{where} holds {have}, but the model does {kind_of(task).title}")
    if task.pair and split.text_pairs is None:
        raise StageError(f"{where} has single sentences, but the model classifies sentence pairs")
    if not task.pair and split.text_pairs is not None:
        raise StageError(f"{where} has sentence pairs, but the model classifies single sentences")


def compare_logits(reference: Any, candidate: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Largest |logit difference| and prediction agreement of two runtimes on ``batches``."""
    worst, same, total = 0.0, 0, 0
    for batch in batches:
        a, b = reference.logits(batch), candidate.logits(batch)
        if a.ndim == 3:  # token classification: real tokens only
            keep = batch["attention_mask"].numpy().astype(bool)
            a, b = a[keep], b[keep]
        worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
        same += int(np.sum(a.argmax(-1) == b.argmax(-1)))
        total += int(a.shape[0])
    return {"max_abs_diff": worst, "agreement": same / total if total else 1.0,
            "compared": total}
