"""Compression helpers for decoder-only models: drop decoder layers, physically prune FFN
neurons, and the token-level distillation loss.

Decoders keep their layers and FFNs under a handful of layouts, described here as data and found by
probing the model's structure (no branching on a model type's name):

- the layer stack: ``model.layers`` (Llama, Mistral, Qwen2/3, Gemma, SmolLM2, Phi, Phi-3, StableLM),
  ``transformer.h`` (GPT-2, GPT-J, Falcon), ``gpt_neox.layers`` (GPT-NeoX, Pythia),
  ``model.decoder.layers`` (OPT);
- the FFN: gated with separate projections (``gate_proj``/``up_proj``/``down_proj``), gated with
  gate and up fused in one matrix (Phi-3's ``gate_up_proj``), or plain (two projections around an
  activation: ``fc1``/``fc2`` for Phi and OPT, ``c_fc``/``c_proj`` for GPT-2 whose ``Conv1D`` keeps
  its weight transposed, ``dense_h_to_4h``/``dense_4h_to_h`` for GPT-NeoX and Falcon,
  ``fc_in``/``fc_out`` for GPT-J);
- the config field that states the FFN width (``intermediate_size``, ``ffn_dim``,
  ``ffn_hidden_size``, ``n_inner``).

A new layout joins by adding a row to :data:`STACKS` or :data:`FFNS`. The result stays a plain
model that ``save_pretrained`` / ``from_pretrained`` round-trip: layer drop updates the layer count
(and the per-layer lists some configs carry) and renumbers ``layer_idx`` so the KV cache addresses
the kept layers; FFN pruning keeps the same number of neurons in every layer so one width field
still describes the model.

No library does these on transformers 5 decoders (``torch.nn.utils.prune`` only masks weights;
``transformers``' ``prune_heads`` covers some encoders' attention heads), so they are written here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lepton.core.errors import StageError

log = logging.getLogger(__name__)

# Config fields holding one entry per decoder layer (trimmed with the layers).
_PER_LAYER_FIELDS = ("layer_types", "sliding_window_pattern_list", "no_rope_layers")
# Where decoder-only models keep their layer stack, tried in order.
STACKS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
# Config fields that state the FFN width, tried in order (the first the config has is the one).
WIDTH_FIELDS = ("intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner")


@dataclass(frozen=True)
class FfnLayout:
    """One way a decoder layer holds its FFN: ``inputs`` project the hidden state to the FFN's
    neurons (each holding ``blocks`` neuron blocks side by side: 2 where gate and up are fused),
    ``output`` projects them back. ``at`` is the FFN's attribute on the layer ('' for the layer)."""

    kind: str
    at: str
    inputs: tuple[str, ...]
    output: str
    blocks: int = 1


FFNS = (
    FfnLayout("gated", "mlp", ("gate_proj", "up_proj"), "down_proj"),
    FfnLayout("gated, gate and up fused", "mlp", ("gate_up_proj",), "down_proj", blocks=2),
    FfnLayout("plain", "mlp", ("fc1",), "fc2"),
    FfnLayout("plain", "", ("fc1",), "fc2"),
    FfnLayout("plain", "mlp", ("c_fc",), "c_proj"),
    FfnLayout("plain", "mlp", ("dense_h_to_4h",), "dense_4h_to_h"),
    FfnLayout("plain", "mlp", ("fc_in",), "fc_out"),
    # T5 blocks: the FFN is the block's last sub-layer (plain wi/wo, or gated wi_0/wi_1 in v1.1)
    FfnLayout("plain", "layer.-1.DenseReluDense", ("wi",), "wo"),
    FfnLayout("gated", "layer.-1.DenseReluDense", ("wi_0", "wi_1"), "wo"),
)


@dataclass(frozen=True)
class Stack:
    """One layer stack of a model: where it is, the config field with its layer count, and the
    config fields that may state its FFN width (the first the config has is the one)."""

    name: str
    paths: tuple[str, ...]
    count_field: tuple[str, ...]
    width_fields: tuple[str, ...]


# Encoder-decoder models keep two stacks (BART/Marian: model.encoder.layers, T5: encoder.block).
SEQ2SEQ_STACKS = (
    Stack("encoder", ("model.encoder.layers", "encoder.block"), ("encoder_layers", "num_layers"),
          ("encoder_ffn_dim", "d_ff")),
    Stack("decoder", ("model.decoder.layers", "decoder.block"), ("decoder_layers", "num_decoder_layers"),
          ("decoder_ffn_dim", "d_ff")),
)


class CompressError(StageError):
    """A compression setting does not fit the model (layer index, keep count ...)."""


