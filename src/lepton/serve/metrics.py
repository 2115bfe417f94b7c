"""Prometheus metrics of one server process, in a registry of its own (never the global one, so
two apps in one process, as in tests, do not collide)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lepton_http_requests", "HTTP requests by route and status code",
                                ["path", "status"], registry=r)
        self.latency = Histogram("lepton_http_request_duration_seconds",
                                 "Time from request to the end of the response, by route",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("lepton_batch_size", "Inputs per model call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_requests = Histogram("lepton_batch_requests", "Requests served by one model call",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("lepton_batch_duration_seconds", "Time of one model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_failures = Counter("lepton_batch_failures", "Model calls that raised", registry=r)
        self.inputs = Counter("lepton_inputs", "Inputs predicted", registry=r)
        self.queue_depth = Gauge("lepton_queue_depth", "Requests waiting for a batch", registry=r)
        self.queue_capacity = Gauge("lepton_queue_capacity", "Most requests that may wait", registry=r)
        self.ready = Gauge("lepton_ready", "1 once the model is loaded and warmed up", registry=r)
        self.swaps = Counter("lepton_model_swaps", "Hot swaps of the served model by outcome (swapped, "
                             "refused: the old model kept serving, busy: another swap was running)",
                             ["outcome"], registry=r)
        for outcome in ("swapped", "refused", "busy"):
            self.swaps.labels(outcome=outcome)
        self.artifact = Info("lepton_artifact", "The artifact being served: its path and manifest sha256",
                             registry=r)

    def set_artifact(self, path: str, sha256: str, lepton_version: str | None) -> None:
        self.artifact.info({"path": path, "sha256": sha256, "lepton_version": lepton_version or ""})

    def track_queue(self, depth: Callable[[], int], capacity: int) -> None:
        self.queue_depth.set_function(depth)
        self.queue_capacity.set(capacity)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)

    def observe_batch(self, inputs: int, requests: int, seconds: float) -> None:
        self.batch_size.observe(inputs)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)
        self.inputs.inc(inputs)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by route template and status, and times it.

    Routes are labelled by their template, unknown paths as "other", so a scan of random URLs
    cannot grow the label set. ``paths``: the app's route paths, to label requests refused before
    routing (413 from the body limit) by the path they were sent to.
    """

    def __init__(self, app: Any, metrics: ServeMetrics, paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server sends when the app raises before answering

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", None)
            if path is None:
                path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.observe_request(path, status, time.perf_counter() - start)
