"""Runtimes: how a model is executed. The evaluation harness asks a runtime for logits and never
cares which one it is; ONNX Runtime slots in beside PyTorch eager under its own name. The built-in
runtimes load on first use of the registry (``load_builtin``), so importing the bundle stays light."""

from __future__ import annotations

from lepton.runtimes.registry import (
    Runtime,
    RuntimeInfo,
    accepts,
    for_bundle,
    load_builtin,
    register,
    runtime_info,
)

__all__ = ["Runtime", "RuntimeInfo", "accepts", "for_bundle", "load_builtin", "register", "runtime_info"]
