"""Request bodies of the generative server: Lepton's own ``/v1/generate`` and OpenAI's
``/v1/completions`` and ``/v1/chat/completions`` (the fields OpenAI clients send; those this
server cannot honour are accepted only at their neutral value, so a client never gets silently
different behaviour). Unknown fields are refused (422 -> 400 naming the field), as OpenAI does."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=100, description="0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
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
    prompt: str = Field(min_length=1)
    max_new_tokens: int | None = Field(None, ge=1)
    stream: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _OpenAI(_Sampling):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: Literal[1] = Field(1, description="only 1 choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    user: str | None = None


class CompletionRequest(_OpenAI):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[list[int], Field(min_length=1)]
    logprobs: None = Field(None, description="not supported")
    echo: Literal[False] = False
    best_of: Literal[1] | None = None
    suffix: None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class ChatRequest(_OpenAI):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = None
    response_format: ResponseFormat | None = None
