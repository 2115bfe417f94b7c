"""Generative serving: iteration-level batching of causal-LM requests behind an HTTP API
(Lepton's ``/v1/generate`` and OpenAI's ``/v1/completions`` and ``/v1/chat/completions``).

- engine.py: the :class:`GenerationEngine` protocol and :class:`TorchEngine` (transformers model).
- sampling.py: sampling settings, per-request samplers, streaming detokenization with stop strings.
- scheduler.py: the worker that runs every active request's decode step as one batch.
- app.py: ``create_generate_app(model, tokenizer, settings, *, model_name, generation_defaults)``.

This module imports neither FastAPI nor the app; ``create_generate_app`` loads it on first use.
"""

from __future__ import annotations

from typing import Any

from lepton.serve.generation.engine import EngineError, GenerationEngine, TorchEngine

__all__ = ["EngineError", "GenerateSettings", "GenerationEngine", "TorchEngine", "create_generate_app"]


def __getattr__(name: str) -> Any:
    if name in ("create_generate_app", "GenerateSettings"):
        from lepton.serve.generation import app

        return getattr(app, name)
    raise AttributeError(name)
