"""``drop_layers``: remove whole encoder layers; the result stays a plain transformers model.

Which layers stay (``N`` = ``layers``, ``L`` = the model's layer count, indices from 0 at the
embeddings):

- ``keep: [0, 2, 4]``: exactly these (order does not matter; layers keep their original order).
- ``strategy: bottom``: the first N layers, ``[0 .. N-1]`` (closest to the embeddings).
- ``strategy: top``: the last N layers, ``[L-N .. L-1]``.
- ``strategy: alternate``: N evenly spaced layers anchored at the last one (the layer the task
  head was trained on): ``sorted(L-1 - floor(i*L/N) for i < N)``; 6 -> 3 keeps ``[1, 3, 5]``,
  12 -> 6 keeps ``[1, 3, 5, 7, 9, 11]``.
- ``strategy: importance``: each layer is skipped in turn and scored by how much the mean loss
  rises on ``batches`` batches of data.dev (data.train when there is no labelled dev); the N
  layers whose removal hurts most stay. A cheap proxy for the dev-metric drop: the loss moves
  smoothly where accuracy on a few batches is coarse.

Encoder-decoder models (T5, Marian, BART) have two stacks, chosen separately: ``keep`` / ``layers``
for the encoder, ``decoder_keep`` / ``decoder_layers`` for the decoder (either may be left out: that
stack stays whole), with one position-based ``strategy`` for both
(``lepton.stages.drop_layers.seq2seq``).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from lepton.core.errors import RecipeError, StageError
from lepton.models.structure import layer_list, sync_config
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import StageConfig, register
from lepton.tasks import collate, encode, train_batches

log = logging.getLogger(__name__)

Strategy = Literal["top", "bottom", "alternate", "importance"]


class DropLayersConfig(StageConfig):
    contract_example: ClassVar[dict[str, Any]] = {"keep": [0]}

    kind: Literal["drop_layers"] = "drop_layers"
    keep: list[int] | None = None  # explicit layer indices to keep
    strategy: Strategy | None = None
    layers: int | None = Field(default=None, ge=1)  # how many layers to keep (with strategy)
    decoder_keep: list[int] | None = None  # encoder-decoder models: the decoder's layers to keep
    decoder_layers: int | None = Field(default=None, ge=1)  # encoder-decoder models, with strategy
    batches: int = Field(default=8, ge=1)  # strategy importance: batches scored per skipped layer
    batch_size: int = Field(default=32, ge=1)

    @field_validator("keep", "decoder_keep")
    @classmethod
    def _valid_indices(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("keep at least one layer")
        negative = [k for k in value if k < 0]
        if negative:
            raise ValueError(f"layer indices count from 0 at the embeddings (got {negative[0]})")
        twice = sorted({k for k in value if value.count(k) > 1})
        if twice:
            raise ValueError(f"layer {twice[0]} is listed more than once")
        return sorted(value)

    @model_validator(mode="after")
    def _one_way(self) -> DropLayersConfig:
        if self.keep is not None and self.layers is not None:
            raise ValueError("give either keep: [indices] or strategy with layers, not both")
        if self.decoder_keep is not None and self.decoder_layers is not None:
            raise ValueError("give either decoder_keep: [indices] or strategy with decoder_layers, not both")
        counted = self.layers is not None or self.decoder_layers is not None
        listed = self.keep is not None or self.decoder_keep is not None
        if self.strategy is not None and not counted:
            raise ValueError(f"strategy {self.strategy} needs layers: N (how many layers to keep)")
        if counted and self.strategy is None:
            raise ValueError("layers: N needs a strategy: top | bottom | alternate | importance")
        if self.strategy is None and not listed:
            raise ValueError("say which layers stay: keep: [0, 2, 4], or strategy: "
                             "top | bottom | alternate | importance with layers: N")
        if self.keep is not None and self.strategy is not None and self.decoder_layers is None:
            raise ValueError("give either keep: [indices] or strategy with layers, not both")
        return self

    def one_stack(self, where: str) -> None:
        """A model with one layer stack: the decoder_* settings do not apply, and keep or layers must."""
        given = [k for k in ("decoder_keep", "decoder_layers") if getattr(self, k) is not None]
        if given:
            raise StageError(f"{where}.{given[0]}: applies to encoder-decoder models (this model has one layer "
                             "stack: use keep or layers)")
        if self.keep is None and self.layers is None:
            raise StageError(f"{where}: say which layers stay: keep: [...], or layers: N with the strategy")

    def layers_left(self, total: int, where: str) -> int:
        if self.keep is not None:
            outside = [k for k in self.keep if k >= total]
            if outside:
                raise RecipeError(f"{where}.keep: layer {outside[0]} is out of range; "
                                  f"the model has {total} layers here (0-{total - 1})")
            return len(self.keep)
        if self.layers is not None:
            if self.layers > total:
                raise RecipeError(f"{where}.layers: cannot keep {self.layers} layers of a "
                                  f"{total}-layer model")
            return self.layers
        return total


def choose_layers(strategy: str, total: int, n: int) -> list[int]:
    """The layers a position-based strategy keeps (see the module docstring)."""
    if strategy == "bottom":
        return list(range(n))
    if strategy == "top":
        return list(range(total - n, total))
    if strategy == "alternate":
        return sorted(total - 1 - (i * total) // n for i in range(n))
    raise ValueError(f"strategy {strategy!r} is not position-based")


def _scoring_batches(bundle: ModelBundle, config: DropLayersConfig, ctx: RunContext) -> tuple[str, list[dict]]:
    dev = ctx.selection()
    split = dev if dev is not None and dev.labels is not None else ctx.split("train")
    if split.labels is None:
        raise StageError(f"stages.{ctx.stage_index}.strategy: importance needs labelled data.dev or data.train")
    enc = encode(split, bundle.task, bundle.tokenizer)
    pad = bundle.tokenizer.pad_token_id or 0
    chosen = train_batches(enc.lengths, config.batch_size, seed=ctx.seed, epoch=0)[: config.batches]
    return split.name, [collate(enc, idx, pad) for idx in chosen]


def _mean_loss(model: Any, batches: list[dict], device: str) -> float:
    total, n = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            out = model(**{k: v.to(device) for k, v in batch.items()})
            size = int(batch["input_ids"].shape[0])
            total += float(out.loss) * size
            n += size
    return total / max(n, 1)


def layer_importance(model: Any, batches: list[dict], device: str) -> tuple[float, list[float]]:
    """(loss with every layer, [loss increase when layer i alone is skipped])."""
    base = getattr(model, "base_model", model)
    layers = base.encoder.layer
    was_training = model.training
    model.eval()
    try:
        full = _mean_loss(model, batches, device)
        scores = []
        for i in range(len(layers)):
            base.encoder.layer = torch.nn.ModuleList([m for j, m in enumerate(layers) if j != i])
            scores.append(_mean_loss(model, batches, device) - full)
    finally:
        base.encoder.layer = layers
        model.train(was_training)
    return full, scores


def remove_layers(model: Any, keep: list[int]) -> None:
    """Keep only ``keep`` (ascending indices) in the encoder and update the config to match."""
    base = getattr(model, "base_model", model)
    kept = torch.nn.ModuleList([base.encoder.layer[i] for i in keep])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # the cache index of decoder-style layers
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    base.encoder.layer = kept
    config = model.config
    old = config.num_hidden_layers
    config.num_hidden_layers = len(keep)
    per_layer = getattr(config, "layer_types", None)  # configs that list something per layer
    if isinstance(per_layer, list) and len(per_layer) == old:
        config.layer_types = [per_layer[i] for i in keep]


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@register(DropLayersConfig)
def drop_layers(bundle: ModelBundle, config: DropLayersConfig, ctx: RunContext) -> ModelBundle:
    """Remove encoder layers in place; the model stays loadable by plain transformers."""
    model, where = bundle.model, f"stages.{ctx.stage_index}"
    config.one_stack(where)
    layers = layer_list(model)
    if layers is None:
        raise StageError(f"{where}: drop_layers needs an encoder with base_model.encoder.layer "
                         f"(BERT-style); {type(model).__name__} has none")
    total = len(layers)
    summary: dict[str, Any] = {"layers_before": total}
    if config.keep is not None:
        outside = [k for k in config.keep if k >= total]
        if outside:
            raise StageError(f"{where}.keep: layer {outside[0]} is out of range; the model has "
                             f"{total} layers (0-{total - 1})")
        keep = list(config.keep)
    else:
        n = int(config.layers or 0)
        if n > total:
            raise StageError(f"{where}.layers: cannot keep {n} layers of a {total}-layer model")
        summary["strategy"] = config.strategy
        if config.strategy == "importance":
            model.to(ctx.device)
            split, batches = _scoring_batches(bundle, config, ctx)
            full, scores = layer_importance(model, batches, ctx.device)
            # Most important first; ties go to the higher layer (closer to the task head).
            order = sorted(range(total), key=lambda i: (-scores[i], -i))
            keep = sorted(order[:n])
            summary["importance"] = {"measure": f"mean loss increase when skipped, "
                                                f"{len(batches)} batches of data.{split}",
                                     "full_loss": round(full, 6),
                                     "per_layer": {str(i): round(s, 6) for i, s in enumerate(scores)}}
        else:
            keep = choose_layers(str(config.strategy), total, n)
    if len(keep) == total:
        log.warning("%s: drop_layers keeps all %d layers; nothing is removed", where, total)
    before = _params(model)
    remove_layers(model, keep)
    sync_config(model)
    after = _params(model)
    summary.update({"kept": keep, "dropped": [i for i in range(total) if i not in keep],
                    "layers_after": len(keep), "params_before": before, "params_after": after,
                    "params_removed": before - after})
    log.info("drop_layers: kept %s of %d layers (%d -> %d parameters)", keep, total, before, after)
    ctx.stage_summary = summary
    return bundle

# Registered on import: the implementation for generative models.
from lepton.stages.drop_layers import decoder as _decoder  # noqa: E402, F401

# Registered on import: the implementation for encoder-decoder models.
from lepton.stages.drop_layers import seq2seq as _seq2seq  # noqa: E402, F401
