"""The generative HTTP app: ``create_generate_app(model, tokenizer, settings, ...)``.

Routes: ``POST /v1/generate`` (Lepton's own shape), the OpenAI-compatible ``POST /v1/completions``
and ``POST /v1/chat/completions`` (streaming as Server-Sent Events in OpenAI's chunk shapes, ending
with ``data: [DONE]``), ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics``; with an admin
token, ``POST /v1/admin/swap``, which answers 409: hot swap is not supported here yet. Every error is
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; a bad field is a 400 naming it.
A client that disconnects cancels its request: it leaves the decode batch at the next step.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lepton.core import __version__
from lepton.serve.appkit import add_docs, on_reload_signal, on_shutdown_signal, swagger_assets
from lepton.serve.batcher import QueueFullError, ShuttingDownError
from lepton.serve.generation.engine import GenerationEngine, TorchEngine
from lepton.serve.generation.metrics import GenerateMetrics
from lepton.serve.generation.sampling import SamplingParams
from lepton.serve.generation.scheduler import Chunk, GenerationHandle, Scheduler
from lepton.serve.generation.schemas import ChatRequest, CompletionRequest, GenerateRequest
from lepton.serve.guards import RETRY_AFTER_S, BodyError, BodyGuardMiddleware, DrainGuardMiddleware, JSONBodyRoute
from lepton.serve.metrics import MetricsMiddleware
from lepton.serve.swap import admin_guard
from lepton.tasks.prompt_limits import chars_problem, tokens_problem

log = logging.getLogger(__name__)


class GenerateSettings(BaseModel):
    """The limits of a generative server (``lepton serve`` on a generative artifact)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(16, ge=1, le=1024)  # sequences in one decode step
    max_queue: int = Field(64, ge=1)  # requests waiting to join the batch; beyond it: 503
    max_prompt_tokens: int = Field(2048, ge=1)  # longer prompts: 400 (also capped by the context)
    max_new_tokens: int = Field(512, ge=1)  # the most a request may ask for
    max_body_bytes: int = Field(1 << 20, ge=1)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    drain_timeout_s: float = Field(30.0, ge=0, le=3600)

    @classmethod
    def from_serve(cls, serve: Any, **overrides: Any) -> "GenerateSettings":
        """The fields a ``ServeSettings`` shares with these (batch, queue, body, drain)."""
        common = {k: getattr(serve, k) for k in ("max_batch", "max_queue", "max_body_bytes",
                                                  "body_timeout_s", "drain_timeout_s") if hasattr(serve, k)}
        return cls(**{**common, **overrides})


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class _JSONRoute(JSONBodyRoute):
    """Request bodies through guards.parse_json_body (bad UTF-8, deep nesting), errors in OpenAI's shape."""

    @staticmethod
    def body_error_response(err: BodyError) -> Response:
        param = ".".join(str(p) for p in err.loc[1:]) or None
        return APIError(400, err.msg, param=param, code=err.kind).response()


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _eos_ids(model: Any, tokenizer: Any, defaults: Mapping[str, Any]) -> list[int]:
    found: list[int] = []
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (defaults.get("eos_token_id"), model_eos, getattr(tokenizer, "eos_token_id", None)):
        found += [int(v) for v in (value if isinstance(value, list | tuple) else [value]) if v is not None]
    return sorted(set(found))


