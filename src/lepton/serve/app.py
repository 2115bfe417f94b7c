"""The HTTP app: ``create_app(model_path, settings)`` loads a Lepton model (verifying every
checksum) and returns a FastAPI app that serves it.

Endpoints: ``POST /v1/predict``, ``GET /v1/model``, ``/healthz``, ``/readyz``, ``/metrics``, and
the OpenAPI schema at ``/openapi.json`` (browsable at ``/docs``). The request model is built per
app, so the schema states this server's own limits and input shape (texts or text pairs).
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime,
# and the request model they name is built inside create_app.

import asyncio
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from lepton.core import __version__
from lepton.core.errors import LeptonError
from lepton.serve.appkit import add_docs, on_shutdown_signal, swagger_assets
from lepton.serve.batcher import MicroBatcher, QueueFullError, ShuttingDownError
from lepton.serve.guards import (
    RETRY_AFTER_S,
    BodyGuardMiddleware,
    DrainGuardMiddleware,
    JSONBodyRoute,
)
from lepton.serve.metrics import MetricsMiddleware, ServeMetrics
from lepton.serve.settings import ENV_MODEL, ENV_SETTINGS, ServeSettings
from lepton.tasks import kind_of

log = logging.getLogger(__name__)

# Test-only: milliseconds every model call sleeps first, so tests can fill the queue on purpose.
TEST_DELAY_ENV = "LEPTON_SERVE_TEST_DELAY_MS"


# ---------------------------------------------------------------------- response models


class Message(BaseModel):
    detail: str


class ScorecardSummary(BaseModel):
    name: str
    split: str | None = None
    n_examples: int | None = None
    headline: str | None = None
    value: float | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None
    latency_b1_p50_ms: float | None = None
    size_mb: float | None = None
    runtime: str | None = None


class Limits(BaseModel):
    max_inputs: int
    max_chars: int
    max_body_bytes: int
    max_batch: int
    model_batch: int  # inputs per model call (set, or measured at start-up)
    max_wait_ms: float
    max_queue: int


class ModelInfo(BaseModel):
    name: str
    task: str
    labels: list[str]
    pair: bool
    max_length: int
    runtime: str | None
    source_model: str | None
    lepton_version: str | None
    created: str | None
    scorecards: list[ScorecardSummary]
    # A multi-task model's tasks, the main one first; extra ones at POST /v1/tasks/{name}/predict.
    tasks: list[str] = []
    limits: Limits


class Status(BaseModel):
    status: str


# ---------------------------------------------------------------------- helpers


def request_model(pair: bool, settings: ServeSettings) -> type[BaseModel]:
    """The body of POST /v1/predict, with this server's limits in its schema."""
    # pydantic refuses lone surrogates ("\ud800") itself, so every text encodes as UTF-8.
    text = Annotated[str, StringConstraints(max_length=settings.max_chars)]
    item: Any = tuple[text, text] if pair else text
    example = [["A man plays a guitar.", "Someone makes music."]] if pair else ["a charming and affecting film"]
    what = "(text, text_pair) pairs" if pair else "texts"
    inputs = Annotated[list[item], Field(min_length=1, max_length=settings.max_inputs,
                                         description=f"1 to {settings.max_inputs} {what}, each at most "
                                                     f"{settings.max_chars} characters",
                                         examples=[example])]
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid"), inputs=(inputs, ...))


def model_name(model_path: Path) -> str:
    """A run saves OUT/model, so a folder named "model" is known by its run folder's name."""
    folder = model_path.resolve()
    return folder.parent.name if folder.name == "model" and folder.parent.name else folder.name


def scorecard_summaries(manifest: dict[str, Any]) -> list[ScorecardSummary]:
    out = []
    for card in manifest.get("scorecards") or []:
        if not isinstance(card, dict):
            continue
        quality, eff = card.get("quality") or {}, card.get("efficiency") or {}
        headline = quality.get("headline")
        metric = (quality.get("metrics") or {}).get(headline) or {}
        latency = ((eff.get("latency_ms") or {}).get("b1_real") or {}).get("p50")
        out.append(ScorecardSummary(
            name=str(card.get("name", "")), split=card.get("split"), n_examples=card.get("n_examples"),
            headline=headline, value=metric.get("value"), ci95_low=metric.get("ci95_low"),
            ci95_high=metric.get("ci95_high"), latency_b1_p50_ms=latency, size_mb=eff.get("size_mb"),
            runtime=eff.get("runtime")))
    return out


