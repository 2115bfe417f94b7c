"""The shape of a BERT-style encoder whose layers no longer match its config.

Head and FFN-neuron pruning leave layers of different sizes, which a transformers config cannot
express (transformers 5 dropped ``pruned_heads`` and ``prune_heads``). ``describe`` records the
per-layer sizes for the manifest; ``rebuild`` shrinks a freshly built model to them so the saved
weights load strictly. A model whose layers all match the config describes as ``None``: it is a
plain transformers model.

Supported layout (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM ...): ``base_model.encoder.layer[i]`` with
``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense`` and
``output.dense``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

STRUCTURE_FORMAT = 1


def layer_list(model: Any) -> nn.ModuleList | None:
    """``base_model.encoder.layer`` (any encoder of that layout), or None."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) > 0 else None


def encoder_layers(model: Any) -> nn.ModuleList | None:
    """The encoder's layer list, or None when the model is not a BERT-style encoder."""
    layers = layer_list(model)
    if layers is None:
        return None
    for layer in layers:
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if not all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("query", "key", "value")):
            return None
        if not isinstance(getattr(getattr(layer, "intermediate", None), "dense", None), nn.Linear):
            return None
        if not isinstance(getattr(getattr(layer, "output", None), "dense", None), nn.Linear):
            return None
    return layers


def layer_sizes(model: Any) -> tuple[list[int], list[int]] | None:
    """(attention heads per layer, FFN intermediate size per layer), or None if unsupported."""
    layers = encoder_layers(model)
    if layers is None:
        return None
    heads = [int(layer.attention.self.num_attention_heads) for layer in layers]
    ffn = [int(layer.intermediate.dense.out_features) for layer in layers]
    return heads, ffn


def describe(model: Any) -> dict[str, Any] | None:
    """Per-layer heads and FFN sizes when any layer differs from the config; None otherwise."""
    sizes = layer_sizes(model)
    if sizes is None:
        return None
    heads, ffn = sizes
    config = model.config
    if all(h == config.num_attention_heads for h in heads) and \
            all(f == config.intermediate_size for f in ffn):
        return None
    return {"format": STRUCTURE_FORMAT, "num_attention_heads": heads, "intermediate_size": ffn}


def sync_config(model: Any) -> None:
    """Write a uniform FFN size into ``config.intermediate_size`` (then plain transformers loads it).

    Heads cannot be expressed that way: a config's head count also fixes the head size.
    """
    sizes = layer_sizes(model)
    if sizes is not None and len(set(sizes[1])) == 1:
        model.config.intermediate_size = sizes[1][0]


def _resized(linear: nn.Linear, *, out_features: int | None = None,
             in_features: int | None = None) -> nn.Linear:
    new = nn.Linear(in_features or linear.in_features, out_features or linear.out_features,
                    bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    return new


def rebuild(model: Any, structure: dict[str, Any]) -> None:
    """Shrink a freshly built model (``from_config``) to ``structure``; its weights are then
    placeholders for the saved ones. Raises ValueError when the structure does not fit the model."""
    if structure.get("format") != STRUCTURE_FORMAT:
        raise ValueError(f"structure format {structure.get('format')!r} is not supported "
                         f"(this Lepton reads {STRUCTURE_FORMAT})")
    layers = encoder_layers(model)
    heads, ffn = structure.get("num_attention_heads"), structure.get("intermediate_size")
    if layers is None:
        raise ValueError("the model is not a BERT-style encoder")
    if not isinstance(heads, list) or not isinstance(ffn, list) or not len(heads) == len(ffn) == len(layers):
        raise ValueError(f"structure lists {len(heads or [])} layers' heads and {len(ffn or [])} "
                         f"FFN sizes for a model of {len(layers)} layers")
    for layer, n_heads, size in zip(layers, heads, ffn):
        attn = layer.attention.self
        if int(n_heads) < 1 or int(size) < 1:
            raise ValueError("every layer needs at least one head and one FFN neuron")
        if n_heads != attn.num_attention_heads:
            width = int(n_heads) * attn.attention_head_size
            for name in ("query", "key", "value"):
                setattr(attn, name, _resized(getattr(attn, name), out_features=width))
            layer.attention.output.dense = _resized(layer.attention.output.dense, in_features=width)
            attn.num_attention_heads, attn.all_head_size = int(n_heads), width
        if size != layer.intermediate.dense.out_features:
            layer.intermediate.dense = _resized(layer.intermediate.dense, out_features=int(size))
            layer.output.dense = _resized(layer.output.dense, in_features=int(size))


# ------------------------------------------------------------------- physical removal


def _take(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` of the weight (0: outputs, 1: inputs)."""
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index).clone()
    new = _resized(linear, **({"out_features": len(index)} if dim == 0 else {"in_features": len(index)}))
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach()[index] if dim == 0 else linear.bias.detach())
    new.weight.requires_grad_(linear.weight.requires_grad)
    new.train(linear.training)
    return new


def remove_heads(layer: nn.Module, heads: list[int]) -> None:
    """Physically remove attention ``heads`` (current indices) from one encoder layer."""
    attn = layer.attention.self
    size, n = attn.attention_head_size, attn.num_attention_heads
    drop = set(heads)
    if not drop:
        return
    if len(drop) >= n:
        raise ValueError(f"cannot remove all {n} heads of a layer")
    keep_heads = [h for h in range(n) if h not in drop]
    index = torch.tensor([h * size + j for h in keep_heads for j in range(size)], dtype=torch.long)
    for name in ("query", "key", "value"):
        setattr(attn, name, _take(getattr(attn, name), index, 0))
    layer.attention.output.dense = _take(layer.attention.output.dense, index, 1)
    attn.num_attention_heads = len(keep_heads)
    attn.all_head_size = len(keep_heads) * size


def remove_neurons(layer: nn.Module, neurons: list[int]) -> None:
    """Physically remove FFN ``neurons`` (intermediate units) from one encoder layer."""
    n = layer.intermediate.dense.out_features
    drop = set(neurons)
    if not drop:
        return
    if len(drop) >= n:
        raise ValueError(f"cannot remove all {n} FFN neurons of a layer")
    index = torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)
    layer.intermediate.dense = _take(layer.intermediate.dense, index, 0)
    layer.output.dense = _take(layer.output.dense, index, 1)


def input_limit(model: Any) -> int | None:
    """The most tokens one input may hold: the position table's size, less the positions it
    reserves (RoBERTa-style tables number positions from ``padding_idx + 1``); None when the
    model has no learned position table (rotary, relative) or is not a torch module."""
    if not isinstance(model, nn.Module):
        return None
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "position_embeddings" and isinstance(module, nn.Embedding):
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0
            return max(module.num_embeddings - offset, 1)
    return None
