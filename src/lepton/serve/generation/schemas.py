"""Request bodies of the generative server: Lepton's own ``/v1/generate`` and OpenAI's
``/v1/completions`` and ``/v1/chat/completions`` (the fields OpenAI clients send; those this
server cannot honour are accepted only at their neutral value, so a client never gets silently
different behaviour). Unknown fields are refused (422 -> 400 naming the field), as OpenAI does.

Types are strict: ``true`` is not the number 1, ``"2"`` is not 2, ``2.0`` is not an integer, NaN
and infinities are not numbers. Every text field goes through one validator
(``lepton.tasks.prompt_limits.text_problem``, shared with ``lepton generate``): a lone surrogate
(``"\\ud800"``) is a 400 naming the field on every route, never a tokenizer's 500."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from lepton.tasks.prompt_limits import text_problem

_STRICT = ConfigDict(extra="forbid", strict=True)


def _text(value: str) -> str:
    problem = text_problem(value, allow_empty=True)
    if problem is not None:
        raise ValueError(problem)
    return value


def _prompt_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_text)]  # any text, empty included
PromptText = Annotated[str, AfterValidator(_prompt_text)]  # a prompt or message: not empty either
Stop = Text | Annotated[list[Text], Field(max_length=4)] | None


def _only(allowed: Any, why: str) -> AfterValidator:
    """A field accepted only at one value (what this server can honour), of that exact type."""
    def check(value: Any) -> Any:
        if value is not None and (type(value) is not type(allowed) or value != allowed):
            raise ValueError(f"only {allowed!r} is supported: {why}")
        return value
    return AfterValidator(check)


class _Sampling(BaseModel):
    model_config = _STRICT

    temperature: float | None = Field(None, ge=0, le=100, allow_inf_nan=False, description="0: greedy")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, description="0: no top-k cut (a Lepton extension in the OpenAI routes)")
    seed: int | None = Field(None, ge=0, lt=2**63, description="the same seed gives the same sample")
    stop: Stop = Field(None, description="up to 4 strings; the text ends before the first one found")
    ignore_eos: bool = Field(False, description="generate exactly the token limit (for benchmarks)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value or []
        if any(not s for s in items):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > 256 for s in items):
            raise ValueError("a stop string may have at most 256 characters")
        return value


class GenerateRequest(_Sampling):
    prompt: PromptText
    max_new_tokens: int | None = Field(None, ge=1)
    stream: bool = False


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _OpenAI(_Sampling):
    model: Text | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: Annotated[int, _only(1, "one choice per request")] = Field(1, description="only 1 choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, _only(0.0, "no presence penalty"), Field(allow_inf_nan=False)] = 0
    frequency_penalty: Annotated[float, _only(0.0, "no frequency penalty"), Field(allow_inf_nan=False)] = 0
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    user: Text | None = None


class CompletionRequest(_OpenAI):
    prompt: (PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=1)]
             | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)])
    logprobs: None = Field(None, description="not supported")
    echo: Annotated[bool, _only(False, "the prompt is not echoed")] = False
    best_of: Annotated[int | None, _only(1, "one choice per request")] = None
    suffix: None = None


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(max_length=256)]
    name: Text | None = None

    @field_validator("content")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if not (value if isinstance(value, str) else "".join(p.text for p in value)):
            raise ValueError("is empty (a message needs some text)")
        return value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text"]


class ChatRequest(_OpenAI):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Annotated[bool | None, _only(False, "log probabilities are not returned")] = None
    response_format: ResponseFormat | None = None
