"""``prune`` of a decoder-only generative model: ``method: ffn`` removes FFN neurons physically
(each kept neuron's input rows, gate and up where the FFN is gated, and its output column), the
same count in every layer, so the config's width field (``intermediate_size``, ``ffn_dim``,
``ffn_hidden_size`` or ``n_inner``) describes the result and the model loads in plain
``AutoModelForCausalLM``. Gated (Llama, Qwen, Gemma), fused gate-up (Phi-3) and plain two-projection
FFNs (GPT-2, GPT-NeoX, OPT, Phi, Falcon, GPT-J) are covered: ``models.decoder_structure`` holds
the layouts. ``sparsity`` is the share of neurons removed. ``importance: gradient`` is read here
as activation-based (the mean magnitude of a neuron's value at the output projection on training
examples times its output-weight norm); ``magnitude`` uses weight norms only.

Attention-head pruning under grouped-query attention (removing whole KV groups) is not built;
``method: heads`` and the unstructured methods are refused for decoders in one line.
"""

from __future__ import annotations

import logging
from typing import Any

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import require_torch_decoder, scoring_batches
from lepton.stages.prune import PruneConfig

log = logging.getLogger(__name__)


@register(PruneConfig, family="decoder", example={"method": "ffn", "sparsity": 0.5, "importance": "gradient"})
def prune_decoder(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> ModelBundle:
    from lepton.models import decoder_structure as dc

    where = f"stages.{ctx.stage_index}"
    model = require_torch_decoder(bundle, ctx, "prune")
    if config.method != "ffn":
        raise StageError(f"{where}.method: {config.method} is not built for decoder models; use method: ffn "
                         "(FFN neurons, removed physically)")
    try:
        if config.importance == "gradient":
            scores, n = _activation_scores(bundle, config, ctx)
            measure = f"mean |FFN activation| on {n} training examples x output column norm"
        else:
            scores, measure = dc.ffn_importance(model), "input row norms x output column norm"
        done = dc.prune_ffn(model, 1.0 - float(config.sparsity or 0.0), scores)
    except dc.CompressError as err:
        raise StageError(f"{where}: {err}") from None
    ctx.stage_summary = {"method": "ffn", "sparsity": config.sparsity, "importance": measure, **done}
    log.info("prune ffn: %d -> %d neurons per layer", done["intermediate_before"], done["intermediate_after"])
    return bundle


def _activation_scores(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> tuple[list[Any], int]:
    from lepton.models import decoder_structure as dc

    batches, n = scoring_batches(bundle, ctx, config.batches, config.batch_size, f"stages.{ctx.stage_index}.importance")
    per_batch = [dc.ffn_importance(bundle.model, ids, mask) for ids, mask in batches]
    return [sum(col) for col in zip(*per_batch)], n
