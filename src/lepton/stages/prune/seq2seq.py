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
from lepton.stages.decoder_common import require_torch_decoder, training_data
from lepton.stages.prune import PruneConfig

log = logging.getLogger(__name__)
SCORED_PAIRS = 64


@register(PruneConfig, family="encoder-decoder", example={"method": "ffn", "sparsity": 0.5, "importance": "gradient"})
def prune_seq2seq(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> ModelBundle:
    from lepton.models import decoder_structure as dc

    where = f"stages.{ctx.stage_index}"
    model = require_torch_decoder(bundle, ctx, "prune")
    if config.method != "ffn":
        raise StageError(f"{where}.method: {config.method} is not built for encoder-decoder models; use method: ffn "
                         "(FFN neurons, removed physically)")
    try:
        if config.importance == "gradient":
            scores, n = _activation_scores(bundle, config, ctx)
            measure = f"mean |FFN activation| on {n} training pairs x output column norm"
        else:
            scores, measure = dc.seq2seq_ffn_importance(model), "input row norms x output column norm"
        done = dc.prune_seq2seq_ffn(model, 1.0 - float(config.sparsity or 0.0), scores)
    except dc.CompressError as err:
        raise StageError(f"{where}: {err}") from None
    ctx.stage_summary = {"method": "ffn", "sparsity": config.sparsity, "importance": measure, **done}
    log.info("prune ffn: encoder %d -> %d, decoder %d -> %d neurons per layer", done["encoder"]["intermediate_before"],
             done["encoder"]["intermediate_after"], done["decoder"]["intermediate_before"],
             done["decoder"]["intermediate_after"])
    return bundle


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
