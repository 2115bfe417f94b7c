"""The monitor's HTTP side: ``POST /v1/ingest``, the dashboard, its JSON, metrics and health.

``POST /v1/ingest`` answers only after its items are committed (200 with how many were new);
a full queue gets 503 with Retry-After, a malformed body 4xx naming the field (the server's
rules: 413 over the body limit, 415 for a non-JSON body, 422 for bad fields).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.

import asyncio
import logging
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from lepton.core import __version__
from lepton.monitor.engine import Monitor, QueueFullError, RawItem, StoppedError, TimestampError
from lepton.monitor.items import item_model
from lepton.serve.app import require_json
from lepton.serve.guards import BodyGuardMiddleware, JSONBodyRoute
from lepton.serve.metrics import MetricsMiddleware

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"
MAX_ID = 2**63 - 1  # the database's integer range: a larger id names no alert


class IngestResponse(BaseModel):
    accepted: int = Field(description="items stored now")
    duplicates: int = Field(description="items whose id was stored before (not counted again)")


class Status(BaseModel):
    status: str


def _ingest_request(monitor: Monitor) -> type[BaseModel]:
    limits = monitor.cfg.ingest
    Item = item_model(limits.max_chars)
    items = Annotated[list[Item], Field(min_length=1, max_length=limits.max_items,
                                        description=f"1 to {limits.max_items} items")]
    return create_model("IngestRequest", __config__=ConfigDict(extra="forbid"), items=(items, ...))


def _dashboard_state(monitor: Monitor, since: float | None) -> dict[str, Any]:
    store, cfg = monitor.store, monitor.cfg
    width = cfg.window.width_s
    if since is None and monitor.max_ts is not None:
        since = monitor.max_ts - 96 * width  # the last 96 windows by default
    return {
        "name": cfg.name, "width_s": width, "alpha": cfg.surge.alpha, "now_ts": monitor.max_ts,
        "negative_label": cfg.predict.negative_label,
        "items": store.counted(), "pending": monitor.pending, "ready": monitor.ready,
        "windows": store.series(since=since, limit=5000),
        "alerts": store.alerts(limit=50),
        "drift": _drift_state(monitor, 48),
    }


def _drift_state(monitor: Monitor, limit: int) -> dict[str, Any]:
    """The per-window drift check: whether it runs, on what, and its latest windows, newest first."""
    cfg = monitor.cfg.drift
    return {"enabled": monitor.drift is not None, "status": monitor.drift_status, "alpha": cfg.alpha,
            "min_items": cfg.min_items, "windows": monitor.store.drift_windows(limit=limit)}


def create_app(monitor: Monitor) -> FastAPI:
    cfg = monitor.cfg
    app = FastAPI(title=f"Lepton monitor: {cfg.name}", version=__version__,
                  description="Topic and sentiment over a text stream, surge alerts per topic.")
    app.state.monitor = monitor
    app.router.route_class = JSONBodyRoute  # bodies not UTF-8 or nested too deeply: 422 naming the field
    service = _MonitorService(monitor, _dashboard_page(monitor))
    _add_ingest_route(app, monitor)
    _add_service_routes(app, service)
    app.add_exception_handler(RequestValidationError, service.invalid_request)
    app.add_middleware(BodyGuardMiddleware, max_bytes=cfg.ingest.max_body_bytes, timeout=cfg.server.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=monitor.metrics,
                       paths=frozenset(getattr(r, "path", "") for r in app.routes))
    return app


def _dashboard_page(monitor: Monitor) -> str:
    """dashboard.html with this monitor's refresh interval and (escaped) name filled in."""
    cfg = monitor.cfg
    page = resources.files("lepton.monitor").joinpath("dashboard.html").read_text(encoding="utf-8")
    return page.replace("__REFRESH_MS__", str(int(cfg.server.refresh_s * 1000))).replace(
        "__TITLE__", cfg.name.replace("<", "&lt;"))


