"""``drop_layers`` of an encoder-decoder model (T5, Marian, BART): encoder layers by ``keep`` /
``layers``, decoder layers by ``decoder_keep`` / ``decoder_layers``, one position-based
``strategy`` for both; a stack with no setting stays whole. The layers leave their stacks
physically (``models.decoder_structure.drop_seq2seq_layers``: the cache slots renumbered, the
config's layer counts updated), so the model still loads in plain ``AutoModelForSeq2SeqLM``. T5's
first block holds the relative position bias every block reads: dropping it is refused in one
line. ``strategy: importance`` is built for one-stack models and refused here."""

from __future__ import annotations

import logging
from typing import Any

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import require_torch_decoder
from lepton.stages.drop_layers import DropLayersConfig, choose_layers

log = logging.getLogger(__name__)


@register(DropLayersConfig, family="encoder-decoder", example={"keep": [0], "decoder_keep": [0]})
def drop_seq2seq_layers(bundle: ModelBundle, config: DropLayersConfig, ctx: RunContext) -> ModelBundle:
    from lepton.models import decoder_structure as dc

    where = f"stages.{ctx.stage_index}"
    model = require_torch_decoder(bundle, ctx, "drop_layers")
    if config.strategy == "importance":
        raise StageError(f"{where}.strategy: importance is built for one-stack models; give keep / decoder_keep "
                         "or strategy top | bottom | alternate")
    settings = {"encoder": (config.keep, config.layers, "keep", "layers"),
                "decoder": (config.decoder_keep, config.decoder_layers, "decoder_keep", "decoder_layers")}
    summary: dict[str, Any] = {"strategy": config.strategy}
    before = sum(p.numel() for p in model.parameters())
    for stack in dc.SEQ2SEQ_STACKS:
        keep, count, keep_key, count_key = settings[stack.name]
        try:
            total = len(dc.seq2seq_layers(model, stack))
            if keep is None and count is None:
                continue
            if keep is not None:
                outside = [k for k in keep if k >= total]
                if outside:
                    raise StageError(f"{where}.{keep_key}: layer {outside[0]} is out of range; the {stack.name} has "
                                     f"{total} layers (0-{total - 1})")
                kept = list(keep)
            else:
                if int(count or 0) > total:
                    raise StageError(f"{where}.{count_key}: cannot keep {count} layers of a {total}-layer "
                                     f"{stack.name}")
                kept = choose_layers(str(config.strategy), total, int(count or 0))
            done = dc.drop_seq2seq_layers(model, stack, [i for i in range(total) if i not in kept])
        except dc.CompressError as err:
            raise StageError(f"{where}: {err}") from None
        summary[stack.name] = done
        log.info("drop_layers: %s %d -> %d layers", stack.name, done["layers_before"], done["layers_after"])
    summary.update({"params_before": before, "params_after": sum(p.numel() for p in model.parameters())})
    ctx.stage_summary = summary
    return bundle
