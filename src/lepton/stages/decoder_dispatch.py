"""How the generative task kinds run the compression, export and quantization stages.

The stages' recipe settings are the registered ones (``lepton.stages``); what they do to a
decoder differs from what they do to an encoder (layers live at ``model.layers``, the FFN is gated,
the export needs a KV cache, quantization is weight-only). Each module here handles one stage for
decoder models and registers its function with ``handles``; ``GenerativeKind.stage_handler`` looks
the stage's config class up here, so the stage modules themselves never test for a task kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

handlers: dict[type, Callable[..., Any]] = {}
# Settings the stage contract test runs a handler with, and the stages before it, where the
# stage's own ``contract_example`` does not fit a decoder (see StageConfig.contract_example).
contracts: dict[type, tuple[dict[str, Any], tuple[dict[str, Any], ...]]] = {}


def handles(config_cls: type, *, example: dict[str, Any] | None = None,
            before: tuple[dict[str, Any], ...] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        handlers[config_cls] = fn
        if example is not None or before is not None:
            contracts[config_cls] = (example if example is not None else config_cls.contract_example,
                                     before if before is not None else config_cls.contract_before)
        return fn

    return wrap


def contract_of(config_cls: type) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]] | None:
    _load()
    return contracts.get(config_cls)


def handler_of(config: Any) -> Callable[..., Any] | None:
    _load()
    return handlers.get(type(config))


def stage_kinds() -> tuple[str, ...]:
    _load()
    return tuple(sorted(cls.stage_kind for cls in handlers))


def _load() -> None:
    from lepton.stages.distill import decoder as distill  # noqa: F401
    from lepton.stages.drop_layers import decoder as drop_layers
    from lepton.stages.export import decoder as export
    from lepton.stages.prune import decoder as prune
    from lepton.stages.quantize import decoder as quantize
