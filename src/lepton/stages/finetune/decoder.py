"""The finetune stage on generative models (decoder-only and encoder-decoder): prompt/target
pairs (or documents) through the one training loop, the loss on the target tokens only."""

from __future__ import annotations

from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.decoder_common import record_generation, training_data
from lepton.stages.finetune import FinetuneConfig
from lepton.stages.training_decoder import train_generative


@register(FinetuneConfig, family=("decoder", "encoder-decoder"))
def finetune_generative(bundle: ModelBundle, config: FinetuneConfig, ctx: RunContext) -> ModelBundle:
    """Fine-tune on data.train (all weights, or adapters), selecting on data.dev; the recipe's
    generation settings become the model's generation config."""
    train, dev = training_data(bundle, ctx)
    ctx.stage_summary = train_generative(bundle, config, ctx, train, dev_enc=dev, label="finetune")
    record_generation(bundle)
    return bundle
