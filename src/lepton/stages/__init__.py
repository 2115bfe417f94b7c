"""Stages: one module per technique, each a config class plus one registered function.

A stage is ``apply(bundle, config, ctx) -> bundle``. Adding a technique touches its own module and
the import list at the bottom of this file, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from lepton.config import PlainName, StrictModel
from lepton.registry import Registry


class StageConfig(StrictModel):
    """Base of every stage's settings; ``kind`` is the name used in recipes."""

    kind: str
    # A label for this stage's variant in reports (default: its kind); it also names files
    # (e.g. the LoRA adapter folder), so it must be a plain name.
    name: PlainName | None = None

    stage_kind: ClassVar[str] = ""
    # What the stage is, declared here so that nothing else checks kind names: it runs the shared
    # training loop (and so applies training hooks, such as gradual pruning's masks), and it
    # trains the task head (a recipe needs one such stage, or a saved Lepton model to start from).
    trains: ClassVar[bool] = False
    trains_head: ClassVar[bool] = False


StageFn = Callable[..., Any]  # (ModelBundle, StageConfig, RunContext) -> ModelBundle

configs: Registry[type[StageConfig]] = Registry("stage kind")
handlers: dict[type[StageConfig], StageFn] = {}


def register(config_cls: type[StageConfig]) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as the handler of ``config_cls`` under ``config_cls.stage_kind``."""

    def wrap(fn: StageFn) -> StageFn:
        configs.add(config_cls.stage_kind, config_cls)
        handlers[config_cls] = fn
        return fn

    return wrap


def handler_for(config: StageConfig) -> StageFn:
    return handlers[type(config)]


def _load_builtin_stages() -> None:
    # Imported here, not at module top, so `import lepton.stages` stays cheap and cycle-free.
    from lepton.stages import (  # noqa: F401
        distill,
        drop_layers,
        export,
        finetune,
        multitask,
        pretrain,
        prune,
        quantize,
        quantize_embeddings,
        trim_vocab,
    )


_load_builtin_stages()