def _get(obj: Any, path: str) -> Any:
    for name in path.split(".") if path else ():
        if name.lstrip("-").isdigit() and isinstance(obj, nn.ModuleList):
            obj = obj[int(name)] if -len(obj) <= int(name) < len(obj) else None
        else:
            obj = getattr(obj, name, None)
    return obj


def stack_path(model: nn.Module) -> str:
    """The attribute path of the model's decoder layer list (one of :data:`STACKS`)."""
    for path in STACKS:
        if isinstance(_get(model, path), nn.ModuleList):
            return path
    raise CompressError(f"{type(model).__name__}: no decoder layer stack found (looked for "
                        f"{', '.join(STACKS)})")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = _get(model, stack_path(model))
    assert isinstance(layers, nn.ModuleList)
    return layers


def _is_projection(module: Any) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def ffn_layout(layer: nn.Module) -> FfnLayout:
    """The layout of ``layer``'s FFN (one of :data:`FFNS`)."""
    for layout in FFNS:
        mlp = _get(layer, layout.at)
        if mlp is not None and all(_is_projection(getattr(mlp, n, None)) for n in (*layout.inputs, layout.output)):
            return layout
    raise CompressError(f"{type(layer).__name__}: no FFN of a known layout (gated gate/up/down, fused "
                        "gate_up/down, or two projections fc1/fc2, c_fc/c_proj, dense_h_to_4h/dense_4h_to_h, "
                        "fc_in/fc_out)")


def describe_structure(model: nn.Module) -> dict[str, Any]:
    """What the compression stages found: the layer stack, the FFN layout and its width field."""
    layers = decoder_layers(model)
    out: dict[str, Any] = {"layer_stack": stack_path(model), "layers": len(layers)}
    try:
        layout = ffn_layout(layers[0])
        out["ffn"] = layout.kind
        out["ffn_width_field"] = _width_field(model.config)
    except CompressError:
        out["ffn"] = None
    return out


def drop_decoder_layers(model: nn.Module, drop: Sequence[int]) -> dict[str, Any]:
    """Remove the decoder layers at indices ``drop`` (negative indices count from the end)."""
    return _drop(model, stack_path(model), drop, ("num_hidden_layers",), "decoder")  # GPT-2/GPT-J map it to n_layer


def _drop(model: nn.Module, path: str, drop: Sequence[int], count_fields: Sequence[str], what: str) -> dict[str, Any]:
    layers = _get(model, path)
    n = len(layers)
    wanted = sorted({i % n if -n <= i < n else i for i in drop})
    bad = [i for i in wanted if not 0 <= i < n]
    if bad:
        raise CompressError(f"drop: layer indices {bad} out of range for {n} {what} layers")
    keep = [i for i in range(n) if i not in wanted]
    if not keep:
        raise CompressError(f"drop: dropping all {n} {what} layers leaves no model")
    if 0 in wanted and any(getattr(m, "has_relative_attention_bias", False) for m in layers[0].modules()):
        raise CompressError(f"drop: {what} layer 0 holds the relative position bias every layer uses (T5); keep it")
    parent, _, name = path.rpartition(".")
    kept = nn.ModuleList(layers[i] for i in keep)
    setattr(_get(model, parent), name, kept)
    for new_idx, layer in enumerate(kept):
        # The cache is indexed by layer_idx: a kept layer must address slot new_idx, not its old one.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config: Any = model.config
    present = config.to_dict()
    field = next((f for f in count_fields if f in present), count_fields[0])
    setattr(config, field, len(keep))
    for per_layer in _PER_LAYER_FIELDS:
        value = getattr(config, per_layer, None)
        if isinstance(value, (list, tuple)) and len(value) == n:
            setattr(config, per_layer, [value[i] for i in keep])
    log.info("dropped %s layers %s: %d -> %d", what, wanted, n, len(keep))
    return {"dropped": wanted, "kept": keep, "layers_before": n, "layers_after": len(keep)}


def seq2seq_stack(model: nn.Module, stack: Stack) -> str:
    """The attribute path of an encoder-decoder model's ``stack`` (encoder or decoder)."""
    for path in stack.paths:
        if isinstance(_get(model, path), nn.ModuleList):
            return path
    raise CompressError(f"{type(model).__name__}: no {stack.name} layer stack found (looked for "
                        f"{', '.join(stack.paths)})")


def seq2seq_layers(model: nn.Module, stack: Stack) -> nn.ModuleList:
    layers = _get(model, seq2seq_stack(model, stack))
    assert isinstance(layers, nn.ModuleList)
    return layers


