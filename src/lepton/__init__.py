"""Lepton: fine-tune, compress, measure and ship a Transformer, from one recipe.

The public API is ``lepton.run``, ``lepton.evaluate``, ``lepton.compare``, ``lepton.load`` and ``lepton.load_recipe``.
Heavy modules (torch, transformers) load on first use, so ``import lepton`` stays fast.
"""

from __future__ import annotations

from typing import Any

from lepton.core import __version__

__all__ = ["__version__", "run", "evaluate", "compare", "load", "load_recipe", "LeptonError"]

from lepton.core.errors import LeptonError  # noqa: E402


def __getattr__(name: str) -> Any:
    if name in ("run", "evaluate", "compare"):
        from lepton.pipeline import api

        return getattr(api, name)
    if name == "load":
        from lepton.pipeline.predictor import load

        return load
    if name == "load_recipe":
        from lepton.pipeline.recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'lepton' has no attribute {name!r}")
