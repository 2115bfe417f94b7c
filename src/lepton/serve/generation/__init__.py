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

__all__ = ["EngineError", "GenerateSettings", "GenerationEngine", "TorchEngine", "create_generate_app",
           "generate_app"]


def generate_app(predictor: Any, settings: Any, name: str, artifact: Any = None) -> Any:
    """The completions app for a loaded generative ``predictor`` (``lepton serve``): PyTorch
    models through ``TorchEngine``, an exported decoder through ONNX Runtime's ``OrtEngine``.
    ``artifact``: what /healthz names (``lepton.serve.swap.Artifact``)."""
    from lepton.serve.generation.app import GenerateSettings, create_generate_app

    model = predictor.bundle.model
    engine = None
    if getattr(model.config, "is_encoder_decoder", False):  # translation: source encoded once per request
        from lepton.serve.generation.seq2seq_engine import seq2seq_engine

        engine = seq2seq_engine(model, getattr(settings, "threads", None))
    elif hasattr(model, "decoder"):  # an exported decoder: the ONNX Runtime engine
        from lepton.serve.generation.ort_engine import OrtEngine

        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        engine = OrtEngine(model.decoder(getattr(settings, "threads", None)), max_context=int(limit))

    config = getattr(model, "generation_config", None)
    defaults = {k: getattr(config, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                "do_sample", "eos_token_id")
                if config is not None and getattr(config, k, None) is not None}
    return create_generate_app(model.eval(), predictor.bundle.tokenizer, GenerateSettings.from_serve(settings),
                               model_name=name, generation_defaults=defaults, engine=engine, artifact=artifact,
                               admin_token=getattr(settings, "admin_token", None))


def __getattr__(name: str) -> Any:
    if name in ("create_generate_app", "GenerateSettings"):
        from lepton.serve.generation import app

        return getattr(app, name)
    raise AttributeError(name)
