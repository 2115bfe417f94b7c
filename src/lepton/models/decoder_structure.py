"""Compression helpers for decoder-only (Llama-style) models: drop decoder layers, physically prune
SwiGLU FFN neurons, and the token-level distillation loss.

They work on a plain transformers ``AutoModelForCausalLM`` whose layers sit in
``model.model.layers`` with ``self_attn`` and a gated ``mlp`` (``gate_proj``, ``up_proj``,
``down_proj``): Llama, Mistral, Qwen2/3, SmolLM2, Gemma ... The result stays a plain model that
``save_pretrained`` / ``from_pretrained`` round-trip: layer drop updates ``num_hidden_layers`` (and
the per-layer lists some configs carry) and renumbers ``layer_idx`` so the KV cache addresses the
kept layers; FFN pruning keeps the same number of neurons in every layer so one
``intermediate_size`` still describes the model.

No library does these on transformers 5 decoders (``torch.nn.utils.prune`` only masks weights;
``transformers``' ``prune_heads`` covers some encoders' attention heads), so they are written here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lepton.core.errors import StageError

log = logging.getLogger(__name__)

# Config fields holding one entry per decoder layer (trimmed with the layers).
_PER_LAYER_FIELDS = ("layer_types", "sliding_window_pattern_list", "no_rope_layers")


class CompressError(StageError):
    """A compression setting does not fit the model (layer index, keep count ...)."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise CompressError(f"{type(model).__name__}: no decoder stack at model.layers (not a Llama-style decoder)")
    return layers


def drop_decoder_layers(model: nn.Module, drop: Sequence[int]) -> dict[str, Any]:
    """Remove the decoder layers at indices ``drop`` (negative indices count from the end)."""
    layers = decoder_layers(model)
    n = len(layers)
    wanted = sorted({i % n if -n <= i < n else i for i in drop})
    bad = [i for i in wanted if not 0 <= i < n]
    if bad:
        raise CompressError(f"drop: layer indices {bad} out of range for {n} decoder layers")
    keep = [i for i in range(n) if i not in wanted]
    if not keep:
        raise CompressError(f"drop: dropping all {n} decoder layers leaves no model")
    model.model.layers = nn.ModuleList(layers[i] for i in keep)
    for new_idx, layer in enumerate(model.model.layers):
        # The cache is indexed by layer_idx: a kept layer must address slot new_idx, not its old one.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config = model.config
    config.num_hidden_layers = len(keep)
    for name in _PER_LAYER_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == n:
            setattr(config, name, [value[i] for i in keep])
    log.info("dropped decoder layers %s: %d -> %d", wanted, n, len(keep))
    return {"dropped": wanted, "kept": keep, "layers_before": n, "layers_after": len(keep)}