def create_generate_app(model: Any, tokenizer: Any, settings: Any = None, *, model_name: str,
                        generation_defaults: Mapping[str, Any] | None = None,
                        engine: GenerationEngine | None = None, artifact: Any = None,
                        admin_token: str | None = None) -> FastAPI:
    """The app serving a causal LM. ``settings``: GenerateSettings (a ServeSettings is converted
    with GenerateSettings.from_serve). ``generation_defaults``: the artifact's defaults
    (max_new_tokens, temperature, top_p, top_k, do_sample, eos_token_id) for fields a request
    leaves out. ``engine``: another runtime (e.g. ONNX Runtime) to serve instead of a
    TorchEngine over ``model`` (``model`` may then be None). ``artifact``: the served artifact
    (``lepton.serve.swap.Artifact``), named by /healthz and /readyz. ``admin_token``: turns on
    ``POST /v1/admin/swap``, which refuses (409: not supported for generative models yet)."""
    if settings is None:
        settings = GenerateSettings()
    elif not isinstance(settings, GenerateSettings):
        settings = GenerateSettings.from_serve(settings)
    defaults = dict(generation_defaults or {})
    engine = engine if engine is not None else TorchEngine(model)
    metrics = GenerateMetrics()
    scheduler = Scheduler(engine, tokenizer, eos_token_ids=_eos_ids(model, tokenizer, defaults),
                          max_batch=settings.max_batch, max_queue=settings.max_queue, metrics=metrics)
    service = _GenerateService(engine, tokenizer, scheduler, settings, metrics, model_name=model_name,
                               defaults=defaults, artifact=artifact)

    app = FastAPI(title=f"Lepton generative server: {model_name}", version=__version__, lifespan=service.lifespan,
                  docs_url=None, redoc_url=None,  # /docs from local files, as lepton.serve.app does
                  description="Text generation; requests share decode steps with other concurrent requests.")
    app.router.route_class = _JSONRoute
    add_docs(app, swagger_assets())
    app.state.scheduler, app.state.metrics, app.state.engine = scheduler, metrics, engine
    _add_routes(app, service)
    if admin_token:
        app.add_api_route("/v1/admin/swap", service.admin_swap, methods=["POST"],
                          dependencies=[Depends(admin_guard(admin_token))],
                          summary="Hot swap (not supported for generative models yet: 409)")
    _add_error_handlers(app)
    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=frozenset(getattr(r, "path", "") for r in app.routes))
    app.add_middleware(DrainGuardMiddleware)
    return app


def _add_routes(app: FastAPI, service: "_GenerateService") -> None:
    """The routes of a generative server, each a method of ``service``."""
    app.add_api_route("/v1/generate", service.generate, methods=["POST"],
                      summary="Generate text (Lepton's own request shape)")
    app.add_api_route("/v1/completions", service.completions, methods=["POST"],
                      summary="OpenAI-compatible text completion")
    app.add_api_route("/v1/chat/completions", service.chat_completions, methods=["POST"],
                      summary="OpenAI-compatible chat completion")
    app.add_api_route("/v1/models", service.models, methods=["GET"],
                      summary="The served model, in OpenAI's list shape")
    app.add_api_route("/healthz", service.healthz, methods=["GET"], summary="The process is alive")
    app.add_api_route("/readyz", service.readyz, methods=["GET"], summary="The model is loaded and takes requests")
    app.add_api_route("/metrics", service.prometheus, methods=["GET"], response_class=Response,
                      summary="Prometheus metrics of this process")


