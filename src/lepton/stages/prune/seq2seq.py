"""``prune`` of an encoder-decoder model (T5 plain or gated, Marian, BART): ``method: ffn``
removes the same share of FFN neurons from every layer of both stacks, physically, and updates the
width fields (``d_ff`` for T5's two stacks, ``encoder_ffn_dim`` / ``decoder_ffn_dim`` for
BART-style models), so the model still loads in plain ``AutoModelForSeq2SeqLM``.
``importance: gradient`` is read as activation-based (the mean magnitude of a neuron's value at
its output projection, on the real source tokens in the encoder and the target tokens in the
decoder, over training pairs, times its output-weight norm); ``magnitude`` uses weight norms only.
Heads and the unstructured methods are refused in one line."""

from __future__ import annotations

import logging
from typing import Any

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import training_data
from lepton.stages.prune import PruneConfig
from lepton.stages.prune.decoder import prune_ffn_stage

log = logging.getLogger(__name__)
SCORED_PAIRS = 64


@register(PruneConfig, family="encoder-decoder", example={"method": "ffn", "sparsity": 0.5, "importance": "gradient"})
def prune_seq2seq(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> ModelBundle:
    from lepton.models import decoder_structure as dc

    return prune_ffn_stage(bundle, config, ctx, "encoder-decoder", "training pairs",
                           scores=lambda: _activation_scores(bundle, config, ctx),
                           weights_only=lambda: dc.seq2seq_ffn_importance(bundle.model),
                           prune=lambda keep, scores: dc.prune_seq2seq_ffn(bundle.model, keep, scores))


def _activation_scores(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> tuple[dict[str, Any], int]:
    from lepton.models import decoder_structure as dc
    from lepton.tasks.prompt_encoding import collate, pad_id_of

    train, _ = training_data(bundle, ctx)
    n = min(len(train), SCORED_PAIRS, config.batches * config.batch_size)
    if n == 0:
        raise StageError(f"stages.{ctx.stage_index}.importance: the importance measure needs training pairs in "
                         "data.train")
    pad = pad_id_of(bundle.tokenizer)
    totals: dict[str, Any] = {}
    for start in range(0, n, config.batch_size):
        rows = range(start, min(n, start + config.batch_size))
        batch = collate([train.input_ids[i] for i in rows], [train.labels[i] for i in rows], pad, seq2seq=True)
        for name, per_layer in dc.seq2seq_ffn_importance(bundle.model, batch).items():
            totals[name] = per_layer if name not in totals else [a + b for a, b in zip(totals[name], per_layer)]
    return totals, n
