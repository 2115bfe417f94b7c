"""Runtimes: how a model is executed. The evaluation harness asks a runtime for logits and never
cares which one it is; ONNX Runtime slots in beside PyTorch eager under its own name."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from lepton.core.registry import Registry


class Runtime(Protocol):
    name: str
    device: str

    def logits(self, batch: dict[str, Any]) -> np.ndarray:
        """Logits for one padded batch: (B, K) or (B, T, K) for token classification."""

    def parameter_counts(self) -> tuple[int, int]:
        """(total, non-zero) parameters."""

    def size_bytes(self) -> int:
        """Bytes the weights take when saved in this runtime's format."""

    def flops_per_item(self, tokens: float) -> float | None:
        """Estimated floating-point operations for one item of ``tokens`` tokens, if known."""


runtimes: Registry[Any] = Registry("runtime")


def for_bundle(bundle: Any) -> Runtime:
    factory = runtimes.get(bundle.runtime)
    return factory(bundle)


def _load_builtin() -> None:
    from lepton.runtimes import ort, torch_eager  # noqa: F401


_load_builtin()
