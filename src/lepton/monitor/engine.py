"""The ingest loop: items in, predictions stored, windows closed and tested, alerts raised.

One worker thread owns the model and all writes of items and windows. Sources (HTTP requests,
file readers) hand it jobs through a bounded queue and wait on a future that resolves only after
the job's items are committed: that is when an item counts as acknowledged. The worker gathers
jobs into batches (up to ``ingest.max_batch`` items or ``ingest.max_wait_ms``), predicts topic
and sentiment for the whole batch, then stores items, window counts and source offsets in one
transaction. Windows close on event time: once an item stamped ``width + lateness`` after a
window's start has been stored, the window is tested (lepton.monitor.surge) and alert episodes
move on; the windows, alerts and webhook outbox rows change in one more transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from lepton.monitor.config import MonitorConfig
from lepton.monitor.metrics import MonitorMetrics
from lepton.monitor.predict import Classifier
from lepton.monitor.store import NewItem, Offset, Store, apply_closures, restore_detectors
from lepton.monitor.surge import Event, TopicDetector, window_start

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """More items wait than ``ingest.max_queue`` allows; retry later."""


class StoppedError(Exception):
    """The monitor is shutting down and takes no new items."""


class TimestampError(ValueError):
    """An item's timestamp is not a time the stream can be at (see ``Monitor.timestamp_problem``)."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"item {index}: timestamp {problem}")
        self.index, self.problem = index, problem


