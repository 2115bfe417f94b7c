"""The HTTP app: ``create_app(model_path, settings)`` loads a Lepton model (verifying every
checksum) and returns a FastAPI app that serves it.

Endpoints: ``POST /v1/predict``, ``POST /v1/explain`` (``lepton.serve.explain_route``),
``GET /v1/model``, ``/healthz``, ``/readyz``, ``/metrics``,
``POST /v1/admin/swap`` (hot swap, with ``--admin-token``; see ``lepton.serve.swap``), and
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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from lepton.core import __version__
from lepton.core.errors import LeptonError
from lepton.serve.appkit import add_docs, on_reload_signal, on_shutdown_signal, swagger_assets
from lepton.serve.batcher import MicroBatcher, QueueFullError, ShuttingDownError
from lepton.serve.guards import (
    RETRY_AFTER_S,
    BodyGuardMiddleware,
    DrainGuardMiddleware,
    JSONBodyRoute,
)
from lepton.serve.metrics import MetricsMiddleware, ServeMetrics
from lepton.serve.settings import ENV_MODEL, ENV_SETTINGS, ServeSettings
from lepton.serve.swap import Artifact, Health, SwapRefused, SwapRequest, admin_guard, artifact_of, check_compatible
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
    artifact: Artifact | None = None  # the served artifact's path and manifest sha256


class SwapResult(BaseModel):
    status: str
    artifact: Artifact
    previous: Artifact


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


def _batcher(predictor: Any, settings: ServeSettings, model_batch: int, metrics: ServeMetrics, *,
             warm: bool = True) -> MicroBatcher:
    sample = kind_of(predictor.task).warmup_input(predictor.task)
    return MicroBatcher(_predict_fn(predictor, settings, model_batch), max_batch=settings.max_batch,
                        max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, metrics=metrics,
                        warmup=[sample] * min(settings.max_batch, 4) if warm else None)


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


@dataclass
class _Served:
    """One loaded model and what serves it (a batcher per task, the main task's first, its info
    and artifact): a hot swap replaces the whole of it at once."""

    predictor: Any
    batchers: dict[str | None, MicroBatcher]
    info: ModelInfo
    artifact: Artifact
    path: str  # as given: SIGHUP reloads the folder now at this path

    @property
    def queues(self) -> list[MicroBatcher]:
        return list(self.batchers.values())


def _serve_model(predictor: Any, path: str | os.PathLike[str], settings: ServeSettings, model_batch: int,
                 metrics: ServeMetrics, *, warm: bool = True) -> _Served:
    """Batchers for a loaded model (one per task: a batch holds one task's inputs) and what it is."""
    heads = getattr(predictor, "tasks", [None])[1:]
    served = {None: predictor, **{task_name: predictor.head(task_name) for task_name in heads}}
    batchers = {task_name: _batcher(p, settings, model_batch, metrics, warm=warm) for task_name, p in served.items()}
    artifact = artifact_of(path, predictor.manifest, signed=settings.require_signature is not None)
    name = settings.name or model_name(Path(path))
    info = _model_info(predictor, predictor.manifest, predictor.task, name, settings, model_batch, artifact)
    return _Served(predictor, batchers, info, artifact, str(path))


def _add_predict_route(app: FastAPI, service: "_PredictService", task: Any, task_name: str | None,
                       settings: ServeSettings) -> None:
    """``POST /v1/predict`` for the main task (``task_name`` None), ``/v1/tasks/NAME/predict`` for a head."""
    Request_ = request_model(task.pair, settings)
    Response_ = create_model("PredictResponse" + (f"_{task_name}" if task_name else ""), model=(str, ...),
                             model_sha256=(str, Field(..., description="the manifest sha256 of the model that "
                                                                       "answered (see /healthz)")),
                             predictions=(list[kind_of(task).prediction_schema()], ...))
    path = f"/v1/tasks/{task_name}/predict" if task_name else "/v1/predict"
    summary = f"Predict task {task_name!r}" if task_name else "Predict labels or entities"

    async def predict(body: Request_) -> Any:  # type: ignore[valid-type]
        # Read once: a request queued before a swap is answered by the model it was queued on.
        served = service.current
        predictions = await _submit(served.batchers[task_name], body.inputs)
        return {"model": served.info.name, "model_sha256": served.artifact.sha256, "predictions": predictions}

    app.post(path, response_model=Response_, responses=_ERRORS, dependencies=[Depends(require_json)],
             summary=summary, operation_id=f"predict_{task_name}" if task_name else None)(predict)


# The apps a task kind may ask for by name (``TaskKind.serving``) other than the shared
# prediction app this module builds ("predict").
def _generate_app(predictor: Any, settings: ServeSettings, name: str, artifact: Artifact) -> Any:
    # Imported here: the generation engine loads torch, which the prediction app does not need.
    from lepton.serve.generation import generate_app

    return generate_app(predictor, settings, name, artifact)


# Each is called (predictor, settings, name, artifact).
OWN_APPS: dict[str, Callable[[Any, ServeSettings, str, Artifact], Any]] = {"generate": _generate_app}


def create_app(model_path: str | os.PathLike[str], settings: ServeSettings | None = None, *,
               predictor: Any = None) -> FastAPI:
    """Load the model at ``model_path`` (checksums verified: ArtifactError if they do not match)
    and build the app. ``predictor``: an already loaded ``lepton.load`` result to serve instead."""
    import lepton

    settings = settings or ServeSettings()
    predictor = predictor if predictor is not None else lepton.load(model_path, public_key=settings.require_signature)
    name = settings.name or model_name(Path(model_path))
    own_app = OWN_APPS.get(kind_of(predictor.task).serving(predictor))  # e.g. completions
    if own_app is not None:
        return own_app(predictor, settings, name,
                       artifact_of(model_path, predictor.manifest, signed=settings.require_signature is not None))
    metrics = ServeMetrics()
    model_batch, tuning = _model_batch(predictor, settings)
    service = _PredictService(_serve_model(predictor, model_path, settings, model_batch, metrics), settings,
                              metrics, model_batch)

    docs = swagger_assets()
    app = FastAPI(title=f"Lepton model server: {name}", version=__version__, lifespan=service.lifespan,
                  docs_url=None, redoc_url=None,  # /docs below serves Swagger UI from local files
                  description=f"Predictions of the Lepton model {name!r} ({predictor.task.kind}). Requests "
                              "are batched with other concurrent requests on the server.")
    app.router.route_class = JSONBodyRoute  # UTF-8 and nesting errors in a body: 422 naming the field
    add_docs(app, docs)
    app.state.service, app.state.metrics = service, metrics  # service.current: the model served now
    app.state.model_batch_tuning = tuning  # what the start-up measurement found (None: not measured)

    for task_name in service.current.batchers:  # a swap keeps the tasks (swap.check_compatible)
        task = predictor.task if task_name is None else predictor.head(task_name).task
        _add_predict_route(app, service, task, task_name, settings)
    from lepton.serve.explain_route import add_explain_route  # POST /v1/explain: token attributions

    add_explain_route(app, service, request_model(predictor.task.pair, settings), require_json, _ERRORS)
    _add_service_routes(app, service)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics,  # sees the 413s and 408s too
                       paths=frozenset(getattr(r, "path", "") for r in app.routes))
    app.add_middleware(DrainGuardMiddleware)  # outermost: answers what uvicorn cancels at shutdown
    return app


