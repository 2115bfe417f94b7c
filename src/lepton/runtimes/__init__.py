"""Runtimes: how a model is executed. The evaluation harness asks a runtime for logits and never
cares which one it is; ONNX Runtime slots in beside PyTorch eager under its own name."""

from __future__ import annotations

from lepton.runtimes.registry import (
    Runtime,
    RuntimeInfo,
    accepts,
    for_bundle,
    infos,
    register,
    runtime_info,
    runtimes,
)

__all__ = ["Runtime", "RuntimeInfo", "accepts", "for_bundle", "infos", "register", "runtime_info", "runtimes"]


def _load_builtin() -> None:
    # Each registers itself and its weights formats (lepton.runtimes.formats).
    from lepton.runtimes import ort, ort_decoder, torch_eager  # noqa: F401


_load_builtin()
