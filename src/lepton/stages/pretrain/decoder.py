"""The pretrain stage on decoder-only models: continued causal-LM training on raw documents, with
the held-out documents' bits per byte and perplexity before and after."""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.pretrain import PretrainConfig, read_stage_documents
from lepton.stages.training_decoder import train_generative


@register(PretrainConfig, family="decoder")
def pretrain_decoder(bundle: ModelBundle, config: PretrainConfig, ctx: RunContext) -> ModelBundle:
    """Continued causal-LM pretraining on the stage's text; the loss on every token."""
    from lepton.tasks.prompt_encoding import encode_documents

    texts = read_stage_documents(config, ctx)
    rng = np.random.default_rng(ctx.seed)
    order = rng.permutation(len(texts))
    n_held = max(1, int(round(len(texts) * config.held_out))) if len(texts) > 1 else 0
    held = [texts[i] for i in order[:n_held]]
    rest = [texts[i] for i in order[n_held:]]
    max_length = config.max_length or bundle.task.max_length
    enc, _ = encode_documents(bundle.tokenizer, rest, max_length=max_length)
    dev, _ = encode_documents(bundle.tokenizer, held, max_length=max_length)
    before = _held_out(bundle, held, config)
    summary = train_generative(bundle, config, ctx, enc, dev_enc=dev if held else None, label="pretrain")
    after = _held_out(bundle, held, config)
    summary.pop("evals", None)
    summary.update({"objective": "causal language modelling", "documents": len(rest),
                    "held_out_documents": len(held), "held_out_before": before, "held_out_after": after})
    ctx.stage_summary = summary
    return bundle


def _held_out(bundle: ModelBundle, held: list[str], config: Any) -> dict[str, float] | None:
    if not held:
        return None
    from lepton.tasks.scoring import document_losses
    from lepton.tasks.text_metrics import lm_scores

    scores = lm_scores(document_losses(bundle.model, bundle.tokenizer, held,
                                       max_length=config.max_length or bundle.task.max_length),
                       resamples=200)
    return {k: round(v.value, 4) for k, v in scores.items()}
