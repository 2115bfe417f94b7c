"""Prometheus metrics of one monitor process (its own registry, as the server's)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lepton.serve.metrics import BATCH_BUCKETS, LATENCY_BUCKETS


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lepton_http_requests", "HTTP requests by route and status code",
                                ["path", "status"], registry=r)
        self.http_latency = Histogram("lepton_http_request_duration_seconds", "Time to answer, by route",
                                      ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.items = Counter("lepton_monitor_items", "Items stored, by channel (http, replay, follow, stdin)",
                             ["channel"], registry=r)
        self.duplicates = Counter("lepton_monitor_duplicate_items",
                                  "Items whose key was stored before (not counted again)", ["channel"], registry=r)
        self.bad_items = Counter("lepton_monitor_bad_items", "Items refused or skipped as malformed, by channel",
                                 ["channel"], registry=r)
        self.refused_timestamps = Counter(
            "lepton_monitor_refused_timestamps", "Items refused for a timestamp far ahead of the stream and the "
            "clock (window.max_ahead_s), by channel; also counted in lepton_monitor_bad_items", ["channel"],
            registry=r)
        self.queue_depth = Gauge("lepton_monitor_queue_depth", "Items waiting to be predicted and stored",
                                 registry=r)
        self.batch_size = Histogram("lepton_monitor_batch_size", "Items per model call and commit",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("lepton_monitor_inference_seconds", "Model time of one batch (both tasks)",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.commit = Histogram("lepton_monitor_commit_seconds", "Database time of one batch",
                                buckets=LATENCY_BUCKETS, registry=r)
        self.ingest_latency = Histogram("lepton_monitor_ingest_latency_seconds",
                                        "From an item's arrival to its committed prediction",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.windows = Counter("lepton_monitor_windows_closed", "Topic windows closed and tested", registry=r)
        self.alerts = Counter("lepton_monitor_alert_events", "Alert events by kind (opened, updated, closed)",
                              ["event"], registry=r)
        self.open_alerts = Gauge("lepton_monitor_open_alerts", "Alert episodes open now", registry=r)
        self.drift_windows = Counter("lepton_monitor_drift_windows", "Time windows drift-checked, by verdict "
                                     "(drift, no_drift, not_tested: fewer than drift.min_items)", ["verdict"],
                                     registry=r)
        self.drift_p_value = Gauge("lepton_monitor_drift_p_value", "Holm-adjusted p-value of each drift test in "
                                   "the latest tested window", ["test"], registry=r)
        self.webhook = Counter("lepton_monitor_webhook_deliveries", "Webhook attempts by outcome",
                               ["outcome"], registry=r)
        self.ready = Gauge("lepton_monitor_ready", "1 once the model is loaded and warmed up", registry=r)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """What lepton.serve.metrics.MetricsMiddleware calls for every response."""
        self.requests.labels(path=path, status=str(status)).inc()
        self.http_latency.labels(path=path).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
