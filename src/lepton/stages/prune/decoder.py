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
from collections.abc import Callable
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

    return prune_ffn_stage(bundle, config, ctx, "decoder", "training examples",
                           scores=lambda: _activation_scores(bundle, config, ctx),
                           weights_only=lambda: dc.ffn_importance(bundle.model),
                           prune=lambda keep, scores: dc.prune_ffn(bundle.model, keep, scores))


def prune_ffn_stage(bundle: ModelBundle, config: PruneConfig, ctx: RunContext, family: str, examples: str, *,
                    scores: Callable[[], tuple[Any, int]], weights_only: Callable[[], Any],
                    prune: Callable[[float, Any], dict[str, Any]]) -> ModelBundle:
    """What FFN pruning of a generative model does whatever its layout: refuse other methods,
    score the neurons (activations on ``examples``, or weight norms), prune, summarise."""
    from lepton.models import decoder_structure as dc

    where = f"stages.{ctx.stage_index}"
    require_torch_decoder(bundle, ctx, "prune")
    if config.method != "ffn":
        raise StageError(f"{where}.method: {config.method} is not built for {family} models; use method: ffn "
                         "(FFN neurons, removed physically)")
    try:
        if config.importance == "gradient":
            found, n = scores()
            measure = f"mean |FFN activation| on {n} {examples} x output column norm"
        else:
            found, measure = weights_only(), "input row norms x output column norm"
        done = prune(1.0 - float(config.sparsity or 0.0), found)
    except dc.CompressError as err:
        raise StageError(f"{where}: {err}") from None
    ctx.stage_summary = {"method": "ffn", "sparsity": config.sparsity, "importance": measure, **done}
    log.info("prune ffn (%s): %s", family, {k: v for k, v in done.items() if "intermediate" in k or k in
                                           ("encoder", "decoder")})
    return bundle


def _activation_scores(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> tuple[list[Any], int]:
    from lepton.models import decoder_structure as dc

    batches, n = scoring_batches(bundle, ctx, config.batches, config.batch_size, f"stages.{ctx.stage_index}.importance")
    per_batch = [dc.ffn_importance(bundle.model, ids, mask) for ids, mask in batches]
    return [sum(col) for col in zip(*per_batch)], n
