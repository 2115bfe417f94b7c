"""What the two generative task kinds (``language_modeling``, ``generation``) share: the model
class chosen by the model (decoder-only or encoder-decoder), the model family that picks the
stages' implementations, generation for ``Predictor.generate`` and the model-card note.

Each kind is one module under ``lepton/tasks/`` with one registration; this base keeps them short.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from lepton.core.errors import LeptonError, StageError
from lepton.tasks.kind import Paired, TaskKind

if TYPE_CHECKING:
    from lepton.tasks.common import TaskConfig, TaskSpec

log = logging.getLogger(__name__)


class GeneratedText(BaseModel):
    generated_text: str = Field(description="the model's output for the prompt")


class AutoGenerative:
    """``from_pretrained`` that picks AutoModelForCausalLM or AutoModelForSeq2SeqLM from the
    model's config, and refuses a model with neither head (one line)."""

    @staticmethod
    def from_pretrained(location: Any, **kwargs: Any) -> Any:
        from lepton.models.decoder import architecture_of, auto_class

        arch = architecture_of(str(location), trust_remote_code=kwargs.get("trust_remote_code", False))
        return auto_class(arch).from_pretrained(location, **kwargs)

    @staticmethod
    def from_config(config: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        return auto.from_config(config, **kwargs)


def settings_of(task: TaskSpec) -> Any:
    from lepton.tasks.generation_settings import GenerationSettings

    return GenerationSettings.model_validate(task.options.get("generation") or {})


def paired_of(metric: str, test: dict) -> Paired:
    return Paired(metric=metric, delta=test["delta"], ci95_low=test["ci95_low"], ci95_high=test["ci95_high"],
                  p_bootstrap=test["p_bootstrap"], significant=test["significant"], p_mcnemar=None)


class GenerativeKind(TaskKind):
    uses_labels = False
    labels_per_text = False
    families = ("decoder", "encoder-decoder")
    efficiency = "generation"
    drift_unsupported = ("drift detection compares a classifier's inputs and outputs; prompts and generated "
                         "text are not compared yet")
    pipeline_tag = "text-generation"
    hub_task_name = "Text Generation"
    example_input = "Translate English to German: A dog runs on the beach."

    def family(self, model: Any) -> str:
        from lepton.tasks.generate import is_encoder_decoder

        return "encoder-decoder" if is_encoder_decoder(model) else "decoder"

    def auto_model(self) -> Any:
        return AutoGenerative

    def check_config(self, config: TaskConfig) -> None:
        if config.text_pair is not None or config.labels is not None:
            raise ValueError(f"text_pair and labels do not apply to {self.name}")

    def transfer_labels(self, enc: Any) -> list[Any]:
        raise StageError(f"{self.name}: distillation's transfer text is not supported for generative models")

    def notes(self, enc: Any) -> list[str]:
        trunc = getattr(enc, "truncation", None)
        if trunc is None or not (trunc.prompts or trunc.targets or trunc.documents):
            return []
        return [f"length limits: {trunc.describe()}"]

    # ------------------------------------------------------------------ serving

    def generate(self, predictor: Any, prompts: list[str], **settings: Any) -> list[str]:
        from lepton.tasks.generate import generate
        from lepton.tasks.generation_settings import GenerationSettings

        task = predictor.task
        merged = GenerationSettings.parse({**(task.options.get("generation") or {}), **settings})
        rendered = [self.render(predictor.bundle.tokenizer, task, p) for p in prompts]
        return generate(predictor.bundle.model, predictor.bundle.tokenizer, rendered, merged)

    def serving(self, predictor: Any) -> str:
        """OpenAI-style completions with streaming (lepton.serve.generation): decoder-only models
        with iteration-level batching, encoder-decoders (translation) request by request."""
        return "generate"

    def render(self, tokenizer: Any, task: TaskSpec, prompt: str) -> str:
        return prompt

    def predict(self, predictor: Any, chunk: list[Any]) -> list[dict[str, Any]]:
        if not all(isinstance(x, str) for x in chunk):
            raise LeptonError("pass a prompt or a list of prompts")
        return [{"generated_text": t} for t in self.generate(predictor, list(chunk))]

    def prediction_schema(self) -> type[BaseModel]:
        return GeneratedText

    def input_help(self, task: TaskSpec) -> str:
        return "a prompt or a list of prompts"

    def warmup_input(self, task: TaskSpec) -> Any:
        return "Hello"

    def card_notes(self, source: str) -> list[str]:
        from lepton.models.gguf import PROVENANCE

        if source == "builtin:smollm2-135m":
            return [f"**Weights:** {PROVENANCE}.", ""]
        return []

