"""``drop_layers`` of a decoder-only generative model: decoder layers removed from the model's
layer stack (``model.layers``, ``transformer.h``, ``gpt_neox.layers`` or ``model.decoder.layers``,
found by ``models.decoder_structure``; the KV-cache slots renumbered, per-layer config lists shortened), so the model
still loads in plain ``AutoModelForCausalLM``. ``keep: [...]`` or a ``strategy`` with ``layers``
as for encoders; ``importance`` ranks layers by block influence (1 - cosine similarity of a layer's
input and output hidden states on training examples, ShortGPT's measure), and never drops the
first layer."""

from __future__ import annotations

import logging
from typing import Any

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import require_torch_decoder, scoring_batches
from lepton.stages.drop_layers import DropLayersConfig, choose_layers

log = logging.getLogger(__name__)

@register(DropLayersConfig, family="decoder")
def drop_decoder_layers(bundle: ModelBundle, config: DropLayersConfig, ctx: RunContext) -> ModelBundle:
    from lepton.models import decoder_structure as dc

    where = f"stages.{ctx.stage_index}"
    model = require_torch_decoder(bundle, ctx, "drop_layers")
    config.one_stack(where)
    try:
        total = len(dc.decoder_layers(model))
        structure = dc.describe_structure(model)
    except dc.CompressError as err:
        raise StageError(f"{where}: {err}") from None
    config.layers_left(total, where)  # out-of-range settings, one line (RecipeError)
    summary: dict[str, Any] = {"layers_before": total, "layer_stack": structure["layer_stack"]}
    if config.keep is not None:
        keep = list(config.keep)
    elif config.strategy == "importance":
        scores, n = importance(bundle, config, ctx)
        drop = dc.least_important_layers(scores, total - int(config.layers or total))
        keep = [i for i in range(total) if i not in drop]
        summary["strategy"] = "importance"
        summary["importance"] = {"measure": f"block influence (1 - cosine of a layer's input and output), "
                                            f"{n} examples of data.train; layer 0 always kept",
                                 "per_layer": {str(i): round(s, 6) for i, s in enumerate(scores)}}
    else:
        keep = choose_layers(str(config.strategy), total, int(config.layers or total))
        summary["strategy"] = config.strategy
    before = sum(p.numel() for p in model.parameters())
    done = dc.drop_decoder_layers(model, [i for i in range(total) if i not in keep])
    after = sum(p.numel() for p in model.parameters())
    summary.update({"kept": done["kept"], "dropped": done["dropped"], "layers_after": done["layers_after"],
                    "params_before": before, "params_after": after})
    ctx.stage_summary = summary
    log.info("drop_layers: %d -> %d decoder layers (%s dropped)", total, len(keep), done["dropped"])
    return bundle


def importance(bundle: ModelBundle, config: DropLayersConfig, ctx: RunContext) -> tuple[list[float], int]:
    """Block influence per layer, averaged over batches of training examples (prompt and target)."""
    from lepton.models import decoder_structure as dc

    batches, n = scoring_batches(bundle, ctx, config.batches, config.batch_size, f"stages.{ctx.stage_index}.strategy")
    per_batch = [dc.layer_importance(bundle.model, ids, mask) for ids, mask in batches]
    return [sum(col) / len(per_batch) for col in zip(*per_batch)], n
