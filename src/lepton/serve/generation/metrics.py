"""Prometheus metrics of a generative server, in a registry of its own.

The HTTP metric names are those of lepton.serve.metrics.ServeMetrics (one dashboard serves both
kinds of server), so its MetricsMiddleware records them here too."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lepton.serve.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

# Time per output token on a CPU: about a millisecond (tiny models) to a few hundred (large ones).
TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class GenerateMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lepton_http_requests", "HTTP requests by route and status code",
                                ["path", "status"], registry=r)
        self.latency = Histogram("lepton_http_request_duration_seconds",
                                 "Time from request to the end of the response, by route",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("lepton_generate_time_to_first_token_seconds",
                              "Time from a request's arrival to its first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("lepton_generate_time_per_output_token_seconds",
                              "Mean time per generated token after the first, per request",
                              buckets=TOKEN_BUCKETS, registry=r)
        self.decode_batch = Histogram("lepton_generate_decode_batch_size",
                                      "Sequences in one decode step (iteration-level batching)",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.decode_seconds = Histogram("lepton_generate_decode_step_seconds", "Time of one decode step",
                                        buckets=TOKEN_BUCKETS, registry=r)
        self.prefill_seconds = Histogram("lepton_generate_prefill_seconds", "Time of one prefill call",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lepton_generate_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("lepton_generate_generated_tokens", "Tokens generated", registry=r)
        self.finished = Counter("lepton_generate_requests_finished",
                                "Generation requests by how they ended (stop, length, cancelled, error)",
                                ["reason"], registry=r)
        self.queue_depth = Gauge("lepton_queue_depth", "Requests waiting to join the decode batch", registry=r)
        self.queue_capacity = Gauge("lepton_queue_capacity", "Most requests that may wait", registry=r)
        self.running = Gauge("lepton_generate_running", "Sequences in the decode batch", registry=r)
        self.ready = Gauge("lepton_ready", "1 once the model is loaded and warmed up", registry=r)

    def observe_request(self, path: str, status: int, seconds: float) -> None:  # MetricsMiddleware's hook
        self.requests.labels(path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
