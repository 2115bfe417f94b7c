"""Weight-only quantized linear layers for PyTorch: int8 per output channel or int4 per group,
dequantized at each call (the model stays a transformers model; written by
``lepton.stages.quantize.weight_only.quantize_linears``)."""

from __future__ import annotations

import torch
from torch import nn

from lepton.core.errors import StageError


class QuantizeError(StageError):
    """A quantization setting is out of range or the model cannot be quantized as asked."""


class WeightOnlyLinear(nn.Module):
    """``nn.Linear`` with int8 (per output channel, symmetric) or int4 (per ``group_size`` input
    channels, asymmetric: code * scale + minimum) weights, dequantized at each call."""

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        groups = in_features // group_size
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.zeros(out_features, groups))
            self.register_buffer("minimums", torch.zeros(0))
        else:  # two 4-bit codes per byte
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.zeros(out_features, groups))
            self.register_buffer("minimums", torch.zeros(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int, group_size: int | None) -> WeightOnlyLinear:
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        group = group_size or in_f
        if in_f % group:
            raise QuantizeError(f"group_size {group} does not divide in_features {in_f}")
        layer = cls(in_f, out_f, bits=bits, group_size=group, bias=linear.bias is not None)
        g = w.reshape(out_f, in_f // group, group)
        if bits == 8:
            scale = g.abs().amax(-1).clamp(min=1e-8) / 127
            layer.qweight.copy_(torch.round(g / scale[..., None]).clamp(-127, 127).to(torch.int8).reshape(out_f, in_f))
        else:
            low, high = g.amin(-1), g.amax(-1)
            scale = (high - low).clamp(min=1e-8) / 15
            codes = (torch.round((g - low[..., None]) / scale[..., None])
                     .clamp(0, 15).to(torch.uint8).reshape(out_f, in_f))
            layer.qweight.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))
            layer.minimums.copy_(low)
        layer.scales.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def dequantized(self) -> torch.Tensor:
        if self.bits == 8:
            codes = self.qweight.float()
        else:
            codes = torch.stack([self.qweight & 15, self.qweight >> 4], dim=-1).reshape(self.out_features, -1).float()
        g = codes.reshape(self.out_features, -1, self.group_size) * self.scales[..., None]
        if self.bits == 4:
            g = g + self.minimums[..., None]
        return g.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized().to(x.dtype),
                                    None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group_size={self.group_size}"


def matmulnbits_roundtrip(weight: torch.Tensor, *, block_size: int = 32) -> torch.Tensor:
    """``weight`` (an ``nn.Linear`` weight, ``(out, in)``) as ONNX Runtime's 4-bit ``MatMulNBits``
    will compute with it: quantized by onnxruntime's own round-to-nearest kernel (asymmetric, one
    scale and zero point per ``block_size`` inputs; what ``quantize: weight_only`` writes) and
    dequantized. Quantizing the result again gives the same codes, so a model trained on these
    values deploys exactly as trained."""
    import numpy as np
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    w = weight.detach().float().cpu().numpy().T.copy()  # MatMul orientation: (K inputs, N outputs)
    k, n = w.shape
    blocks = (k + block_size - 1) // block_size
    if blocks * block_size != k:
        w = np.pad(w, ((0, blocks * block_size - k), (0, 0)))
    packed = np.zeros((n, blocks, block_size // 2), np.uint8)
    zero = np.zeros((n, (blocks + 1) // 2), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    quantize_matmul_4bits(packed, w, scales, zero, block_size, n, k, False)
    codes = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, blocks, block_size).astype(np.float32)
    zeros = np.stack([zero & 0x0F, zero >> 4], -1).reshape(n, -1)[:, :blocks].astype(np.float32)
    out = ((codes - zeros[:, :, None]) * scales[:, :, None]).reshape(n, blocks * block_size)[:, :k]
    return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=weight.dtype, device=weight.device)


@torch.no_grad()
def roundtrip_linears(model: nn.Module, *, block_size: int = 32) -> int:
    """Every ``nn.Linear`` weight of ``model``, and every ``nn.Embedding`` table (4-bit
    ``GatherBlockQuantized`` blocks run along the same hidden axis), replaced by
    :func:`matmulnbits_roundtrip` of it, in place (a weight shared by two modules, a tied output
    layer, once); how many were replaced."""
    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and id(module.weight) not in done:
            done.add(id(module.weight))
            module.weight.copy_(matmulnbits_roundtrip(module.weight, block_size=block_size))
    return len(done)
