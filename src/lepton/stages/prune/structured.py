"""Structured pruning: physically removing attention heads or FFN neurons, chosen by gradient or
magnitude importance (``prune`` methods ``heads`` and ``ffn``). See ``lepton.stages.prune``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lepton.core.errors import StageError
from lepton.models.structure import describe, encoder_layers, remove_heads, remove_neurons, sync_config
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.tasks import collate, encode, train_batches

if TYPE_CHECKING:
    from lepton.stages.prune import PruneConfig


def importance_batches(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> list[dict]:
    train = ctx.split("train")
    if train.labels is None:
        raise StageError(f"stages.{ctx.stage_index}.importance: gradient importance needs labelled data.train")
    enc = encode(train, bundle.task, bundle.tokenizer)
    pad = bundle.tokenizer.pad_token_id or 0
    chosen = train_batches(enc.lengths, config.batch_size, seed=ctx.seed, epoch=0)[: config.batches]
    return [collate(enc, idx, pad) for idx in chosen]


def gradient_importance(model: Any, batches: list[dict], device: str, what: str) -> list[torch.Tensor]:
    """Per layer, ``sum over batches |dLoss/dmask|`` for a mask of ones on each head's context
    output (``what="heads"``) or each FFN neuron's activation (``what="ffn"``)."""
    layers = encoder_layers(model)
    assert layers is not None
    sizes = [(layer.attention.self.num_attention_heads if what == "heads" else layer.intermediate.dense.out_features)
             for layer in layers]
    masks = [torch.ones(n, device=device, requires_grad=True) for n in sizes]
    handles = []
    for layer, mask in zip(layers, masks):
        if what == "heads":
            def on_heads(module: Any, args: Any, output: Any, mask: torch.Tensor = mask) -> Any:
                context, *rest = output
                shape = context.shape
                heads = context.view(*shape[:-1], mask.numel(), -1) * mask[:, None]
                return (heads.view(shape), *rest)
            handles.append(layer.attention.self.register_forward_hook(on_heads))
        else:
            def on_ffn(module: Any, args: Any, output: Any, mask: torch.Tensor = mask) -> Any:
                return output * mask
            handles.append(layer.intermediate.register_forward_hook(on_ffn))
    scores = [torch.zeros(n, device=device) for n in sizes]
    was_training = model.training
    model.eval()  # no dropout: score the model as it will run
    try:
        for batch in batches:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            for score, grad in zip(scores, torch.autograd.grad(loss, masks)):
                score += grad.detach().abs()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [s.cpu() for s in scores]


def magnitude_importance(model: Any, what: str) -> list[torch.Tensor]:
    layers = encoder_layers(model)
    assert layers is not None
    out = []
    with torch.no_grad():
        for layer in layers:
            if what == "heads":
                attn = layer.attention.self
                n, size = attn.num_attention_heads, attn.attention_head_size
                sq = sum(getattr(attn, p).weight.pow(2).view(n, size, -1).sum(dim=(1, 2))
                         for p in ("query", "key", "value"))
                sq = sq + layer.attention.output.dense.weight.pow(2).view(-1, n, size).sum(dim=(0, 2))
                out.append(sq.sqrt().cpu())
            else:
                rows = layer.intermediate.dense.weight.norm(dim=1)
                cols = layer.output.dense.weight.norm(dim=0)
                out.append((rows * cols).cpu())
    return out