def drop_seq2seq_layers(model: nn.Module, stack: Stack, drop: Sequence[int]) -> dict[str, Any]:
    """Remove the layers at indices ``drop`` from an encoder-decoder model's ``stack``."""
    path = seq2seq_stack(model, stack)
    return {"layer_stack": path, **_drop(model, path, drop, stack.count_field, stack.name)}


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


def _width_field(config: Any) -> str:
    for field in WIDTH_FIELDS:
        if field in config.to_dict():
            return field
    raise CompressError(f"{type(config).__name__}: no config field states the FFN width "
                        f"(looked for {', '.join(WIDTH_FIELDS)}), so a pruned model could not be reloaded")


@dataclass
class _Ffn:
    """One layer's FFN under its layout, with the shape conventions of its projections (``Conv1D``
    keeps ``(in, out)``, ``nn.Linear`` ``(out, in)``)."""

    module: Any
    layout: FfnLayout

    @staticmethod
    def out_dim(proj: Any) -> int:
        return 0 if isinstance(proj, nn.Linear) else 1

    def inputs(self) -> list[Any]:
        return [getattr(self.module, n) for n in self.layout.inputs]

    @property
    def output(self) -> Any:
        return getattr(self.module, self.layout.output)

    @property
    def width(self) -> int:
        first = self.inputs()[0]
        return int(first.weight.shape[self.out_dim(first)]) // self.layout.blocks

    def output_column_norms(self) -> torch.Tensor:
        """Per neuron, the norm of its weights in the output projection (its contribution)."""
        out = self.output
        return out.weight.float().norm(dim=self.out_dim(out))

    def input_row_norms(self) -> torch.Tensor:
        """Per neuron, the product of its weight norms in every input projection and block."""
        score = torch.ones(self.width)
        for proj in self.inputs():
            norms = proj.weight.float().norm(dim=1 - self.out_dim(proj))
            for block in norms.reshape(self.layout.blocks, self.width):
                score = score * block
        return score

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the neurons at ``index`` (sorted), removing the others physically."""
        rows = torch.cat([index + b * self.width for b in range(self.layout.blocks)])
        for name in self.layout.inputs:
            proj = getattr(self.module, name)
            setattr(self.module, name, _select(proj, rows, self.out_dim(proj), outputs=True))
        out = self.output
        setattr(self.module, self.layout.output, _select(out, index, 1 - self.out_dim(out), outputs=False))
        if hasattr(self.module, "intermediate_size"):
            self.module.intermediate_size = len(index)


def _ffns(model: nn.Module) -> list[_Ffn]:
    return _ffns_of(decoder_layers(model))


def _ffns_of(layers: Sequence[nn.Module]) -> list[_Ffn]:
    out = []
    for layer in layers:
        layout = ffn_layout(layer)
        out.append(_Ffn(_get(layer, layout.at), layout))
    return out


def _select(proj: Any, index: torch.Tensor, dim: int, *, outputs: bool) -> Any:
    """A copy of ``proj`` (same class: ``nn.Linear``, a subclass of it, or ``Conv1D``) keeping the
    slices ``index`` of its weight along ``dim``; a bias follows when the kept slices are outputs."""
    weight = proj.weight.detach().index_select(dim, index.to(proj.weight.device)).clone()
    bias = getattr(proj, "bias", None)
    new = copy.deepcopy(proj)
    new.weight = nn.Parameter(weight, requires_grad=proj.weight.requires_grad)
    if bias is not None and outputs:
        new.bias = nn.Parameter(bias.detach().index_select(0, index.to(bias.device)).clone(),
                                requires_grad=bias.requires_grad)
    if isinstance(proj, nn.Linear):
        new.out_features, new.in_features = weight.shape
    else:  # Conv1D: weight (nx, nf)
        new.nx, new.nf = weight.shape
    return new


@torch.no_grad()
def ffn_importance(model: nn.Module, input_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, one score per FFN neuron. With data: the mean magnitude of the neuron's value at
    the output projection's input (act(gate)·up, or act(fc1)) on the real tokens, times the norm
    of its output weights (its contribution to the output); without data: the product of its
    input and output weight norms."""
    ffns = _ffns(model)
    out_norms = [f.output_column_norms() for f in ffns]
    if input_ids is None:
        return [f.input_row_norms() * d for f, d in zip(ffns, out_norms)]
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    sums = [torch.zeros_like(d) for d in out_norms]
    hooks = []
    for i, f in enumerate(ffns):
        def grab(_: nn.Module, args: tuple[torch.Tensor, ...], i: int = i) -> None:
            x = args[0]  # the output projection's input; OPT flattens batch and time before its FFN
            sums[i] += x.reshape(-1, x.shape[-1])[mask.reshape(-1).bool()].abs().float().sum(0)
        hooks.append(f.output.register_forward_pre_hook(grab))
    try:
        model.eval()
        model(input_ids=input_ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    tokens = max(int(mask.sum()), 1)
    return [s / tokens * d for s, d in zip(sums, out_norms)]


@torch.no_grad()
def prune_ffn(model: nn.Module, keep: float, scores: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """Keep the ``keep`` most important FFN neurons in every layer (an int, or a fraction of the
    FFN width): their input rows (gate and up, or the first projection) and output columns stay,
    the others are removed physically."""
    ffns = _ffns(model)
    scores = list(scores) if scores is not None else ffn_importance(model)
    return _prune(model, ffns, _width_field(model.config), keep, scores)


def _prune(model: nn.Module, ffns: list[_Ffn], field: str, keep: float,
           scores: Sequence[torch.Tensor]) -> dict[str, Any]:
    width = ffns[0].width
    count = int(round(keep * width)) if isinstance(keep, float) else int(keep)
    if not 1 <= count <= width:
        raise CompressError(f"prune: keep must leave between 1 and {width} FFN neurons per layer, got {keep!r}")
    if len(scores) != len(ffns):
        raise CompressError(f"prune: {len(scores)} score vectors for {len(ffns)} layers")
    before = sum(p.numel() for p in model.parameters())
    for f, score in zip(ffns, scores):
        f.keep(torch.topk(score.float(), count).indices.sort().values)
    setattr(model.config, field, count)
    after = sum(p.numel() for p in model.parameters())
    log.info("pruned FFN %d -> %d neurons per layer: %d -> %d parameters", width, count, before, after)
    return {"intermediate_before": width, "intermediate_after": count, "params_before": before,
            "params_after": after, "ffn": ffns[0].layout.kind, "width_field": field}


def _stack_width_field(config: Any, stack: Stack) -> str:
    present = config.to_dict()
    field = next((f for f in stack.width_fields if f in present), None)
    if field is None:
        raise CompressError(f"{type(config).__name__}: no config field states the {stack.name} FFN width "
                            f"(looked for {', '.join(stack.width_fields)})")
    return field


@torch.no_grad()
def seq2seq_ffn_importance(model: nn.Module,
                           batch: dict[str, torch.Tensor] | None = None) -> dict[str, list[torch.Tensor]]:
    """Per stack and layer, one score per FFN neuron, as :func:`ffn_importance`; with a ``batch``
    (input_ids, attention_mask, labels) the encoder's activations count on the real input tokens
    and the decoder's on the target tokens (labels != -100)."""
    stacks = {st.name: _ffns_of(seq2seq_layers(model, st)) for st in SEQ2SEQ_STACKS}
    norms = {name: [f.output_column_norms() for f in ffns] for name, ffns in stacks.items()}
    if batch is None:
        return {name: [f.input_row_norms() * d for f, d in zip(ffns, norms[name])] for name, ffns in stacks.items()}
    masks = {"encoder": batch["attention_mask"].bool(), "decoder": batch["labels"] != -100}
    sums = {name: [torch.zeros_like(d) for d in ds] for name, ds in norms.items()}
    hooks = []
    for name, ffns in stacks.items():
        for i, f in enumerate(ffns):
            def grab(_: nn.Module, args: tuple[torch.Tensor, ...], name: str = name, i: int = i) -> None:
                x = args[0]
                sums[name][i] += x.reshape(-1, x.shape[-1])[masks[name].reshape(-1)].abs().float().sum(0)
            hooks.append(f.output.register_forward_pre_hook(grab))
    try:
        model.eval()
        model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return {name: [s / max(int(masks[name].sum()), 1) * d for s, d in zip(sums[name], norms[name])]
            for name in stacks}


@torch.no_grad()
def prune_seq2seq_ffn(model: nn.Module, keep: float,
                      scores: dict[str, Sequence[torch.Tensor]] | None = None) -> dict[str, Any]:
    """:func:`prune_ffn` for both stacks of an encoder-decoder model (each with its own width
    field; T5's one ``d_ff`` describes both, so both keep the same count)."""
    scores = scores if scores is not None else seq2seq_ffn_importance(model)
    out: dict[str, Any] = {}
    fields: dict[str, int] = {}
    for st in SEQ2SEQ_STACKS:
        ffns = _ffns_of(seq2seq_layers(model, st))
        field = _stack_width_field(model.config, st)
        if field in fields and ffns[0].width != fields[field]:
            raise CompressError(f"prune: {field} describes both stacks, but their FFNs differ in width")
        fields[field] = ffns[0].width
        out[st.name] = _prune(model, ffns, field, keep, list(scores[st.name]))
    return out


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