def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";", 1)[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise HTTPException(415, f"Content-Type must be application/json (got {ctype or 'none'!r})")


# ---------------------------------------------------------------------- the app


def _predict_fn(predictor: Any, settings: ServeSettings, model_batch: int):
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0) / 1000

    def predict(items: list[Any]) -> list[dict[str, Any]]:
        if delay:
            time.sleep(delay)
        # Length-sorted sub-batches of ``model_batch``: a gathered batch shares the queue, the
        # thread hand-off and the response fan-out; the model runs at its most efficient size.
        return predictor.predict(items, batch_size=model_batch)

    return predict


_TUNE_WORDS = ("the film is a quiet and often funny look at two brothers who return home after "
               "many years to find that nothing and everyone has changed in the small town").split()


def tune_model_batch(predictor: Any, max_batch: int, *, items: int = 32, repeats: int = 2) -> dict[str, Any]:
    """Time the model per input at batch sizes 1, 2, 4 ... up to ``max_batch`` (at most 32) on
    sentences of 6-30 words; returns the fastest size and the times. Hand-written: no library
    tunes a CPU server's batch size. On CPUs, small encoders often gain little from batching
    (and padding costs), so the answer is frequently a small size; on GPUs it is the largest."""
    texts = [" ".join(_TUNE_WORDS[(i * 7) % 10:(i * 7) % 10 + 6 + (i * 5) % 25]) for i in range(items)]
    sample: list[Any] = [(t, t) for t in texts] if predictor.task.pair else texts
    sizes = [b for b in (1, 2, 4, 8, 16, 32) if b <= max_batch]
    per_item: dict[int, float] = {}
    predictor.predict(sample[:4], batch_size=min(4, max_batch))  # first call: allocations, threads
    for _ in range(repeats):  # interleaved, best of the repeats
        for b in sizes:
            started = time.perf_counter()
            predictor.predict(sample, batch_size=b)
            took = (time.perf_counter() - started) / len(sample) * 1000
            per_item[b] = min(per_item.get(b, took), took)
    best = min(sizes, key=lambda b: per_item[b])
    return {"model_batch": best, "ms_per_input": {str(b): round(v, 3) for b, v in per_item.items()}}


_ERRORS = {413: {"model": Message, "description": "body too large"},
           415: {"model": Message, "description": "not JSON"},
           500: {"model": Message, "description": "the model failed on this request"},
           503: {"model": Message, "description": "queue full or shutting down; see Retry-After"}}


def _model_batch(predictor: Any, settings: ServeSettings) -> tuple[int, dict[str, Any] | None]:
    """How many inputs one model call takes: the setting, or measured at start-up (with what was measured)."""
    if settings.model_batch is not None:
        return min(settings.model_batch, settings.max_batch), None
    if settings.max_batch == 1:
        return 1, None
    tuning = tune_model_batch(predictor, settings.max_batch)
    log.info("model batch %d: the fastest per input here (ms per input by size: %s)", tuning["model_batch"],
             tuning["ms_per_input"])
    return tuning["model_batch"], tuning


def _batcher(predictor: Any, settings: ServeSettings, model_batch: int, metrics: ServeMetrics) -> MicroBatcher:
    sample = kind_of(predictor.task).warmup_input(predictor.task)
    return MicroBatcher(_predict_fn(predictor, settings, model_batch), max_batch=settings.max_batch,
                        max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, metrics=metrics,
                        warmup=[sample] * min(settings.max_batch, 4))


async def _submit(queue: MicroBatcher, inputs: list[Any]) -> Any:
    try:
        return await queue.submit(inputs)
    except QueueFullError as err:
        raise HTTPException(503, f"server busy: {err}; retry later",
                            headers={"Retry-After": RETRY_AFTER_S}) from None
    except ShuttingDownError as err:
        raise HTTPException(503, str(err), headers={"Retry-After": RETRY_AFTER_S}) from None
    except LeptonError as err:
        raise HTTPException(422, str(err)) from None
    except Exception:  # noqa: BLE001 - logged by the batcher; this request alone fails
        raise HTTPException(500, "prediction failed; the server log has the details") from None


