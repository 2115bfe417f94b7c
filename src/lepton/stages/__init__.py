"""Stages: one package per technique, each a config class plus one registered function per model
family it supports.

A stage is ``apply(bundle, config, ctx) -> bundle``. The contract (``StageConfig``, ``register``,
the one registry, keyed by config class and model family) lives in ``lepton.stages.base``, which
every stage module imports; adding a technique touches its own package and the import list below.
"""

from __future__ import annotations

from lepton.stages.base import (
    StageConfig,
    StageFn,
    TrainHook,
    configs,
    contract_of,
    declared,
    handler_for,
    handlers,
    register,
    stage_kinds_for,
)

# The built-in stages register themselves on import: each technique's package (its encoder
# implementation) and, where it has them, its implementations for generative models.
from lepton.stages import (  # noqa: E402, F401  (isort: skip)
    distill,
    drop_layers,
    export,
    finetune,
    multitask,
    pretrain,
    prune,
    quantize,
    trim_vocab,
)
from lepton.stages.distill import decoder as _distill_decoder  # noqa: E402, F401
from lepton.stages.drop_layers import decoder as _drop_layers_decoder  # noqa: E402, F401
from lepton.stages.export import decoder as _export_decoder  # noqa: E402, F401
from lepton.stages.finetune import decoder as _finetune_decoder  # noqa: E402, F401
from lepton.stages.pretrain import decoder as _pretrain_decoder  # noqa: E402, F401
from lepton.stages.prune import decoder as _prune_decoder  # noqa: E402, F401
from lepton.stages.quantize import decoder as _quantize_decoder  # noqa: E402, F401
from lepton.stages.quantize import embeddings as _quantize_embeddings  # noqa: E402, F401

__all__ = ["StageConfig", "StageFn", "TrainHook", "configs", "contract_of", "declared", "handler_for",
           "handlers", "register", "stage_kinds_for"]
