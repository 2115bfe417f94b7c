"""PyTorch eager execution of a transformers model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lepton.core.errors import ArtifactError
from lepton.models.int8 import INT8_FILE
from lepton.runtimes.formats import WeightsFormat, register_format
from lepton.runtimes.registry import RuntimeInfo, register
from lepton.runtimes.saved import MANIFEST


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


def _load_safetensors(folder: Path, manifest: dict[str, Any], auto: Any, structure: Any, device: str) -> Any:
    """transformers' own loading; a model whose layers no longer match its config (pruned) is
    built from config, shrunk to the recorded sizes, then every weight loaded strictly."""
    model = auto.from_pretrained(folder) if structure is None else _load_restructured(folder, auto, structure)
    return model.to(device).eval()


def _load_restructured(folder: Path, auto: Any, structure: Any) -> Any:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from lepton.models.structure import rebuild

    if not isinstance(structure, dict):
        raise ValueError(f"{MANIFEST}: structure is malformed")
    model = auto.from_config(AutoConfig.from_pretrained(folder))
    rebuild(model, structure)
    # assign=True keeps the saved dtypes; shapes and key sets are still checked (strict).
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True, assign=True)
    return model


def _load_int8(folder: Path, manifest: dict[str, Any], auto: Any, structure: Any, device: str) -> Any:
    """Build the float model from config (and structure), then quantize and load the int8 weights;
    it stays on the CPU (PyTorch's dynamic int8 kernels are CPU-only)."""
    from transformers import AutoConfig

    from lepton.models import int8 as torch_int8
    from lepton.models.structure import rebuild

    model = auto.from_config(AutoConfig.from_pretrained(folder))
    if structure is not None:
        if not isinstance(structure, dict):
            raise ArtifactError(f"{folder / MANIFEST}: structure is malformed")
        rebuild(model, structure)
    return torch_int8.load_int8(model, folder)


register(RuntimeInfo(name="torch", format="safetensors", trainable=True), TorchEager)
register_format(WeightsFormat("safetensors", "torch", "model.safetensors", _load_safetensors,
                              loads_in_transformers=True))
for _name in ("torch-dynamic-int8", "torch-int8"):
    register_format(WeightsFormat(
        _name, "torch", INT8_FILE, _load_int8,
        how_it_loads="The weights are PyTorch int8 tensors that only `lepton.load` rebuilds."))
