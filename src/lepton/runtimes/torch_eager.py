"""PyTorch eager execution of a transformers model."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import torch

from lepton.runtimes import RuntimeInfo, register


class TorchEager:
    name = "torch"

    def __init__(self, bundle: Any) -> None:
        self.model = bundle.model
        self.device = str(next(self.model.parameters()).device)
        self.model.eval()

    def logits(self, batch: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
            return self.model(**inputs).logits.float().cpu().numpy()

    def parameter_counts(self) -> tuple[int, int]:
        from lepton.models import int8 as torch_int8

        if torch_int8.is_dynamic_int8(self.model):
            return torch_int8.counts(self.model)
        from lepton.models import int8_embedding

        total, nonzero = int8_embedding.counts(self.model)  # 8-bit tables are buffers
        for p in self.model.parameters():
            total += p.numel()
            nonzero += int(torch.count_nonzero(p).item())
        return total, nonzero

    def size_bytes(self) -> int:
        from safetensors.torch import save_model

        from lepton.models import int8 as torch_int8

        if torch_int8.is_dynamic_int8(self.model):
            return torch_int8.size_bytes(self.model)
        fd, path = tempfile.mkstemp(suffix=".safetensors")
        os.close(fd)
        try:
            save_model(self.model, path)
            return os.path.getsize(path)
        finally:
            os.unlink(path)

    def compressed_size_bytes(self) -> int | None:
        """Size of the float weights after zlib (level 1): what unstructured sparsity buys."""
        import zlib

        from lepton.models import int8 as torch_int8

        if torch_int8.is_dynamic_int8(self.model):
            return None
        compressor, total = zlib.compressobj(1), 0
        for tensor in self.model.state_dict().values():
            data = tensor.detach().cpu().contiguous().numpy().tobytes()
            total += len(compressor.compress(data))
        return total + len(compressor.flush())

    def flops_per_item(self, tokens: float) -> float | None:
        """2 x multiply-adds: every Linear once per token, plus attention's QK^T and AV products.

        An estimate for BERT-style encoders (embeddings are look-ups and cost nothing here).
        """
        work = work_per_token(self.model)
        if work is None:
            return None
        macs_per_token, attention_width = work
        attention_macs = 2 * tokens * tokens * attention_width
        return float(2 * (macs_per_token * tokens + attention_macs))


def work_per_token(model: Any) -> tuple[int, int] | None:
    """(Linear multiply-adds per token, attention width summed over layers), or None if unknown.

    Quantized Linears count like float ones: the same multiply-adds, in int8.
    """
    macs_per_token = 0
    attention_width = 0  # summed over layers: QK^T and AV each cost tokens^2 x width MACs
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or (
                isinstance(getattr(module, "in_features", None), int)
                and isinstance(getattr(module, "out_features", None), int)):
            macs_per_token += module.in_features * module.out_features
        width = getattr(module, "all_head_size", None)
        if isinstance(width, int):  # a self-attention block (per layer; pruned heads shrink it)
            attention_width += width
    if attention_width == 0:
        config = model.config
        layers = getattr(config, "num_hidden_layers", None)
        hidden = getattr(config, "hidden_size", None)
        if layers is None or hidden is None:
            return None
        attention_width = layers * hidden
    return macs_per_token, attention_width


register(RuntimeInfo(name="torch", format="safetensors", trainable=True), TorchEager)