def select_lowest(scores: list[torch.Tensor], fraction: float, scope: str, what: str,
                  where: str) -> dict[int, list[int]]:
    """{layer: [indices to remove]}: the lowest-scoring ``fraction``, each layer keeping one."""
    unit = "heads" if what == "heads" else "FFN neurons"
    if scope == "layer":
        chosen = {}
        for layer, s in enumerate(scores):
            k = int(fraction * s.numel() + 0.5)
            if k >= s.numel():
                raise StageError(f"{where}.sparsity: {fraction} would remove all {s.numel()} {unit} of "
                                 f"layer {layer} (scope: layer); every layer keeps at least one — "
                                 "lower sparsity or use scope: global")
            chosen[layer] = sorted(int(i) for i in torch.argsort(s, stable=True)[:k])
        return chosen
    total = sum(s.numel() for s in scores)
    k = int(fraction * total + 0.5)
    if k > total - len(scores):
        raise StageError(f"{where}.sparsity: {fraction} would remove {k} of {total} {unit}, leaving some "
                         "layer none; every layer keeps at least one — lower sparsity")
    # Per-layer L2 normalization makes scores comparable across layers (Michel et al. 2019).
    normed = [s / (s.norm() + 1e-12) for s in scores]
    ranked = sorted(((float(v), layer, i) for layer, s in enumerate(normed) for i, v in enumerate(s)))
    left = [s.numel() for s in scores]
    chosen = {layer: [] for layer in range(len(scores))}
    for _, layer, i in ranked:
        if k == 0:
            break
        if left[layer] > 1:
            chosen[layer].append(i)
            left[layer] -= 1
            k -= 1
    return {layer: sorted(v) for layer, v in chosen.items()}


def _explicit_heads(model: Any, heads: dict[int, list[int]], where: str) -> dict[int, list[int]]:
    layers = encoder_layers(model)
    assert layers is not None
    for layer, chosen in heads.items():
        if layer >= len(layers):
            raise StageError(f"{where}.heads: layer {layer} is out of range; the model has "
                             f"{len(layers)} layers (0-{len(layers) - 1})")
        n = layers[layer].attention.self.num_attention_heads
        if any(h >= n for h in chosen):
            raise StageError(f"{where}.heads.{layer}: head {max(chosen)} is out of range; layer {layer} "
                             f"has {n} heads (0-{n - 1})")
        if len(chosen) >= n:
            raise StageError(f"{where}.heads.{layer}: would remove all {n} heads of layer {layer}; "
                             "every layer keeps at least one")
    return {layer: heads.get(layer, []) for layer in range(len(layers))}


def remove_structures(bundle: ModelBundle, config: PruneConfig, ctx: RunContext, where: str) -> dict[str, Any]:
    model, what = bundle.model, config.method
    layers = encoder_layers(model)
    if layers is None:
        raise StageError(f"{where}.method: {what} pruning supports BERT-style encoders "
                         f"(attention.self.query/key/value, intermediate.dense); not {type(model).__name__}")
    summary: dict[str, Any] = {"method": what}
    if what == "heads" and config.heads is not None:
        chosen = _explicit_heads(model, config.heads, where)
        summary["importance"] = "given (heads:)"
    else:
        if config.importance == "gradient":
            model.to(ctx.device)
            batches = importance_batches(bundle, config, ctx)
            scores = gradient_importance(model, batches, ctx.device, what)
            summary["importance"] = f"gradient (|dLoss/dmask| over {len(batches)} training batches)"
        else:
            scores = magnitude_importance(model, what)
            summary["importance"] = "magnitude (weight-norm proxy)"
        chosen = select_lowest(scores, float(config.sparsity or 0), config.scope, what, where)
        summary["scope"] = config.scope
        if what == "heads":
            summary["head_scores"] = {str(i): [round(float(v), 6) for v in s] for i, s in enumerate(scores)}
    for layer, index in chosen.items():
        (remove_heads if what == "heads" else remove_neurons)(layers[layer], index)
    sync_config(model)
    if what == "heads":
        summary["heads_removed"] = {str(i): v for i, v in chosen.items() if v}
        summary["heads_per_layer"] = [int(layer.attention.self.num_attention_heads) for layer in layers]
    else:
        summary["neurons_removed"] = {str(i): len(v) for i, v in chosen.items() if v}
        summary["intermediate_size"] = [int(layer.intermediate.dense.out_features) for layer in layers]
    summary["loads_in_transformers"] = describe(model) is None
    return summary