def _add_ingest_route(app: FastAPI, monitor: Monitor) -> None:
    """``POST /v1/ingest``, its body model built from this monitor's limits."""
    IngestRequest = _ingest_request(monitor)

    async def ingest(body: IngestRequest) -> Any:  # type: ignore[valid-type]
        if not monitor.ready:
            raise HTTPException(503, "not ready", headers={"Retry-After": RETRY_AFTER_S})
        raws = [RawItem(text=i.text, ts=i.timestamp, item_id=i.id, source=i.source) for i in body.items]
        refused = [(n, p) for n, p in ((n, monitor.timestamp_problem(r.ts)) for n, r in enumerate(raws)) if p]
        for n, problem in refused:
            monitor.refused("http", f"items.{n}.timestamp", problem)
        if refused:
            return _timestamp_refusal(refused)
        try:
            future = monitor.submit(raws)
        except TimestampError as err:  # the watermark cannot move back, so this is a safety net only
            return _timestamp_refusal([(err.index, err.problem)])
        except (QueueFullError, StoppedError) as err:
            raise HTTPException(503, f"{err}; retry later", headers={"Retry-After": RETRY_AFTER_S}) from None
        try:
            result = await asyncio.wrap_future(future)
        except Exception:  # noqa: BLE001 - logged by the engine; nothing of this request is stored
            raise HTTPException(500, "storing the items failed; nothing was stored; the log has details") from None
        return IngestResponse(accepted=result.accepted, duplicates=result.duplicates)

    app.post("/v1/ingest", response_model=IngestResponse, dependencies=[Depends(require_json)],
             summary="Store items with their predictions (answers after the commit)",
             responses={503: {"description": "queue full or not ready; see Retry-After"}})(ingest)


def _timestamp_refusal(refused: list[tuple[int, str]]) -> JSONResponse:
    """422 naming each item whose timestamp the monitor cannot take (nothing of the request is stored)."""
    detail = [{"loc": ["body", "items", n, "timestamp"], "field": f"items.{n}.timestamp",
               "msg": f"refused: {problem}", "type": "timestamp_ahead"} for n, problem in refused]
    return JSONResponse({"detail": detail}, status_code=422)


class _MonitorService:
    """The dashboard, alert, health and metrics routes of one monitor, and its handler of invalid
    requests, as methods."""

    def __init__(self, monitor: Monitor, page: str) -> None:
        self.monitor, self.page = monitor, page

    async def dashboard(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    def dashboard_state(self, since: float | None = Query(None, description="Unix seconds", ge=-1e12, le=1e12,
                                                          allow_inf_nan=False)) -> Any:
        return _dashboard_state(self.monitor, since)

    def alerts(self, limit: int = Query(50, ge=1, le=1000)) -> Any:
        return self.monitor.store.alerts(limit=limit)

    def drift(self, limit: int = Query(50, ge=1, le=1000)) -> Any:
        return _drift_state(self.monitor, limit)

    def alert(self, alert_id: int = Path(description="an alert's id", ge=0, le=MAX_ID)) -> Any:
        found = self.monitor.store.alert(alert_id)
        if found is None:
            raise HTTPException(404, f"alert {alert_id}: no such alert")
        from lepton.monitor.predict import alert_drivers

        items = self.monitor.store.alert_items(alert_id, self.monitor.cfg.alerts.top_items)
        # the words that drove the items' negative predictions (token attributions; None without them)
        return {**found, "items": items, "drivers": alert_drivers(self.monitor.classifier, items)}

    async def healthz(self) -> Status:
        return Status(status="ok")

    async def readyz(self) -> Any:
        if self.monitor.ready:
            return Status(status="ready")
        return JSONResponse({"status": "starting or stopping"}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER_S})

    async def metrics(self) -> Response:
        body, content_type = self.monitor.metrics.render()
        return Response(body, media_type=content_type)

    async def invalid_request(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field in one line too ("items.3.text: ..."), and never echo the input back.
        detail = []
        for e in exc.errors():
            loc = [p for p in e.get("loc", ()) if p != "body"]
            msg = e.get("msg", "invalid")
            if e.get("type") == "json_invalid":
                msg = f"invalid JSON: {(e.get('ctx') or {}).get('error', msg)}"
            detail.append({"loc": list(e.get("loc", ())), "field": ".".join(map(str, loc)) or "body",
                           "msg": msg, "type": e.get("type", "invalid")})
        self.monitor.metrics.bad_items.labels(channel="http").inc()
        return JSONResponse({"detail": detail}, status_code=422)


def _add_service_routes(app: FastAPI, service: _MonitorService) -> None:
    app.add_api_route("/", service.dashboard, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    app.add_api_route("/v1/dashboard", service.dashboard_state, methods=["GET"],
                      summary="Windows per topic and alerts, as the dashboard draws them")
    app.add_api_route("/v1/alerts", service.alerts, methods=["GET"], summary="Alert episodes, newest first")
    app.add_api_route("/v1/alerts/{alert_id}", service.alert, methods=["GET"],
                      summary="One alert and the most negative items that drove it")
    app.add_api_route("/v1/drift", service.drift, methods=["GET"],
                      summary="The drift check per time window: whether it runs, and the latest windows, newest first")
    app.add_api_route("/healthz", service.healthz, methods=["GET"], response_model=Status)
    app.add_api_route("/readyz", service.readyz, methods=["GET"], response_model=Status,
                      responses={503: {"model": Status}})
    app.add_api_route("/metrics", service.metrics, methods=["GET"], response_class=Response,
                      summary="Prometheus metrics")