def _model_info(predictor: Any, manifest: dict[str, Any], task: Any, name: str, settings: ServeSettings,
                model_batch: int, artifact: Artifact | None = None) -> ModelInfo:
    """What ``GET /v1/model`` answers: the model, its scorecards, tasks and this server's limits."""
    return ModelInfo(
        name=name, task=task.kind, labels=task.labels, pair=task.pair, max_length=task.max_length,
        runtime=manifest.get("runtime"), source_model=manifest.get("source_model"),
        lepton_version=manifest.get("lepton_version"), created=manifest.get("created"),
        scorecards=scorecard_summaries(manifest), tasks=list(getattr(predictor, "tasks", [])),
        limits=Limits(**{**settings.model_dump(include=set(Limits.model_fields)), "model_batch": model_batch}),
        artifact=artifact)


class _PredictService:
    """What the prediction app's lifespan and its model, health, metrics and admin routes share:
    the model served now (``current``, replaced whole by a hot swap), the settings, the metrics."""

    def __init__(self, current: _Served, settings: ServeSettings, metrics: ServeMetrics, model_batch: int) -> None:
        self.current = current
        self.settings, self.metrics, self.model_batch = settings, metrics, model_batch
        self.closing = False
        self._swap_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()  # old models draining, SIGHUP swaps
        self._track()

    def _track(self) -> None:
        self.metrics.track_queue(lambda: sum(q.depth() for q in self.current.queues), self.settings.max_queue)
        a = self.current.artifact
        self.metrics.set_artifact(a.path, a.sha256, a.lepton_version)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def begin_drain(self) -> None:
        log.info("shutting down: in-flight requests have %.1f s to finish; later ones get 503",
                 self.settings.drain_timeout_s)
        self.closing = True
        for queue in self.current.queues:
            queue.begin_drain(self.settings.drain_timeout_s)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        for queue in self.current.queues:
            queue.start()  # warms the model up in the background; /readyz says when it is done
        loop = asyncio.get_running_loop()
        restore = on_shutdown_signal(loop, self.begin_drain)
        restore_reload = on_reload_signal(loop, self.reload)
        task = self.current.predictor.task
        log.info("serving %s (%s, labels %s; artifact sha256 %s)", self.current.info.name, task.kind, task.labels,
                 self.current.artifact.sha256)
        try:
            yield
        finally:
            restore()
            restore_reload()
            # uvicorn has stopped listening and waited for in-flight requests; stop the queues.
            for queue in self.current.queues:
                queue.begin_drain(0.0)
                await queue.close(1.0)
            if self._background:
                await asyncio.wait(list(self._background), timeout=1.0)

    # ------------------------------------------------------------------ hot swap

    def reload(self) -> None:
        """SIGHUP: swap to the artifact now at the served path (replaced atomically by the operator)."""
        path = self.current.path
        log.info("SIGHUP: swapping to the model now at %s", path)

        async def swap_logged() -> None:
            try:
                await self.swap(path)
            except SwapRefused as err:
                log.error("swap refused, the old model keeps serving: %s", err)

        self._spawn(swap_logged())

    async def swap(self, path: str) -> SwapResult:
        """Load, verify and warm up the model at ``path`` in a thread, then switch to it; requests
        already queued on the old model finish there. SwapRefused (the old model keeps serving)."""
        if self.settings.workers > 1:
            raise SwapRefused("hot swap needs --workers 1 (a swap through one worker would leave the others on "
                              "the old model); with --workers N send SIGHUP to the main process instead, which "
                              "replaces the workers one by one")
        if self.closing:
            raise SwapRefused("the server is shutting down", status=503)
        if self._swap_lock.locked():
            self.metrics.swaps.labels(outcome="busy").inc()
            raise SwapRefused("another swap is in progress; retry when it has finished")
        async with self._swap_lock:
            previous = self.current
            try:
                predictor = await asyncio.to_thread(self._prepare, path)
            except Exception as err:  # noqa: BLE001 - every failure is a refusal; the old model serves on
                self.metrics.swaps.labels(outcome="refused").inc()
                if not isinstance(err, LeptonError):
                    log.error("swap to %s failed", path, exc_info=err)
                    err = SwapRefused(f"the new model could not be loaded or warmed up: {type(err).__name__}: {err}")
                log.warning("swap to %s refused, the old model keeps serving: %s", path, err)
                raise (err if isinstance(err, SwapRefused) else SwapRefused(str(err))) from None
            if self.closing:
                self.metrics.swaps.labels(outcome="refused").inc()
                raise SwapRefused("the server began shutting down during the swap", status=503)
            new = self._switch(predictor, path)
        return SwapResult(status="swapped", artifact=new.artifact, previous=previous.artifact)

    def _prepare(self, path: str) -> Any:
        """In a thread: load (checksums and, with --require-signature, the signature verified),
        check against the served model, and warm every task up with one prediction."""
        import lepton

        predictor = lepton.load(path, public_key=self.settings.require_signature)
        app_name = kind_of(predictor.task).serving(predictor)
        if app_name != "predict":
            raise SwapRefused(f"the new model ({predictor.task.kind}) is served by the {app_name!r} app; "
                              "this server serves the prediction app")
        check_compatible(self.current.predictor, predictor)
        for task_name in [None, *getattr(predictor, "tasks", [None])[1:]]:
            head = predictor if task_name is None else predictor.head(task_name)
            sample = kind_of(head.task).warmup_input(head.task)
            head.predict([sample] * min(self.settings.max_batch, 4), batch_size=self.model_batch)
        return predictor

    def _switch(self, predictor: Any, path: str) -> _Served:
        """On the loop, with no await: new requests go to the new model from here on."""
        new = _serve_model(predictor, path, self.settings, self.model_batch, self.metrics, warm=False)
        for queue in new.queues:
            queue.start()
        old, self.current = self.current, new
        self._track()
        self.metrics.swaps.labels(outcome="swapped").inc()
        log.info("swapped to %s (sha256 %s); the old model (sha256 %s) finishes its queued requests",
                 new.artifact.path, new.artifact.sha256, old.artifact.sha256)
        self._spawn(self._retire(old))
        return new

    async def _retire(self, old: _Served) -> None:
        refused = await asyncio.gather(*(q.retire(self.settings.drain_timeout_s) for q in old.queues))
        log.info("the old model (sha256 %s) is released (%d requests left unfinished)", old.artifact.sha256,
                 sum(refused))

    async def admin_swap(self, body: SwapRequest) -> SwapResult:
        try:
            return await self.swap(body.model)
        except SwapRefused as err:
            raise HTTPException(err.status, str(err)) from None

    # ------------------------------------------------------------------ model, health, metrics

    async def model_info(self) -> ModelInfo:
        return self.current.info

    async def healthz(self) -> Health:
        return Health(status="ok", artifact=self.current.artifact)

    async def readyz(self) -> Any:
        current = self.current
        if all(b.ready for b in current.queues):
            return Health(status="ready", artifact=current.artifact)
        body = Health(status=current.batchers[None].state, artifact=current.artifact)
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    async def prometheus(self) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Message, "description": "no admin token"},
                 403: {"model": Message, "description": "wrong admin token"},
                 409: {"model": Message, "description": "swap refused (the reason); the old model keeps serving"}}


def _add_service_routes(app: FastAPI, service: _PredictService) -> None:
    """``GET /v1/model``, ``/healthz``, ``/readyz`` and ``/metrics``, each a method of ``service``;
    ``POST /v1/admin/swap`` when the server has an admin token (else no such route: 404)."""
    app.add_api_route("/v1/model", service.model_info, methods=["GET"], response_model=ModelInfo,
                      summary="The served model")
    app.add_api_route("/healthz", service.healthz, methods=["GET"], response_model=Health,
                      summary="The process is alive, and the artifact it serves")
    app.add_api_route("/readyz", service.readyz, methods=["GET"], response_model=Health,
                      responses={503: {"model": Health}}, summary="The model is loaded and warmed up")
    app.add_api_route("/metrics", service.prometheus, methods=["GET"], response_class=Response,
                      summary="Prometheus metrics of this process", responses={200: {"content": {"text/plain": {}}}})
    if service.settings.admin_token:
        app.add_api_route("/v1/admin/swap", service.admin_swap, methods=["POST"], response_model=SwapResult,
                          dependencies=[Depends(admin_guard(service.settings.admin_token)), Depends(require_json)],
                          responses=_ADMIN_ERRORS, summary="Swap to an updated model without dropping requests")


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