def _when(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"{ts:g}"


@dataclass
class RawItem:
    text: str
    ts: float | None = None  # event time (Unix seconds); None: the arrival time
    item_id: str | None = None
    source: str = "http"
    key: str | None = None  # unique key; default from source and id (None without an id)
    received_at: float = field(default_factory=time.time)
    # How it came in (http, replay, follow, stdin): the metrics' label. Never ``source``, which
    # the sender chooses and which would let a client grow the label set without bound.
    channel: str = "http"


@dataclass
class IngestResult:
    stored: list[bool]  # per item: True if new, False if its key was already stored

    @property
    def accepted(self) -> int:
        return sum(self.stored)

    @property
    def duplicates(self) -> int:
        return len(self.stored) - self.accepted


@dataclass
class _Job:
    items: list[RawItem]
    offsets: list[Offset]
    future: Future


class Monitor:
    def __init__(self, cfg: MonitorConfig, classifier: Classifier, store: Store,
                 metrics: MonitorMetrics | None = None, notifier: Any = None) -> None:
        self.cfg = cfg
        self.classifier = classifier
        self.store = store
        self.metrics = metrics or MonitorMetrics()
        self.notifier = notifier
        self.width = cfg.window.width_s
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._pending = 0  # items queued, not yet committed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.detectors: dict[str, TopicDetector] = {}
        # The per-window drift check: the classifier's DriftBinding (lepton.monitor.predict), if any.
        self.drift: Any = getattr(classifier, "drift", None) if cfg.drift.enabled else None
        self.max_ts: float | None = None
        self.ready = False
        # (arrival, commit) wall times of the latest items, for benchmarks and the dashboard.
        self.latencies: deque[float] = deque(maxlen=200_000)
        self.committed = 0
        self.metrics.track_queue(lambda: self._pending)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self.detectors = restore_detectors(self.store, self.cfg.surge, self.width)
        self.max_ts = self.store.max_ts()
        self._close_windows()  # a crash between an item commit and its close pass left work
        self.classifier.classify(["warm up"])  # first call: allocations, thread pools
        self._thread = threading.Thread(target=self._run, name="lepton-monitor-ingest", daemon=True)
        self._thread.start()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("monitor ready: %d items stored in %s", self.store.count_items(), self.store.where)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs (up to ``timeout`` seconds), then stop the worker."""
        self.ready = False
        self.metrics.ready.set(0)
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline and self._thread and self._thread.is_alive():
            time.sleep(0.02)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))

    @property
    def pending(self) -> int:
        return self._pending

    # ------------------------------------------------------------------ submitting

    def timestamp_problem(self, ts: float | None) -> str | None:
        """Why ``ts`` cannot be taken (None: it can): not finite, before 1970, or more than
        ``window.max_ahead_s`` ahead of both the newest stored item and the wall clock. Such an
        item would move the watermark (and close every open window) for good."""
        if ts is None:
            return None
        if not math.isfinite(ts) or ts < 0:
            return f"{ts} is not Unix seconds"
        ahead = self.cfg.window.max_ahead_s
        limit = max(self.max_ts if self.max_ts is not None else 0.0, time.time()) + ahead
        if ts > limit:
            return (f"{_when(ts)} is more than window.max_ahead_s={ahead:g} s ahead of the newest item and "
                    f"the clock (latest allowed now: {_when(limit)})")
        return None

    def refused(self, channel: str, where: str, problem: str) -> None:
        """Count and log one item refused for its timestamp."""
        self.metrics.refused_timestamps.labels(channel=channel).inc()
        self.metrics.bad_items.labels(channel=channel).inc()
        log.warning("refused: %s: timestamp %s", where, problem)

    def submit(self, items: list[RawItem], offsets: list[Offset] | None = None, *,
               block: bool = False) -> Future:
        """Queue ``items`` (and the source offsets to store with them); the future resolves to an
        IngestResult once they are committed. A full queue raises QueueFullError, or with
        ``block`` waits for room (file sources: back-pressure instead of refusal). An item whose
        timestamp ``timestamp_problem`` refuses raises TimestampError: nothing is queued."""
        for i, it in enumerate(items):
            problem = self.timestamp_problem(it.ts)
            if problem is not None:
                raise TimestampError(i, problem)
        if self._stop.is_set() or (self._thread is not None and not self._thread.is_alive()):
            raise StoppedError("the monitor is shutting down")
        while True:
            with self._lock:
                if self._pending == 0 or self._pending + len(items) <= self.cfg.ingest.max_queue:
                    self._pending += len(items)
                    break
            if not block:
                raise QueueFullError(f"{self._pending} items are waiting (ingest.max_queue "
                                     f"{self.cfg.ingest.max_queue})")
            if self._stop.wait(0.01):
                raise StoppedError("the monitor is shutting down")
        future: Future = Future()
        self._queue.put(_Job(items, list(offsets or []), future))
        return future

    # ------------------------------------------------------------------ the worker

    def _gather(self) -> list[_Job]:
        try:
            jobs = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        size = len(jobs[0].items)
        deadline = time.monotonic() + self.cfg.ingest.max_wait_ms / 1000
        while size < self.cfg.ingest.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            size += len(job.items)
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            jobs = self._gather()
            if not jobs:
                continue
            count = sum(len(j.items) for j in jobs)
            try:
                results = self._ingest(jobs)
            except Exception as err:  # noqa: BLE001 - nothing of this batch is acknowledged
                log.exception("ingest of %d items failed; none of them is stored", count)
                for job in jobs:
                    job.future.set_exception(err)
            else:
                for job, result in zip(jobs, results):
                    job.future.set_result(result)
            finally:
                with self._lock:
                    self._pending -= count
            try:
                self._close_windows()
            except Exception:  # noqa: BLE001 - the windows stay open; the next batch retries
                log.exception("closing windows failed; will retry after the next batch")
                self.detectors = restore_detectors(self.store, self.cfg.surge, self.width)

    def _ingest(self, jobs: list[_Job]) -> list[IngestResult]:
        items = [it for job in jobs for it in job.items]
        started = time.perf_counter()
        preds = self.classifier.classify([it.text for it in items])
        predicted = time.perf_counter()
        rows = []
        for it, p in zip(items, preds):
            ts = it.ts if it.ts is not None else it.received_at
            key = it.key if it.key is not None else (f"id:{it.source}:{it.item_id}" if it.item_id is not None
                                                     else None)
            rows.append(NewItem(key=key, item_id=it.item_id, source=it.source, text=it.text, ts=ts,
                                received_at=it.received_at, topic=p.topic, topic_score=p.topic_score,
                                sentiment=p.sentiment, sentiment_score=p.sentiment_score,
                                negative_score=p.negative_score,
                                negative=p.sentiment == self.classifier.negative_label, scores=p.scores,
                                wstart=window_start(ts, self.width)))
        offsets = [off for job in jobs for off in job.offsets]
        new = self.store.add_items(rows, offsets)
        committed = time.time()
        m = self.metrics
        m.inference.observe(predicted - started)
        m.commit.observe(time.perf_counter() - predicted)
        m.batch_size.observe(len(items))
        for it, fresh in zip(items, new):
            (m.items if fresh else m.duplicates).labels(channel=it.channel).inc()
            m.ingest_latency.observe(committed - it.received_at)
            self.latencies.append(committed - it.received_at)
        self.committed += sum(new)
        stamps = [r.ts for r, fresh in zip(rows, new) if fresh]
        if stamps:
            self.max_ts = max(stamps) if self.max_ts is None else max(self.max_ts, max(stamps))
        results, i = [], 0
        for job in jobs:
            results.append(IngestResult(new[i:i + len(job.items)]))
            i += len(job.items)
        return results

    # ------------------------------------------------------------------ windows and alerts

    def _close_windows(self) -> None:
        if self.max_ts is None:
            return
        watermark = self.max_ts - self.cfg.window.lateness_s
        steps: list[tuple] = []
        starts: set[float] = set()
        for topic, start, n, k in self.store.open_windows():
            if start + self.width > watermark:
                continue
            starts.add(start)
            det = self.detectors.get(topic)
            if det is None:
                det = self.detectors[topic] = TopicDetector(topic, self.cfg.surge, self.width)
            test, events = det.close_window(start, n, k)
            steps += [("event", e) for e in events]
            steps.append(("window", topic, start, test, det.episode))
        for det in self.detectors.values():
            closed = det.expire(watermark)
            if closed is not None:
                steps.append(("event", closed))
        drift = self._check_drift(sorted(starts))
        steps += drift
        if not steps:
            return
        apply_closures(self.store, steps, webhook=self.cfg.alerts.webhook is not None)
        events = [s[1] for s in steps if s[0] == "event"]
        self.metrics.windows.inc(sum(1 for s in steps if s[0] == "window"))
        self.metrics.open_alerts.set(sum(d.in_episode for d in self.detectors.values()))
        for event in events:
            self._announce(event)
        for step in drift:
            self._report_drift(*step[1:])
        if events and self.notifier is not None:
            self.notifier.wake()

    # ------------------------------------------------------------------ drift per time window

    @property
    def drift_status(self) -> str:
        """In words, whether (and on what) the per-window drift check runs."""
        if not self.cfg.drift.enabled:
            return "off (drift.enabled is false)"
        if self.drift is None:
            return "off (the model has no drift reference)"
        ref = self.drift.reference
        return f"on: the {self.drift.head} head against its {ref.split} set ({len(ref)} examples)"

    def _check_drift(self, starts: list[float]) -> list[tuple]:
        """``("drift", start, end, head, result)`` per time window closing now (across all
        topics): its stored items against the model's drift reference (what the store holds, so a
        restart checks a window the same way). A check that fails is logged, not stored."""
        binding = self.drift
        if binding is None or not starts:
            return []
        from lepton.evaluation.drift import check_window

        steps: list[tuple] = []
        for start in starts:
            texts, labels, scores = self.store.window_items(start, binding.head)
            try:
                result = check_window(binding.reference, texts=texts, tokenizer=binding.tokenizer,
                                      predictions=labels, confidences=scores, alpha=self.cfg.drift.alpha,
                                      min_items=self.cfg.drift.min_items)
            except Exception:  # noqa: BLE001 - the drift check must never stop the windows closing
                log.exception("drift check of the window at %s failed; it is not stored", _when(start))
                continue
            steps.append(("drift", start, start + self.width, binding.head, result.to_dict()))
        return steps

    def _report_drift(self, start: float, end: float, head: str, result: dict[str, Any]) -> None:
        verdict = "drift" if result["drift"] else "no_drift" if result["tests"] else "not_tested"
        self.metrics.drift_windows.labels(verdict=verdict).inc()
        for test in result["tests"]:
            self.metrics.drift_p_value.labels(test=test["name"]).set(test["p_adjusted"])
        if result["drift"]:
            log.warning("DRIFT window %s to %s (%d items, %s head): %s", _when(start), _when(end), result["n_new"],
                        head, "; ".join(result["reasons"]))
        else:
            log.debug("drift window %s (%d items): %s", _when(start), result["n_new"], result["verdict"])

    def _announce(self, event: Event) -> None:
        self.metrics.alerts.labels(event=event.kind).inc()
        if not self.cfg.alerts.log:
            return
        ep = event.episode
        base = f"{ep.baseline_share:.1%}" if ep.baseline_share is not None else "n/a"
        log.warning("ALERT %s #%s topic=%r: negative share peak %.1f%% vs baseline %s, %d of %d items "
                    "negative in %d window(s), min p=%.2g", event.kind, ep.id, ep.topic, ep.peak_share * 100,
                    base, ep.negative, ep.n, ep.windows, ep.min_p)