def _add_predict_route(app: FastAPI, queue: MicroBatcher, task: Any, task_name: str | None, name: str,
                       settings: ServeSettings) -> None:
    """``POST /v1/predict`` for the main task (``task_name`` None), ``/v1/tasks/NAME/predict`` for a head."""
    Request_ = request_model(task.pair, settings)
    Response_ = create_model("PredictResponse" + (f"_{task_name}" if task_name else ""), model=(str, ...),
                             predictions=(list[kind_of(task).prediction_schema()], ...))
    path = f"/v1/tasks/{task_name}/predict" if task_name else "/v1/predict"
    summary = f"Predict task {task_name!r}" if task_name else "Predict labels or entities"

    async def predict(body: Request_) -> Any:  # type: ignore[valid-type]
        return {"model": name, "predictions": await _submit(queue, body.inputs)}

    app.post(path, response_model=Response_, responses=_ERRORS, dependencies=[Depends(require_json)],
             summary=summary, operation_id=f"predict_{task_name}" if task_name else None)(predict)


# The apps a task kind may ask for by name (``TaskKind.serving``) other than the shared
# prediction app this module builds ("predict").
def _generate_app(predictor: Any, settings: ServeSettings, name: str) -> Any:
    # Imported here: the generation engine loads torch, which the prediction app does not need.
    from lepton.serve.generation import generate_app

    return generate_app(predictor, settings, name)


OWN_APPS: dict[str, Callable[[Any, ServeSettings, str], Any]] = {"generate": _generate_app}


def create_app(model_path: str | os.PathLike[str], settings: ServeSettings | None = None, *,
               predictor: Any = None) -> FastAPI:
    """Load the model at ``model_path`` (checksums verified: ArtifactError if they do not match)
    and build the app. ``predictor``: an already loaded ``lepton.load`` result to serve instead."""
    import lepton

    settings = settings or ServeSettings()
    predictor = predictor if predictor is not None else lepton.load(model_path, public_key=settings.require_signature)
    manifest, task = predictor.manifest, predictor.task
    name = settings.name or model_name(Path(model_path))
    own_app = OWN_APPS.get(kind_of(task).serving(predictor))  # e.g. completions
    if own_app is not None:
        return own_app(predictor, settings, name)
    metrics = ServeMetrics()
    model_batch, tuning = _model_batch(predictor, settings)
    # One batcher per task (a batch holds one task's inputs): the main task's, then each extra
    # head's of a multi-task model.
    heads = getattr(predictor, "tasks", [None])[1:]
    served = {None: predictor, **{task_name: predictor.head(task_name) for task_name in heads}}
    batchers = {task_name: _batcher(p, settings, model_batch, metrics) for task_name, p in served.items()}
    info = _model_info(predictor, manifest, task, name, settings, model_batch)
    service = _PredictService(batchers, settings, metrics, info, task)

    docs = swagger_assets()
    app = FastAPI(title=f"Lepton model server: {name}", version=__version__, lifespan=service.lifespan,
                  docs_url=None, redoc_url=None,  # /docs below serves Swagger UI from local files
                  description=f"Predictions of the Lepton model {name!r} ({task.kind}). Requests "
                              "are batched with other concurrent requests on the server.")
    app.router.route_class = JSONBodyRoute  # UTF-8 and nesting errors in a body: 422 naming the field
    add_docs(app, docs)
    app.state.batcher, app.state.metrics, app.state.predictor = service.batcher, metrics, predictor
    app.state.model_batch_tuning = tuning  # what the start-up measurement found (None: not measured)

    for task_name, queue in batchers.items():
        _add_predict_route(app, queue, served[task_name].task, task_name, name, settings)
    _add_service_routes(app, service)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics,  # sees the 413s and 408s too
                       paths=frozenset(getattr(r, "path", "") for r in app.routes))
    app.add_middleware(DrainGuardMiddleware)  # outermost: answers what uvicorn cancels at shutdown
    return app


