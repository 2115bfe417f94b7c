"""8-bit embedding tables: per-row symmetric int8 values plus one float32 scale per row.

``Int8Embedding`` replaces an ``nn.Embedding`` and dequantizes only the rows it gathers
(``int8[ids] * scale[ids]``), so the float table never exists at run time. Exported to ONNX by
the TorchScript tracer it becomes the quantized Gather the graph needs: an int8 initializer and a
per-row scale initializer, ``Gather -> Cast -> Mul(Gather(scale))``; nothing float of the table's
size is left in the file.

Why not ONNX Runtime's own embedding quantization: ``quantize_dynamic`` quantizes a Gather (and
the fused EmbedLayerNormalization, as QEmbedLayerNormalization) with one uint8 scale for the whole
table; rows of very different norms then share one step size. Per-row scales bound every
element's error by ``max|row| / 254`` (see ``quantize_rows``); ``quantize_dynamic`` is kept away
from the scale Gather (``scale_gathers``) so the scales stay float.

Saved by the artifact as ``<module>.weight_q`` (int8) and ``<module>.weight_row_scale``
(float32) in ``model-int8.safetensors`` (see ``lepton.models.int8``); ``restore`` puts the
modules back into a freshly built model before its weights are loaded.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

QUANT = "weight_q"
SCALE = "weight_row_scale"


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per row): symmetric, ``scale = max|row| / 127``, so
    ``|value * scale - weight| <= scale / 2`` element-wise. An all-zero row gets scale 1."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.contiguous()


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with per-row float32 scales (inference only)."""

    def __init__(self, values: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        if values.dtype != torch.int8 or values.ndim != 2 or scale.shape != values.shape[:1]:
            raise ValueError("Int8Embedding needs int8 values [rows, dim] and one scale per row")
        self.register_buffer(QUANT, values.contiguous())
        # Stored [rows, 1]: the gathered scales then broadcast over the hidden size with no reshape.
        self.register_buffer(SCALE, scale.float().reshape(-1, 1).contiguous())
        self.num_embeddings, self.embedding_dim = int(values.shape[0]), int(values.shape[1])
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        q, scale = quantize_rows(embedding.weight)
        return cls(q, scale, embedding.padding_idx).to(embedding.weight.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        scale = getattr(self, SCALE)  # float32, or what a later cast (fp16, bf16) made it
        return getattr(self, QUANT)[input_ids].to(scale.dtype) * scale[input_ids]

    def dequantized(self) -> torch.Tensor:
        """The float table these int8 values stand for (for checks, not for inference)."""
        return getattr(self, QUANT).float() * getattr(self, SCALE)

    def select(self, ids: torch.Tensor, padding_idx: int | None) -> Int8Embedding:
        """A table of only the rows ``ids`` (in that order): vocabulary trimming after quantization."""
        ids = ids.to(getattr(self, QUANT).device)
        return Int8Embedding(getattr(self, QUANT).index_select(0, ids),
                             getattr(self, SCALE).index_select(0, ids).reshape(-1), padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


def int8_embeddings(model: nn.Module) -> dict[str, Int8Embedding]:
    """Name -> Int8Embedding, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8Embedding)}


def has_int8_embeddings(model: Any) -> bool:
    return isinstance(model, nn.Module) and bool(int8_embeddings(model))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _tied_to_output(model: nn.Module, embedding: nn.Embedding) -> bool:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return out is not None and getattr(out, "weight", None) is embedding.weight


def quantize_embeddings(model: nn.Module, patterns: list[str]) -> dict[str, dict[str, Any]]:
    """Replace every ``nn.Embedding`` whose name contains one of ``patterns`` with an
    Int8Embedding; returns name -> {rows, dim, max_abs_error}. A table tied to an output layer
    raises ValueError: the output layer would keep a float copy, and nothing would be saved."""
    chosen = {name: m for name, m in model.named_modules()
              if isinstance(m, nn.Embedding) and any(p in name for p in patterns)}
    done: dict[str, dict[str, Any]] = {}
    for name, embedding in chosen.items():
        if _tied_to_output(model, embedding):
            raise ValueError(f"{name} is tied to the output layer; 8-bit embeddings would leave "
                             "a float copy there (quantize the output Linear instead)")
        new = Int8Embedding.from_embedding(embedding)
        error = float((new.dequantized() - embedding.weight.detach().float()).abs().max())
        _set_module(model, name, new)
        done[name] = {"rows": new.num_embeddings, "dim": new.embedding_dim, "max_abs_error": error}
    return done


def restore(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Put an Int8Embedding wherever ``tensors`` (a saved state) holds ``<name>.weight_q``, so
    the state then loads strictly; returns the names."""
    names = sorted(k[: -len("." + QUANT)] for k in tensors if k.endswith("." + QUANT))
    modules = dict(model.named_modules())
    for name in names:
        old = modules.get(name)
        if not isinstance(old, nn.Embedding):
            raise ValueError(f"{name} is not an embedding of this model")
        values, scale = tensors[f"{name}.{QUANT}"], tensors.get(f"{name}.{SCALE}")
        if scale is None:
            raise ValueError(f"{name}.{SCALE} is missing")
        _set_module(model, name, Int8Embedding(values, scale.reshape(-1), old.padding_idx))
    return names


def counts(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) int8 values of the model's 8-bit tables (buffers, not parameters)."""
    total = nonzero = 0
    for m in int8_embeddings(model).values():
        values = getattr(m, QUANT)
        total += values.numel()
        nonzero += int(torch.count_nonzero(values))
    return total, nonzero


def scale_gathers(model_proto: Any) -> list[str]:
    """ONNX node names of the Gathers that read an 8-bit table's row scales (float initializers
    ONNX Runtime's quantize_dynamic would otherwise quantize too)."""
    inits = {i.name: i for i in model_proto.graph.initializer}
    int8 = 3  # onnx.TensorProto.INT8
    int8_gather_outputs = {n.output[0] for n in model_proto.graph.node
                           if n.op_type == "Gather" and n.input[0] in inits and inits[n.input[0]].data_type == int8}
    cast_outputs = {n.output[0] for n in model_proto.graph.node
                    if n.op_type == "Cast" and n.input[0] in int8_gather_outputs}
    producers = {o: n for n in model_proto.graph.node for o in n.output}
    names = []
    for n in model_proto.graph.node:
        if n.op_type != "Mul" or not any(i in cast_outputs for i in n.input):
            continue
        for i in n.input:
            p = producers.get(i)
            if p is not None and p.op_type == "Gather" and p.input[0] in inits:
                names.append(p.name)
    return names
