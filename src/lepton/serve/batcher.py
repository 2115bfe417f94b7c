"""Dynamic micro-batching: concurrent requests share one model call.

Requests wait in a bounded queue. One worker task takes the oldest waiting request, then gathers
more until the batch holds ``max_batch`` inputs or the oldest has waited ``max_wait_ms`` since it
arrived, and runs the model on the whole batch in a thread, so the event loop keeps accepting and
answering while the model computes. The wait counts from arrival (as Triton's queue delay does):
a request that already waited out the previous batch starts at once with whatever came meanwhile,
so under load batches fill while the model runs, and only a request that finds the worker idle
waits for company. A full queue refuses at once (the app answers 503 with Retry-After): waiting
requests are bounded, never an unbounded backlog.

The queue is a deque plus an event rather than an ``asyncio.Queue``: waiting for "more work or
the deadline" is then a wait on the event, with no timed ``Queue.get`` that can lose an item when
the timeout and the item arrive together (Python < 3.12), and a request that does not fit in the
batch stays at the head of the queue for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lepton.core.errors import LeptonError
from lepton.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

PredictFn = Callable[[list[Any]], list[dict[str, Any]]]


class QueueFullError(Exception):
    """The request queue is at its limit; the client should retry later."""


class ShuttingDownError(Exception):
    """The server is draining and takes no new work."""


@dataclass
class _Job:
    inputs: Sequence[Any]
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0  # loop time


class MicroBatcher:
    def __init__(self, predict: PredictFn, *, max_batch: int, max_wait_ms: float, max_queue: int,
                 metrics: ServeMetrics | None = None, warmup: list[Any] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._metrics = metrics
        self._warmup = warmup
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set when nothing waits and no batch runs
        self._worker: asyncio.Task | None = None
        self._closing = False
        self._running: list[_Job] = []  # the batch the model is computing now
        self._deadline: float | None = None  # loop time by which a draining server answers all
        self._per_input: float | None = None  # smoothed seconds per input of recent batches
        self.state = "not started"  # "warming up", "ready", "warm-up failed", "shutting down"
        if metrics is not None:
            metrics.track_queue(self.depth, max_queue)

    def depth(self) -> int:
        return len(self._pending)

    @property
    def ready(self) -> bool:
        """The warm-up prediction ran and work is taken."""
        return self.state == "ready"

    def start(self) -> None:
        """Start the worker on the running loop; it warms the model up, then serves."""
        self._wakeup, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self.state = "warming up"
        self._worker = asyncio.create_task(self._run(), name="lepton-batcher")

    async def submit(self, inputs: Sequence[Any]) -> list[dict[str, Any]]:
        """Predict ``inputs`` (one request) as part of a batch; one result per input.

        Raises QueueFullError or ShuttingDownError at once, or what the model raised for this
        request (the request alone, see ``_run_batch``).
        """
        if self._closing or self._worker is None:
            raise ShuttingDownError("the server is shutting down" if self._closing else "not started")
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(f"the request queue is full ({self.max_queue} waiting)")
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop.create_future(), loop.time())
        self._pending.append(job)
        self._idle.clear()
        self._wakeup.set()
        return await job.future

    def begin_drain(self, seconds: float) -> None:
        """Shutdown has begun (SIGTERM): refuse new work; answer everything waiting or running
        within ``seconds``. What cannot finish by then is refused 503 (ShuttingDownError): at
        once when the recent time per input says it cannot, else at the deadline."""
        if self._deadline is not None:
            return
        loop = asyncio.get_running_loop()
        self._closing = True
        self.state = "shutting down"
        if self._metrics is not None:
            self._metrics.ready.set(0)
        self._deadline = loop.time() + seconds
        loop.call_at(self._deadline, self._expire)
        self._shed()

    def _refuse(self, job: _Job, why: str) -> None:
        if not job.future.done():
            job.future.set_exception(ShuttingDownError(why))

    def _shed(self) -> None:
        """Refuse now the waiting requests that the estimate says cannot finish by the deadline."""
        if self._deadline is None or self._per_input is None:
            return
        loop = asyncio.get_running_loop()
        ahead = sum(len(j.inputs) for j in self._running)  # the running batch finishes first
        kept: deque[_Job] = deque()
        for job in self._pending:
            ahead += len(job.inputs)
            if loop.time() + ahead * self._per_input > self._deadline:
                ahead -= len(job.inputs)
                self._refuse(job, "the server is shutting down and cannot run this request before "
                                  "its drain deadline; retry it")
            else:
                kept.append(job)
        self._pending = kept
        if not self._pending and not self._running:
            self._idle.set()

    def _expire(self) -> None:
        """The drain deadline: whatever is still waiting or running gets its 503 now."""
        why = "the server shut down before this request finished (drain deadline reached); retry it"
        for job in [*self._running, *self._pending]:
            self._refuse(job, why)
        self._pending.clear()
        self._idle.set()

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let waiting and running batches finish (up to ``timeout`` s), stop."""
        self._closing = True
        self.state = "shutting down"
        if self._metrics is not None:
            self._metrics.ready.set(0)
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("shutdown: %d requests still waiting after %.1f s; answering them 503",
                        len(self._pending), timeout)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(ShuttingDownError("the server shut down before this request ran"))

    async def retire(self, timeout: float) -> int:
        """A hot swap replaced this batcher's model: no new work comes (the app sends it to the
        new one); let what is queued or running finish here, up to ``timeout`` s, then stop. What
        is left by then is answered ShuttingDownError (503 + Retry-After). The server's readiness
        is the new model's: the ready gauge is left alone. Returns the requests refused."""
        self._closing = True
        self.state = "retired"
        if self._worker is None:
            return 0
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("swap: the old model still had %d requests after %.1f s; answering them 503",
                        len(self._pending) + len(self._running), timeout)
        left = [job for job in [*self._running, *self._pending] if not job.future.done()]
        self._pending.clear()
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        for job in left:
            self._refuse(job, "the model was swapped before this request finished; retry it")
        return len(left)

    # ------------------------------------------------------------------ the worker

    async def _run(self) -> None:
        warmed = True
        if self._warmup:
            try:
                await asyncio.to_thread(self._predict, list(self._warmup))
            except Exception:  # a model that cannot predict stays not-ready, and says why
                log.exception("warm-up prediction failed; /readyz stays 503")
                warmed = False
        if not self._closing:
            self.state = "ready" if warmed else "warm-up failed"
        if self._metrics is not None:
            self._metrics.ready.set(int(warmed))
        while True:
            while not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            jobs = await self._gather()
            try:
                await self._run_batch(jobs)
            except Exception:  # never let the worker die: every later request would hang
                log.exception("batch failed unexpectedly")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("prediction failed"))
            if not self._pending:
                self._idle.set()

    async def _gather(self) -> list[_Job]:
        """Take the oldest request and as many more as fit, until it has waited max_wait."""
        loop = asyncio.get_running_loop()
        jobs = [self._pending.popleft()]
        size = len(jobs[0].inputs)
        deadline = jobs[0].arrived + self.max_wait
        while size < self.max_batch:
            if self._pending:
                if size + len(self._pending[0].inputs) > self.max_batch:
                    break  # it leads the next batch
                job = self._pending.popleft()
                jobs.append(job)
                size += len(job.inputs)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run_batch(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # a client that went away was cancelled
        if not jobs:
            return
        flat = [x for job in jobs for x in job.inputs]
        start = time.perf_counter()
        self._running = jobs
        try:
            try:
                results = await asyncio.to_thread(self._predict, flat)
            finally:
                self._running = []
                took = (time.perf_counter() - start) / max(1, len(flat))
                self._per_input = took if self._per_input is None else 0.7 * self._per_input + 0.3 * took
                self._shed()
            if len(results) != len(flat):
                raise RuntimeError(f"the model returned {len(results)} results for {len(flat)} inputs")
        except Exception as err:
            if self._metrics is not None:
                self._metrics.batch_failures.inc()
            if len(jobs) > 1:  # find the request that broke it; the others still get answers
                log.warning("a batch of %d requests failed (%s); running them one by one", len(jobs), err)
                for job in jobs:
                    await self._run_batch([job])
                return
            if not isinstance(err, LeptonError):  # a LeptonError is the caller's input: 422
                log.error("prediction failed for a request of %d inputs", len(flat), exc_info=err)
            if not jobs[0].future.done():
                jobs[0].future.set_exception(err)
            return
        if self._metrics is not None:
            self._metrics.observe_batch(len(flat), len(jobs), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            n = len(job.inputs)
            if not job.future.done():
                job.future.set_result(results[offset:offset + n])
            offset += n

