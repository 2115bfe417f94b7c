"""Webhook delivery of alert events, from the outbox table, in a background thread.

The engine writes an outbox row in the same transaction that opens, updates or closes an alert,
so an event is never lost to a crash; this thread posts the rows in order (JSON, one event per
request) and marks each delivered on a 2xx answer. A failure (connection error, timeout, non-2xx)
is retried after ``backoff_s`` doubling up to ``backoff_max_s``, ``max_attempts`` times in all,
then marked failed and logged. Later events wait behind a retried one, so a receiver always sees
an alert's events in order. Ingestion never waits for any of this.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from lepton.monitor.config import WebhookConfig
from lepton.monitor.metrics import MonitorMetrics
from lepton.monitor.store import Store

log = logging.getLogger(__name__)


def backoff(attempt: int, cfg: WebhookConfig) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return min(cfg.backoff_s * 2 ** (attempt - 1), cfg.backoff_max_s)


class WebhookNotifier:
    def __init__(self, store: Store, cfg: WebhookConfig, metrics: MonitorMetrics | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lepton-monitor-webhook", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self) -> tuple[int, str, int, float] | None:
        rows = self.store.query("SELECT id, payload, attempts, next_at FROM outbox WHERE status = 'pending' "
                                "ORDER BY id LIMIT 1")
        return (int(rows[0][0]), rows[0][1], int(rows[0][2]), float(rows[0][3])) if rows else None

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.cfg.timeout_s) as client:
            while not self._stop.is_set():
                try:
                    row = self._next()
                except Exception:  # noqa: BLE001 - the database may be briefly busy; try again
                    log.exception("webhook: reading the outbox failed")
                    row = None
                    self._stop.wait(1.0)
                if row is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                row_id, payload, attempts, next_at = row
                wait = next_at - time.time()
                if wait > 0:
                    self._wake.wait(min(wait, 1.0))
                    self._wake.clear()
                    continue
                self._deliver(client, row_id, payload, attempts)

    def _deliver(self, client: Any, row_id: int, payload: str, attempts: int) -> None:
        attempt = attempts + 1
        try:
            response = client.post(self.cfg.url, content=payload,
                                   headers={"Content-Type": "application/json",
                                            "User-Agent": "lepton-monitor"})
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except Exception as err:  # noqa: BLE001 - any transport failure is retried
            error = f"{type(err).__name__}: {err}"
        now = time.time()
        with self.store.transaction() as cur:
            if error is None:
                cur.execute("UPDATE outbox SET status = 'delivered', attempts = ?, delivered_at = ?, "
                            "last_error = NULL WHERE id = ?", (attempt, now, row_id))
            elif attempt >= self.cfg.max_attempts:
                cur.execute("UPDATE outbox SET status = 'failed', attempts = ?, last_error = ? WHERE id = ?",
                            (attempt, error, row_id))
            else:
                cur.execute("UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
                            (attempt, now + backoff(attempt, self.cfg), error, row_id))
        outcome = "delivered" if error is None else "failed" if attempt >= self.cfg.max_attempts else "retry"
        if self.metrics is not None:
            self.metrics.webhook.labels(outcome=outcome).inc()
        if error is None:
            log.info("webhook: delivered %s (attempt %d)", json.loads(payload)["event"], attempt)
        elif outcome == "failed":
            log.error("webhook %s: giving up on outbox row %d after %d attempts (%s)", self.cfg.url, row_id,
                      attempt, error)
        else:
            log.warning("webhook %s: attempt %d failed (%s); retrying in %.1f s", self.cfg.url, attempt, error,
                        backoff(attempt, self.cfg))
