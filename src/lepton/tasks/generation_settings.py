"""How text is generated: greedy, beam search or seeded sampling, validated like every recipe section.

``GenerationSettings`` is a recipe section (``generation:``) and the keyword arguments of
``lepton.load(path).generate(...)``; it maps onto a transformers ``GenerationConfig``, which does
the decoding. A setting that does not apply to the chosen strategy (``temperature`` with greedy
decoding, say) is an error rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from lepton.core.config import StrictModel
from lepton.core.errors import RecipeError


class GenerationSettingsError(RecipeError):
    """A generation setting is out of range or does not fit the decoding strategy."""


# Fields that only mean something for some strategies; a non-default value elsewhere is an error.
ONLY_FOR = {
    "temperature": ("sample",),
    "top_p": ("sample",),
    "top_k": ("sample",),
    "seed": ("sample",),
    "num_beams": ("beam",),
    "length_penalty": ("beam",),
}


class GenerationSettings(StrictModel):
    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    num_beams: int = Field(default=4, ge=2, le=32)  # beam
    length_penalty: float = Field(default=1.0, ge=-5.0, le=5.0, allow_inf_nan=False)  # beam
    temperature: float = Field(default=1.0, gt=0.0, le=10.0, allow_inf_nan=False)  # sample
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)  # sample; 1.0: off
    top_k: int = Field(default=0, ge=0, le=100_000)  # sample; 0: off
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # sample: the same seed, the same text
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0, allow_inf_nan=False)  # 1.0: off
    stop: list[str] = Field(default_factory=list, max_length=16)  # cut the text at the first
    batch_size: int = Field(default=8, ge=1, le=1024)

    @model_validator(mode="after")
    def _fits_strategy(self) -> GenerationSettings:
        for name, strategies in ONLY_FOR.items():
            if self.strategy not in strategies and getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"{name} applies to strategy {' or '.join(strategies)} only, "
                                 f"not {self.strategy}")
        from lepton.tasks.prompt_limits import text_problem

        for i, stop in enumerate(self.stop):
            problem = text_problem(stop)
            if problem is not None:
                raise ValueError(f"stop string {i + 1} {problem}" if stop else "stop strings must not be empty")
        return self

    @classmethod
    def parse(cls, values: dict[str, Any] | None = None, *, where: str = "generation") -> GenerationSettings:
        """Settings from a mapping; a bad value is one GenerationSettingsError line naming the field."""
        try:
            return cls.model_validate(values or {})
        except ValidationError as err:
            parts = []
            for item in err.errors():
                loc = ".".join(str(p) for p in item["loc"])
                field = f"{where}.{loc}" if loc else where
                msg = item["msg"].removeprefix("Value error, ")
                got = item.get("input")
                shown = "" if isinstance(got, (dict, list)) or not loc else f" (got {got!r})"
                parts.append(f"{field}: {msg}{shown}")
            raise GenerationSettingsError("; ".join(parts)) from None

    def to_generation_config(self, *, eos_token_id: Any = None, pad_token_id: Any = None,
                             base: Any = None) -> Any:
        """A transformers GenerationConfig; ``base`` (the model's own) keeps what these settings do
        not say, e.g. an encoder-decoder's decoder_start_token_id."""
        import copy

        from transformers import GenerationConfig

        values: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                  "repetition_penalty": self.repetition_penalty, "max_length": None}
        values.update({k: v for k, v in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id))
                       if v is not None})
        if self.strategy == "greedy":
            values.update(do_sample=False, num_beams=1)
        elif self.strategy == "beam":
            values.update(do_sample=False, num_beams=self.num_beams, length_penalty=self.length_penalty,
                          early_stopping=True)
        else:
            values.update(do_sample=True, num_beams=1, temperature=self.temperature, top_p=self.top_p,
                          top_k=self.top_k or None)
        config = copy.deepcopy(base) if base is not None else GenerationConfig()
        # Sampling-only values a greedy/beam config must not carry (transformers warns on them).
        for name, neutral in (("temperature", 1.0), ("top_p", 1.0), ("top_k", None)):
            if not values.get("do_sample"):
                setattr(config, name, neutral)
        for name, value in values.items():
            setattr(config, name, value)
        return config
