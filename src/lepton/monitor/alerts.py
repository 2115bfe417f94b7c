"""Webhook delivery of alert events, from the outbox table, in a background thread.

The engine writes an outbox row in the same transaction that opens, updates or closes an alert,
so an event is never lost to a crash; this thread posts the rows (JSON, one event per request)
and marks each delivered on a 2xx answer. A failure (connection error, timeout, non-2xx) is
retried after ``backoff_s`` doubling up to ``backoff_max_s``, ``max_attempts`` times in all, then
marked failed and logged.

``timeout_s`` bounds the whole of one delivery (connecting, sending, and the answer, however
slowly a receiver trickles it), not each read. Deliveries of different alerts run side by side
(up to ``max_in_flight``), so one slow or failing delivery holds up only the later events of its
own alert: a receiver always sees an alert's events in order. Ingestion never waits for any of this.
"""

from __future__ import annotations

import asyncio
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
    return min(cfg.backoff_s * 2.0 ** min(attempt - 1, 60), cfg.backoff_max_s)


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
        """Stop; a delivery still in flight is abandoned and stays pending (sent again after a restart)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _due(self, busy: set[int], limit: int) -> tuple[list[tuple[int, int, str, int]], float | None]:
        """The first pending row of each alert not in ``busy`` that is due now, oldest first (at
        most ``limit``), and when the next of the others falls due (None: none waits)."""
        rows = self.store.query(
            "SELECT o.id, o.alert_id, o.payload, o.attempts, o.next_at FROM outbox o WHERE o.status = 'pending' "
            "AND o.id = (SELECT MIN(p.id) FROM outbox p WHERE p.alert_id = o.alert_id AND p.status = 'pending') "
            "ORDER BY o.id")
        now, later = time.time(), None
        due: list[tuple[int, int, str, int]] = []
        for row_id, alert_id, payload, attempts, next_at in rows:
            if int(alert_id) in busy:
                continue
            if float(next_at) > now:
                later = float(next_at) if later is None else min(later, float(next_at))
            elif len(due) < limit:
                due.append((int(row_id), int(alert_id), payload, int(attempts)))
        return due, later

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        import httpx

        in_flight: dict[int, asyncio.Task] = {}  # alert id -> its delivery
        async with httpx.AsyncClient(timeout=self.cfg.timeout_s) as client:
            try:
                while not self._stop.is_set():
                    in_flight = {a: t for a, t in in_flight.items() if not t.done()}
                    try:
                        due, later = self._due(set(in_flight), self.cfg.max_in_flight - len(in_flight))
                    except Exception:  # noqa: BLE001 - the database may be briefly busy; try again
                        log.exception("webhook: reading the outbox failed")
                        due, later = [], time.time() + 1.0
                    for row_id, alert_id, payload, attempts in due:
                        in_flight[alert_id] = asyncio.create_task(self._deliver(client, row_id, payload, attempts))
                    wait = 1.0 if later is None else min(1.0, max(0.0, later - time.time()))
                    await self._pause(wait, list(in_flight.values()))
            finally:
                for task in in_flight.values():
                    task.cancel()
                await asyncio.gather(*in_flight.values(), return_exceptions=True)

    async def _pause(self, seconds: float, tasks: list[asyncio.Task]) -> None:
        """Until ``seconds`` pass, a delivery ends, or ``wake``/``stop`` is called."""
        deadline = time.monotonic() + seconds
        while not self._wake.is_set() and time.monotonic() < deadline:
            if tasks:
                done, _ = await asyncio.wait(tasks, timeout=min(0.05, max(0.0, deadline - time.monotonic())))
                if done:
                    return
            else:
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        self._wake.clear()

    async def _post(self, client: Any, payload: str) -> str | None:
        """One delivery within ``timeout_s`` in all; None on a 2xx answer, else what went wrong."""
        try:
            response = await asyncio.wait_for(
                client.post(self.cfg.url, content=payload, headers={"Content-Type": "application/json",
                                                                      "User-Agent": "lepton-monitor"}),
                timeout=self.cfg.timeout_s)
        except asyncio.TimeoutError:
            return f"no complete answer within timeout_s={self.cfg.timeout_s:g} s"
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any transport failure is retried
            return f"{type(err).__name__}: {err}"
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"

    async def _deliver(self, client: Any, row_id: int, payload: str, attempts: int) -> None:
        error = await self._post(client, payload)
        try:
            self._record(row_id, payload, attempts + 1, error)
        except Exception:  # noqa: BLE001 - the row stays pending and is sent again
            log.exception("webhook: recording the outcome of outbox row %d failed", row_id)

    def _record(self, row_id: int, payload: str, attempt: int, error: str | None) -> None:
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
