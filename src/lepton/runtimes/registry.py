"""The runtime registry: what each runtime is and can do (``RuntimeInfo``), and how it runs a
bundle (``for_bundle``). Runtime modules register here; ``lepton.runtimes`` loads the built-in ones."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RuntimeInfo:
    """What a runtime is and what it can do: code outside ``lepton.runtimes`` asks these
    questions and never compares runtime names."""

    name: str  # the bundle's ``runtime`` and the manifest's "runtime" entry
    format: str  # the weights format of a manifest of this runtime that names none
    # The model is a PyTorch module that stages can train, prune, edit and quantize in place.
    trainable: bool = False
    # The model is an exported ONNX graph: ONNX Runtime's tools rewrite it (quantize), it writes
    # its own files (``save_pretrained``), and it is fed numpy arrays, not torch tensors.
    is_graph: bool = False


# name -> (what the runtime is, how it runs a bundle)
_runtimes: Registry[tuple[RuntimeInfo, Callable[[Any], Runtime]]] = Registry("runtime")


def register(info: RuntimeInfo, factory: Callable[[Any], Runtime]) -> None:
    """Register a runtime: what it is (``runtime_info``) and how it runs a bundle (``for_bundle``)."""
    _runtimes.add(info.name, (info, factory))


@functools.cache
def load_builtin() -> None:
    """Import the built-in runtimes (they register themselves and their weights formats) on first
    use, so that importing ``lepton.runtimes`` (the bundle, say) does not load torch."""
    from lepton.runtimes import ort, ort_decoder, ort_seq2seq, torch_eager  # noqa: F401


def runtime_info(name: str) -> RuntimeInfo:
    """What runtime ``name`` is and can do. A name no runtime registered (a manifest written
    elsewhere or edited) gets an info with no capability, so each caller refuses it as it refuses
    any runtime that lacks what it needs (running it, ``for_bundle``, is the error naming it);
    its weights are read as safetensors, the format of manifests that name none."""
    load_builtin()
    if isinstance(name, str) and name in _runtimes:  # an edited manifest may hold anything
        return _runtimes.get(name)[0]
    return RuntimeInfo(name=name, format="safetensors")


def accepts(accepted: Iterable[str], runtime: str) -> bool:
    """Whether a stage that takes models on the ``accepted`` runtimes can take one on ``runtime``."""
    return runtime in accepted


def for_bundle(bundle: Any) -> Runtime:
    load_builtin()
    _, factory = _runtimes.get(bundle.runtime)
    return factory(bundle)
