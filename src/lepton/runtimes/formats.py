"""The weights formats a saved model can be in, each declared by the runtime that loads it.

A manifest names its format (``"format"``; older manifests only their runtime, whose
``RuntimeInfo.format`` stands in). The artifact asks this registry which file the format cannot
load without and how to load it; no code outside ``lepton.runtimes`` tests a format's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton.core.registry import Registry


@dataclass(frozen=True)
class WeightsFormat:
    name: str  # the manifest's "format"
    runtime: str  # the runtime whose models it holds (lepton.runtimes.RuntimeInfo.name)
    weights_file: str  # the file a model of this format cannot load without
    # (folder, manifest, auto model class, structure or None, device) -> the model, ready to run
    load: Callable[[Path, dict[str, Any], Any, Any, str], Any]
    # Plain transformers' from_pretrained loads it (when no pruning left a structure it cannot describe).
    loads_in_transformers: bool = False
    # The model card's sentence on how a model in this format loads where plain transformers cannot.
    how_it_loads: str = ""


formats: Registry[WeightsFormat] = Registry("weights format")


def register_format(fmt: WeightsFormat) -> WeightsFormat:
    formats.add(fmt.name, fmt)
    return fmt


def find_format(name: str) -> WeightsFormat | None:
    """The registered format ``name`` (None for a name no runtime registered)."""
    from lepton.runtimes.registry import load_builtin

    load_builtin()
    return formats.get(name) if name in formats else None