def _model_info(predictor: Any, manifest: dict[str, Any], task: Any, name: str, settings: ServeSettings,
                model_batch: int) -> ModelInfo:
    """What ``GET /v1/model`` answers: the model, its scorecards, tasks and this server's limits."""
    return ModelInfo(
        name=name, task=task.kind, labels=task.labels, pair=task.pair, max_length=task.max_length,
        runtime=manifest.get("runtime"), source_model=manifest.get("source_model"),
        lepton_version=manifest.get("lepton_version"), created=manifest.get("created"),
        scorecards=scorecard_summaries(manifest), tasks=list(getattr(predictor, "tasks", [])),
        limits=Limits(**{**settings.model_dump(include=set(Limits.model_fields)), "model_batch": model_batch}))


class _PredictService:
    """What the prediction app's lifespan and its model, health and metrics routes share: the
    batchers (one per task, the main task's first), the settings, the metrics and the model info."""

    def __init__(self, batchers: dict[str | None, MicroBatcher], settings: ServeSettings, metrics: ServeMetrics,
                 info: ModelInfo, task: Any) -> None:
        self.queues = list(batchers.values())
        self.batcher = batchers[None]
        self.settings, self.metrics, self.info, self.task = settings, metrics, info, task

    def begin_drain(self) -> None:
        log.info("shutting down: in-flight requests have %.1f s to finish; later ones get 503",
                 self.settings.drain_timeout_s)
        for queue in self.queues:
            queue.begin_drain(self.settings.drain_timeout_s)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        for queue in self.queues:
            queue.start()  # warms the model up in the background; /readyz says when it is done
        restore = on_shutdown_signal(asyncio.get_running_loop(), self.begin_drain)
        log.info("serving %s (%s, labels %s)", self.info.name, self.task.kind, self.task.labels)
        try:
            yield
        finally:
            restore()
            # uvicorn has stopped listening and waited for in-flight requests; stop the queues.
            for queue in self.queues:
                queue.begin_drain(0.0)
                await queue.close(1.0)

    async def model_info(self) -> ModelInfo:
        return self.info

    async def healthz(self) -> Status:
        return Status(status="ok")

    async def readyz(self) -> Any:
        if all(b.ready for b in self.queues):
            return Status(status="ready")
        return JSONResponse({"status": self.batcher.state}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER_S})

    async def prometheus(self) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


def _add_service_routes(app: FastAPI, service: _PredictService) -> None:
    """``GET /v1/model``, ``/healthz``, ``/readyz`` and ``/metrics``, each a method of ``service``."""
    app.add_api_route("/v1/model", service.model_info, methods=["GET"], response_model=ModelInfo,
                      summary="The served model")
    app.add_api_route("/healthz", service.healthz, methods=["GET"], response_model=Status,
                      summary="The process is alive")
    app.add_api_route("/readyz", service.readyz, methods=["GET"], response_model=Status,
                      responses={503: {"model": Status}}, summary="The model is loaded and warmed up")
    app.add_api_route("/metrics", service.prometheus, methods=["GET"], response_class=Response,
                      summary="Prometheus metrics of this process", responses={200: {"content": {"text/plain": {}}}})


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's shape ({"detail": [{loc, msg, type}]}) without echoing the input back: an
    # oversized text would otherwise return in the error.
    detail = []
    for e in exc.errors():
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            msg = f"invalid JSON: {(e.get('ctx') or {}).get('error', msg)}"
        detail.append({"loc": list(e.get("loc", ())), "msg": msg, "type": e.get("type", "invalid")})
    return JSONResponse({"detail": detail}, status_code=422)


def factory() -> FastAPI:
    """The app of one ``lepton serve --workers N`` worker: model and settings come from the
    environment that ``lepton.serve.serve`` set; each worker loads its own copy of the model."""
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise RuntimeError(f"{ENV_MODEL} is not set; start workers with `lepton serve --workers N`")
    settings = ServeSettings.model_validate_json(os.environ.get(ENV_SETTINGS) or "{}")
    from lepton.serve.guards import TimedHttpToolsProtocol

    if TimedHttpToolsProtocol is not None:  # this worker's protocol class reads its timeout here
        TimedHttpToolsProtocol.header_timeout = settings.header_timeout_s
    return create_app(model, settings)