class _GenerateService:
    """What a generative server's routes share: the engine, the scheduler, the tokenizer, the
    settings and metrics, the artifact's generation defaults and the served model's name."""

    def __init__(self, engine: GenerationEngine, tokenizer: Any, scheduler: Scheduler, settings: GenerateSettings,
                 metrics: GenerateMetrics, *, model_name: str, defaults: dict[str, Any], artifact: Any = None) -> None:
        self.engine, self.tokenizer, self.scheduler = engine, tokenizer, scheduler
        self.settings, self.metrics = settings, metrics
        self.model_name, self.defaults = model_name, defaults
        self.artifact = artifact.model_dump(mode="json") if artifact is not None else None
        self.max_prompt = min(settings.max_prompt_tokens, engine.max_context - 1)
        self.created = int(time.time())

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        await asyncio.to_thread(_warm_up, self.engine, self.tokenizer)
        self.scheduler.start(asyncio.get_running_loop())
        restore = on_shutdown_signal(asyncio.get_running_loop(),
                                      lambda: self.scheduler.begin_drain(self.settings.drain_timeout_s))
        restore_reload = on_reload_signal(asyncio.get_running_loop(), lambda: log.warning(
            "SIGHUP: hot swap is not supported for generative models yet; the model keeps serving"))
        log.info("serving %s (generative; max context %d tokens)", self.model_name, self.engine.max_context)
        try:
            yield
        finally:
            restore()
            restore_reload()
            await self.scheduler.close(5.0)

    # ------------------------------------------------------------------ helpers

    def token_limit(self, requested: int | None, field: str, n_prompt: int, fallback: int) -> int:
        settings, max_context = self.settings, self.engine.max_context
        room = max_context - n_prompt
        if requested is None:
            return max(1, min(int(self.defaults.get("max_new_tokens") or fallback), settings.max_new_tokens, room))
        if requested > settings.max_new_tokens:
            raise APIError(400, f"{field}: {requested} is over this server's limit of {settings.max_new_tokens}",
                           param=field)
        problem = tokens_problem(n_prompt, requested, max_context, new_tokens_name=field)
        if problem is not None:
            raise APIError(400, f"{field}: {problem}", param=field, code="context_length_exceeded")
        return requested

    def sampling(self, body: Any, max_new: int, temperature_fallback: float) -> SamplingParams:
        defaults = self.defaults
        greedy_default = defaults.get("do_sample") is False
        temperature = body.temperature
        if temperature is None:
            temperature = 0.0 if greedy_default else float(defaults.get("temperature", temperature_fallback))
        stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
        return SamplingParams(
            max_new_tokens=max_new, temperature=temperature,
            top_p=body.top_p if body.top_p is not None else float(defaults.get("top_p") or 1.0),
            top_k=body.top_k if body.top_k is not None else int(defaults.get("top_k") or 0),
            seed=body.seed, stop=tuple(stop), ignore_eos=body.ignore_eos)

    async def encode(self, text: str, field: str, *, special: bool = True) -> list[int]:
        """``text``'s token ids; a text too long for any tokenizer to fit the limit is refused first."""
        problem = chars_problem(text, self.max_prompt)
        if problem is not None:
            raise APIError(400, f"{field}: {problem}", param=field, code="context_length_exceeded")
        tokenizer = self.tokenizer
        return await asyncio.to_thread(lambda: list(tokenizer(text, add_special_tokens=special)["input_ids"]))

    def check_prompt(self, ids: list[int], field: str) -> None:
        problem = tokens_problem(len(ids), 0, None, cap=self.max_prompt)
        if problem is not None:
            raise APIError(400, f"{field}: {problem}", param=field,
                           code="context_length_exceeded" if ids else "empty_prompt")

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.model_name:
            raise APIError(404, f"model: {requested!r} is not served here (this server serves {self.model_name!r})",
                           param="model", code="model_not_found")

    def submit(self, ids: list[int], params: SamplingParams) -> GenerationHandle:
        try:
            return self.scheduler.submit(ids, params)
        except QueueFullError as err:
            raise APIError(503, f"server busy: {err}; retry later", kind="server_error", code="server_busy",
                           headers={"Retry-After": RETRY_AFTER_S}) from None
        except ShuttingDownError as err:
            raise APIError(503, str(err), kind="server_error", code="shutting_down",
                           headers={"Retry-After": RETRY_AFTER_S}) from None

    async def completion_prompt(self, body: CompletionRequest) -> list[int]:
        """A completion's prompt as token ids: the text (or the first of several) encoded, or the ids given."""
        if isinstance(body.prompt, str) or isinstance(body.prompt[0], str):
            return await self.encode(body.prompt if isinstance(body.prompt, str) else body.prompt[0], "prompt")
        ids = list(body.prompt)
        vocab = len(self.tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
        return ids

    async def chat_prompt(self, body: ChatRequest) -> list[int]:
        """A chat's messages through the model's chat template, as token ids."""
        tokenizer = self.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "messages: this model has no chat template; use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # noqa: BLE001 - a template may refuse a role order (raise_exception)
            raise APIError(400, f"messages: the chat template refused them: {err}", param="messages") from None
        return await self.encode(text, "messages", special=False)  # the template writes the special tokens itself

    # ------------------------------------------------------------------ routes

    async def generate(self, body: GenerateRequest, request: Request) -> Any:
        ids = await self.encode(body.prompt, "prompt")
        self.check_prompt(ids, "prompt")
        params = self.sampling(body, self.token_limit(body.max_new_tokens, "max_new_tokens", len(ids), 128), 0.0)
        handle = self.submit(ids, params)
        rid = f"gen-{uuid.uuid4().hex}"
        if body.stream:
            return _sse_response(_stream(handle, [], partial(_generate_chunks, rid), None))
        r = await _complete(request, handle)
        return {"id": rid, "model": self.model_name, "text": r.text, "token_ids": r.token_ids,
                "finish_reason": r.finish_reason, "usage": _usage(r)}

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        ids = await self.completion_prompt(body)
        self.check_prompt(ids, "prompt")
        params = self.sampling(body, self.token_limit(body.max_tokens, "max_tokens", len(ids), 16), 1.0)
        handle = self.submit(ids, params)
        cid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "object": "text_completion", "created": now, "model": self.model_name}
        if body.stream:
            with_usage = bool(body.stream_options and body.stream_options.include_usage)
            extra = {"usage": None} if with_usage else {}
            tail = partial(_usage_chunk, head) if with_usage else None
            return _sse_response(_stream(handle, [], partial(_completion_chunks, head, extra), tail))
        r = await _complete(request, handle)
        return {**head, "choices": [{"text": r.text, "index": 0, "logprobs": None, "finish_reason": r.finish_reason}],
                "usage": _usage(r)}

    async def chat_completions(self, body: ChatRequest, request: Request) -> Any:
        self.check_model(body.model)
        ids = await self.chat_prompt(body)
        self.check_prompt(ids, "messages")
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        limit = self.token_limit(body.max_completion_tokens or body.max_tokens, field, len(ids), 512)
        handle = self.submit(ids, self.sampling(body, limit, 1.0))
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": self.model_name}
        if body.stream:
            with_usage = bool(body.stream_options and body.stream_options.include_usage)
            extra = {"usage": None} if with_usage else {}
            tail = partial(_usage_chunk, head) if with_usage else None
            first = [_sse(_chat_choice(head, extra, {"role": "assistant", "content": ""}, None))]
            return _sse_response(_stream(handle, first, partial(_chat_chunks, head, extra), tail))
        r = await _complete(request, handle)
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                             "finish_reason": r.finish_reason}], "usage": _usage(r)}

    async def models(self) -> Any:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "lepton", "max_model_len": self.engine.max_context}]}

    def _status(self, status: str) -> dict[str, Any]:
        return {"status": status, **({"artifact": self.artifact} if self.artifact is not None else {})}

    async def healthz(self) -> Any:
        return self._status("ok")

    async def readyz(self) -> Any:
        if self.scheduler.accepting:
            return self._status("ready")
        return JSONResponse(self._status("not ready"), status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    async def admin_swap(self) -> Any:
        raise APIError(409, "hot swap is not supported for generative models yet; start a server on the updated "
                            "model and move the traffic to it", kind="swap_not_supported", code="swap_not_supported")

    async def prometheus(self) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


# ---------------------------------------------------------------------- responses and streams


async def _complete(request: Request, handle: GenerationHandle) -> Chunk:
    """The whole result; cancels the request if the client disconnects first."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        result = await handle.result()
    finally:
        watcher.cancel()
        handle.cancel()  # no-op when done; frees the slot if this task itself was cancelled
    if result.finish_reason == "error":
        raise APIError(503 if "shutting down" in (result.error or "") else 500,
                       result.error or "generation failed", kind="server_error")
    return result


async def _stream(handle: GenerationHandle, first: list[str], shape: Callable[[Chunk], list[Any]],
                  usage_chunk: Callable[[Chunk], Any] | None) -> AsyncIterator[str]:
    try:
        for line in first:
            yield line
        async for chunk in handle:
            if chunk.finish_reason == "error":
                yield _sse(APIError(500, chunk.error or "generation failed", kind="server_error").body())
                break
            for payload in shape(chunk):
                yield _sse(payload)
            if chunk.finish_reason is not None and usage_chunk is not None:
                yield _sse(usage_chunk(chunk))
        yield "data: [DONE]\n\n"
    finally:  # the client went away (the response task is cancelled) or the stream ended
        handle.cancel()


def _sse_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(c: Chunk) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def _usage_chunk(head: dict[str, Any], c: Chunk) -> dict[str, Any]:
    """The last chunk of an OpenAI stream asked for with ``stream_options.include_usage``."""
    return {**head, "choices": [], "usage": _usage(c)}


def _generate_chunks(rid: str, c: Chunk) -> list[Any]:
    """The events of one chunk of a /v1/generate stream."""
    if c.finish_reason is None:
        return [{"id": rid, "text": c.text, "token_ids": c.token_ids}]
    return [{"id": rid, "text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason,
             "usage": _usage(c)}]


def _completion_chunks(head: dict[str, Any], extra: dict[str, Any], c: Chunk) -> list[Any]:
    """The events of one chunk of a /v1/completions stream (none for an empty chunk that does not end it)."""
    if not c.text and c.finish_reason is None:
        return []
    return [{**head, "choices": [{"text": c.text, "index": 0, "logprobs": None,
                                  "finish_reason": c.finish_reason}], **extra}]


def _chat_choice(head: dict[str, Any], extra: dict[str, Any], delta: dict[str, Any],
                 finish: str | None) -> dict[str, Any]:
    return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra}


def _chat_chunks(head: dict[str, Any], extra: dict[str, Any], c: Chunk) -> list[Any]:
    """The events of one chunk of a /v1/chat/completions stream: its text, then the finish."""
    out = [_chat_choice(head, extra, {"content": c.text}, None)] if c.text else []
    if c.finish_reason is not None:
        out.append(_chat_choice(head, extra, {}, c.finish_reason))
    return out


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One problem, named by its field (never echoing the input back): a check of this server's
        # own first (a text that is not valid Unicode, an empty prompt), else, where several members
        # of a union refused a value, the one that got furthest into it.
        errors = list(exc.errors())
        e = max(errors, key=lambda x: (x.get("type") == "value_error", not str(x.get("type")).endswith("_type"),
                                       len(x.get("loc", ()))))
        loc = [p for p in e.get("loc", ()) if p != "body"]
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", msg)
            return APIError(400, f"invalid JSON: {reason}", code="json_invalid").response()
        if e.get("type") == "extra_forbidden":
            msg = "unknown or unsupported field"
        # Union members show up in the path as type names ("list[str]"): keep field names and indices.
        path = [str(p) for p in loc if isinstance(p, int) or not any(c in str(p) for c in "[]-,")]
        param = path[0] if path else None
        where = ".".join(path) or "body"
        return APIError(400, f"{where}: {msg}", param=param, code=e.get("type")).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)).response()


async def _cancel_on_disconnect(request: Request, handle: GenerationHandle) -> None:
    """Wait for the client to go away (the body is read by now), then cancel its request."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


def _warm_up(engine: GenerationEngine, tokenizer: Any) -> None:
    """One tiny prefill and decode step before serving: the first request does not pay for
    allocations and thread start-up."""
    token = getattr(tokenizer, "bos_token_id", None) or 0
    with contextlib.suppress(Exception):
        import torch

        with torch.inference_mode():
            states, logits = engine.prefill([[token, token]])
            engine.decode_step(states, [token])
            engine.release(states)
