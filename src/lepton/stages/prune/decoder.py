"""``prune`` of a decoder-only generative model: ``method: ffn`` removes gated-FFN neurons
physically (each kept neuron's ``gate_proj``/``up_proj`` rows and ``down_proj`` column), the same
count in every layer, so ``intermediate_size`` in the config describes the result and the model
loads in plain ``AutoModelForCausalLM``. ``sparsity`` is the share of neurons removed.
``importance: gradient`` is read here as activation-based (mean |act(gate)·up| on training
examples times the neuron's output-weight norm); ``magnitude`` uses weight norms only.

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
                         "(gated-FFN neurons, removed physically)")
    try:
        if config.importance == "gradient":
            scores, n = _activation_scores(bundle, config, ctx)
            measure = f"mean |act(gate)*up| on {n} training examples x down_proj column norm"
        else:
            scores, measure = dc.ffn_importance(model), "gate row x up row x down column norms"
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
