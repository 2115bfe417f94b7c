"""Stages: one module per technique, each a config class plus one registered function.

A stage is ``apply(bundle, config, ctx) -> bundle``. The contract (``StageConfig``, ``register``,
the registry) lives in ``lepton.stages.base``, which every stage module imports; adding a
technique touches its own module and the import list below, nothing else.
"""

from __future__ import annotations

from lepton.stages.base import (
    StageConfig,
    StageFn,
    TrainHook,
    configs,
    declared,
    handler_for,
    handlers,
    register,
)

# The built-in stages register themselves on import.
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

__all__ = ["StageConfig", "StageFn", "TrainHook", "configs", "declared", "handler_for", "handlers",
           "register"]
