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

# The built-in stages register themselves on import: each technique's package registers its
# implementations (the encoder one in its __init__, the generative one in its decoder module).
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
    update,
)

__all__ = ["StageConfig", "StageFn", "TrainHook", "configs", "contract_of", "declared", "handler_for",
           "handlers", "register", "stage_kinds_for"]
