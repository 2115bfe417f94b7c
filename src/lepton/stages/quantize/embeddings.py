"""``quantize_embeddings``: 8-bit embedding tables (int8 rows, one float32 scale per row).

Runs on the PyTorch model (before ``export``): each ``nn.Embedding`` whose module name contains
one of ``modules`` becomes a ``lepton.models.int8_embedding.Int8Embedding``. The default, ``[embeddings]``,
takes every table of a BERT-style model (word, position and token-type embeddings), so no float
table is left; ``[word_embeddings]`` takes the big one only.
The artifact saves it int8 (``model-int8.safetensors``, loaded only through Lepton); ``export``
traces it into a quantized Gather (int8 initializer + per-row scales), so a following
``quantize`` on ONNX Runtime leaves no float32 matrix in the graph. Order with the other stages:
after training (the 8-bit table is frozen), before or after ``trim_vocab``, before ``export``;
PyTorch ``quantize: dynamic_int8`` may come before or after it.

The summary gives each table's largest absolute error (at most ``max|row| / 254`` per element)
and the change of the model's logits on ``check_items`` real inputs, as ``quantize`` does.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import StageConfig, register

log = logging.getLogger(__name__)


class QuantizeEmbeddingsConfig(StageConfig):
    contract_example: ClassVar[dict[str, Any]] = {"check_items": 8}

    kind: Literal["quantize_embeddings"] = "quantize_embeddings"
    # Embedding module names (substrings) to store in 8 bits.
    modules: list[str] = Field(default_factory=lambda: ["embeddings"])
    check_items: int = Field(default=64, ge=1)
    check_split: Literal["dev", "test", "train", "validation"] = "dev"

    smoke_caps: ClassVar[dict[str, Any]] = {"check_items": 16}

    @field_validator("modules")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value or any(not p for p in value):
            raise ValueError("name at least one embedding module, e.g. [word_embeddings]")
        return value


@register(QuantizeEmbeddingsConfig)
def quantize_embeddings(bundle: ModelBundle, config: QuantizeEmbeddingsConfig, ctx: RunContext) -> ModelBundle:
    """Replace the chosen embedding tables in place with int8 ones; report sizes and errors."""
    import copy

    from lepton.models import int8_embedding
    from lepton.runtimes import for_bundle
    from lepton.runtimes.parity import compare_logits, parity_inputs

    where = f"stages.{ctx.stage_index}"
    if not bundle.runtime_info.trainable:
        raise StageError(f"{where}: quantize_embeddings works on the PyTorch model; put it before export")
    reference = ModelBundle(model=copy.deepcopy(bundle.model), tokenizer=bundle.tokenizer, task=bundle.task)
    size_before = for_bundle(reference).size_bytes()
    try:
        tables = int8_embedding.quantize_embeddings(bundle.model, config.modules)
    except ValueError as err:
        raise StageError(f"{where}: {err}") from None
    if not tables:
        have = [n for n, m in bundle.model.named_modules() if type(m).__name__.endswith("Embedding")]
        raise StageError(f"{where}.modules: no float embedding matches {config.modules} "
                         f"(the model's embeddings: {', '.join(have) or 'none'})")
    summary: dict[str, Any] = {"tables": tables, "scheme": "symmetric int8, one float32 scale per row",
                               "size_mb_before": round(size_before / 1e6, 3),
                               "size_mb_after": round(for_bundle(bundle).size_bytes() / 1e6, 3)}
    batches, split_name = parity_inputs(bundle, ctx, config.check_split, config.check_items, 8)
    summary["vs_input"] = {"split": split_name, **compare_logits(for_bundle(reference), for_bundle(bundle), batches)}
    ctx.stage_summary = summary
    log.info("quantize_embeddings: %s in int8, %.1f -> %.1f MB, max |logit diff| %.3g",
             ", ".join(tables), summary["size_mb_before"], summary["size_mb_after"],
             summary["vs_input"]["max_abs_diff"])
    return bundle