@torch.no_grad()
def layer_importance(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[float]:
    """Per decoder layer, 1 - mean cosine similarity of its input and output hidden states over the
    real tokens (the "block influence" of ShortGPT): the lowest change the representation least."""
    model.eval()
    hidden = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    real = attention_mask.bool()
    scores = []
    for before, after in zip(hidden[:-1], hidden[1:]):
        cos = nn.functional.cosine_similarity(before[real].float(), after[real].float(), dim=-1)
        scores.append(float(1 - cos.mean()))
    # hidden_states[-1] has the final norm applied in most models: the last layer's score uses it.
    return scores


def least_important_layers(scores: Sequence[float], count: int, *, protect: Sequence[int] = (0,)) -> list[int]:
    """The ``count`` layers with the lowest scores, never those in ``protect`` (the first, by default)."""
    order = [i for i in sorted(range(len(scores)), key=lambda i: scores[i]) if i not in protect]
    if count > len(order):
        raise CompressError(f"drop: cannot drop {count} of {len(scores)} layers with {list(protect)} protected")
    return sorted(order[:count])


def _ffn(layer: nn.Module) -> nn.Module:
    mlp = getattr(layer, "mlp", None)
    if mlp is None or not all(isinstance(getattr(mlp, n, None), nn.Linear)
                              for n in ("gate_proj", "up_proj", "down_proj")):
        raise CompressError(f"{type(layer).__name__}: no gated FFN (mlp.gate_proj/up_proj/down_proj)")
    return mlp


@torch.no_grad()
def ffn_importance(model: nn.Module, input_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, one score per FFN neuron. With data: mean |act(gate)·up| on the real tokens times
    the norm of the neuron's ``down_proj`` column (its contribution to the output); without data:
    the product of its gate row, up row and down column norms."""
    mlps = [_ffn(layer) for layer in decoder_layers(model)]
    down_norms = [m.down_proj.weight.float().norm(dim=0) for m in mlps]
    if input_ids is None:
        return [m.gate_proj.weight.float().norm(dim=1) * m.up_proj.weight.float().norm(dim=1) * d
                for m, d in zip(mlps, down_norms)]
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    sums = [torch.zeros_like(d) for d in down_norms]
    hooks = []
    for i, m in enumerate(mlps):
        def grab(_: nn.Module, args: tuple[torch.Tensor, ...], i: int = i) -> None:
            sums[i] += args[0][mask.bool()].abs().float().sum(0)  # down_proj's input: act(gate)*up
        hooks.append(m.down_proj.register_forward_pre_hook(grab))
    try:
        model.eval()
        model(input_ids=input_ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    tokens = max(int(mask.sum()), 1)
    return [s / tokens * d for s, d in zip(sums, down_norms)]


def _keep_rows(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index).clone()
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        bias = linear.bias.detach() if dim == 1 else linear.bias.detach().index_select(0, index)
        new.bias.data.copy_(bias)
    return new


@torch.no_grad()
def prune_ffn(model: nn.Module, keep: float, scores: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """Keep the ``keep`` most important FFN neurons in every layer (an int, or a fraction of
    ``intermediate_size``): gate/up rows and the matching down columns are removed physically."""
    mlps = [_ffn(layer) for layer in decoder_layers(model)]
    width = mlps[0].gate_proj.out_features
    count = int(round(keep * width)) if isinstance(keep, float) else int(keep)
    if not 1 <= count <= width:
        raise CompressError(f"prune: keep must leave between 1 and {width} FFN neurons per layer, got {keep!r}")
    scores = list(scores) if scores is not None else ffn_importance(model)
    if len(scores) != len(mlps):
        raise CompressError(f"prune: {len(scores)} score vectors for {len(mlps)} layers")
    before = sum(p.numel() for p in model.parameters())
    for m, score in zip(mlps, scores):
        index = torch.topk(score.float(), count).indices.sort().values.to(m.gate_proj.weight.device)
        m.gate_proj = _keep_rows(m.gate_proj, index, 0)
        m.up_proj = _keep_rows(m.up_proj, index, 0)
        m.down_proj = _keep_rows(m.down_proj, index, 1)
        if hasattr(m, "intermediate_size"):
            m.intermediate_size = count
    model.config.intermediate_size = count
    after = sum(p.numel() for p in model.parameters())
    log.info("pruned FFN %d -> %d neurons per layer: %d -> %d parameters", width, count, before, after)
    return {"intermediate_before": width, "intermediate_after": count, "params_before": before, "params_after": after}


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
                  *, temperature: float = 2.0, ignore_index: int = -100) -> torch.Tensor:
    """Token-level distillation: KL(teacher || student) of the next-token distributions at
    ``temperature``, times temperature² (so gradients keep their scale), averaged over the target
    tokens. ``labels`` as for a causal-LM loss (same shape as the inputs, ``ignore_index`` where no
    loss: prompt and padding); logits at position t are scored where ``labels[t + 1]`` is a target.
    Without labels every position counts."""
    if student_logits.shape != teacher_logits.shape:
        raise CompressError(f"distill: student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ (the same tokenizer is needed)")
    if temperature <= 0:
        raise CompressError(f"distill: temperature must be > 0, got {temperature}")
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    if labels is not None:
        s, t = s[:, :-1], t[:, :-1]
        keep = labels[:, 1:] != ignore_index
        s, t = s[keep], t[keep]
    else:
        s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0  # no target token in the batch: no signal, keeps the graph
    kl = nn.functional.kl_div(nn.functional.log_softmax(s, -1), nn.functional.log_softmax(t, -1),
                              log_target=True, reduction="batchmean")
    return kl * temperature**2


def hidden_state_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                      layer_map: Sequence[tuple[int, int]], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between mapped hidden states (student index, teacher index), on real
    tokens; an optional addition to :func:`token_kd_loss` when the widths match."""
    losses = []
    for si, ti in layer_map:
        a, b = student_hidden[si].float(), teacher_hidden[ti].float()
        if a.shape != b.shape:
            raise CompressError(f"distill: hidden states {si} and {ti} differ in shape "
                                f"{tuple(a.shape)} vs {tuple(b.shape)}")
        if attention_mask is not None:
            a, b = a[attention_mask.bool()], b[attention_mask.bool()]
        losses.append(nn.functional.mse_loss(a, b))
    return torch.stack(losses).mean()
