"""PyTorch dynamic INT8 (``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear``) and how such
a model is saved and loaded.

A dynamically quantized Linear keeps its weight as packed int8 (fbgemm/x86 format) that
safetensors cannot hold. Lepton saves the int8 values themselves: for each quantized Linear
``<name>.weight_int8`` (int8), ``<name>.weight_scale`` (float64, one per output channel or one in
all), ``<name>.weight_zero_point`` (int64) and ``<name>.bias`` (float32), with every other weight
as it is, in ``model-int8.safetensors``. Loading builds the float model from its config, quantizes
the same Linears and puts the saved int8 weights back, so the reloaded model computes exactly what
the saved one did. The file is int8 on disk (embeddings and LayerNorms stay float32, unless
``quantize_embeddings`` made the tables int8: ``lepton.models.int8_embedding``, in this same file) and
loads only through Lepton: plain transformers finds no ``model.safetensors`` and says so.

``torch.ao.quantization`` works in torch 2.13 but warns that it will be removed (torchao is its
successor); the warnings are silenced here, the fact is in the stage summary.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

INT8_FILE = "model-int8.safetensors"
_SUFFIXES = (".weight_int8", ".weight_scale", ".weight_zero_point", ".bias")


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _dynamic_linear_type() -> type:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> dynamically quantized Linear, in module order."""
    qtype = _dynamic_linear_type()
    return {name: m for name, m in model.named_modules() if isinstance(m, qtype)}


def is_dynamic_int8(model: Any) -> bool:
    return isinstance(model, nn.Module) and bool(quantized_linears(model))


def linear_names(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Names of the float Linears to quantize: all but those containing an ``exclude`` pattern."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(p in name for p in exclude)]


def quantize_dynamic_int8(model: nn.Module, names: list[str], *, per_channel: bool) -> nn.Module:
    """Quantize the Linears called ``names`` in place (int8 weights, activations quantized per
    call); returns the model."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with _quiet():
        return quantize_dynamic(model.cpu().float().eval(), {n: qconfig for n in names},
                                dtype=torch.qint8, inplace=True)


def int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model, quantized Linears as int8 values + scales + zero points."""
    qlinears = quantized_linears(model)
    prefixes = tuple(name + "." for name in qlinears)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor) and not k.startswith(prefixes)}
    for name, module in qlinears.items():
        with _quiet():
            weight, bias = module._packed_params._weight_bias()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            if weight.q_per_channel_axis() != 0:
                raise ValueError(f"{name}: per-channel axis {weight.q_per_channel_axis()} (expected 0)")
            scale = weight.q_per_channel_scales().to(torch.float64)
            zero = weight.q_per_channel_zero_points().to(torch.int64)
        else:
            scale = torch.tensor([weight.q_scale()], dtype=torch.float64)
            zero = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        state[f"{name}.weight_int8"] = weight.int_repr().contiguous()
        state[f"{name}.weight_scale"] = scale.contiguous()
        state[f"{name}.weight_zero_point"] = zero.contiguous()
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().clone().contiguous()
    return state


def structure(model: nn.Module) -> dict[str, Any] | None:
    """``lepton.models.structure.describe`` for a model whose Linears may be quantized (which
    ``describe`` does not recognise as Linear layers)."""
    from lepton.models.structure import STRUCTURE_FORMAT, layer_list

    layers = layer_list(model)
    if layers is None:
        return None
    heads = [int(layer.attention.self.num_attention_heads) for layer in layers]
    ffn = [int(layer.intermediate.dense.out_features) for layer in layers]
    config = model.config
    if all(h == config.num_attention_heads for h in heads) and all(f == config.intermediate_size for f in ffn):
        return None
    return {"format": STRUCTURE_FORMAT, "num_attention_heads": heads, "intermediate_size": ffn}


def save_int8(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(int8_state(model), str(folder / INT8_FILE), metadata={"format": "pt", "lepton": "dynamic_int8"})


def size_bytes(model: nn.Module) -> int:
    """Bytes of the int8 file this model saves as."""
    from safetensors.torch import save

    return len(save(int8_state(model)))


def counts(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) weights: float parameters plus each quantized Linear's int8 weight and bias."""
    tensors = [p.detach() for p in model.parameters()]
    tensors += [m.weight_q for m in _int8_tables(model)]
    for module in quantized_linears(model).values():
        with _quiet():
            weight, bias = module._packed_params._weight_bias()
        tensors.append(weight.int_repr())
        if bias is not None:
            tensors.append(bias.detach())
    return sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors)


def _int8_tables(model: nn.Module) -> list[nn.Module]:
    from lepton.models.int8_embedding import int8_embeddings

    return list(int8_embeddings(model).values())


def load_int8(model: nn.Module, folder: Path) -> nn.Module:
    """Quantize the freshly built float ``model`` like the saved one, then load its weights."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / INT8_FILE))
    names = sorted({k[: -len(".weight_int8")] for k in tensors if k.endswith(".weight_int8")})
    modules = dict(model.named_modules())
    unknown = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if unknown:
        raise ValueError(f"{INT8_FILE}: {unknown[0]} is not a Linear layer of this model")
    from lepton.models import int8_embedding

    int8_embedding.restore(model, tensors)  # 8-bit embedding tables, so their tensors load below
    prefixes = tuple(n + "." for n in names)
    rest = {k: v for k, v in tensors.items() if not (k.startswith(prefixes) and k.endswith(_SUFFIXES))}
    missing, unexpected = model.load_state_dict(rest, strict=False)  # float parts, before quantizing
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise ValueError(f"{INT8_FILE}: weights do not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if not names:  # only 8-bit embeddings
        return model.eval()
    quantize_dynamic_int8(model, names, per_channel=False)  # the saved int8 weights replace these
    qlinears = quantized_linears(model)
    for name, module in qlinears.items():
        values = tensors[f"{name}.weight_int8"]
        scale, zero = tensors[f"{name}.weight_scale"], tensors[f"{name}.weight_zero_point"]
        with _quiet():
            if scale.numel() > 1:  # per output channel
                weight = torch._make_per_channel_quantized_tensor(values, scale, zero, 0)
            else:
                weight = torch._make_per_tensor_quantized_tensor(values, float(scale[0]), int(zero[0]))
            module.set_weight_bias(weight, tensors.get(f"{name}.bias"))
    return model.eval()
