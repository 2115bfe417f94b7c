"""Iteration-level scheduling: concurrent generation requests share every decode step.

One worker thread owns the engine. Each turn of its loop it (1) drops requests whose client went
away, (2) admits waiting requests while the batch has room and prefills them (their first token
comes from the prefill), (3) runs one decode step for every running sequence at once, chooses
each sequence's next token with its own sampler, and finishes those that hit eos, a stop string
or their token limit. So a new request joins between two steps and a finished one leaves at
once, without waiting for the rest of the batch (as Orca / vLLM / TGI schedule).

The asyncio side submits requests (a bounded queue: full raises QueueFullError, the app answers
503) and reads each request's chunks from an asyncio.Queue that the worker fills through
``loop.call_soon_threadsafe``, once per turn for all requests.
Hand-written: no kept library does iteration-level batching over a transformers model on a CPU.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lepton.serve.batcher import QueueFullError, ShuttingDownError
from lepton.serve.generation.engine import GenerationEngine
from lepton.serve.generation.metrics import GenerateMetrics
from lepton.serve.generation.sampling import Sampler, SamplingParams, TextStream

log = logging.getLogger(__name__)

__all__ = ["Chunk", "GenerationHandle", "Scheduler", "QueueFullError", "ShuttingDownError"]


@dataclass
class Chunk:
    """What one request gets after a scheduler turn: new text, the new token ids, and on the
    last chunk ``finish_reason`` ("stop", "length", "cancelled" or "error") and the counts."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class GenerationHandle:
    """The asyncio side of one request: iterate it for chunks; ``cancel()`` makes the request
    leave the batch at the next step."""

    def __init__(self, rid: int, prompt_tokens: int) -> None:
        self.id = rid
        self.prompt_tokens = prompt_tokens
        self.chunks: asyncio.Queue[Chunk] = asyncio.Queue()
        self.cancelled = False
        self.done = False
        # Sizes of the decode steps this request took part in (how many sequences shared each).
        self.step_sizes: list[int] = []
        self.arrived = time.perf_counter()
        self.first_token_at: float | None = None
        self._wake: Any = None  # set by the scheduler: wakes its worker

    def cancel(self) -> None:
        if not self.done and not self.cancelled:
            self.cancelled = True
            if self._wake is not None:
                self._wake()

    async def __aiter__(self):
        while True:
            chunk = await self.chunks.get()
            yield chunk
            if chunk.finish_reason is not None:
                return

    async def result(self) -> Chunk:
        """All chunks joined into one."""
        text, ids, last = [], [], Chunk()
        async for last in self:
            text.append(last.text)
            ids.extend(last.token_ids)
        return Chunk("".join(text), ids, last.finish_reason, last.prompt_tokens, last.completion_tokens, last.error)


@dataclass(eq=False)
class _Request:
    handle: GenerationHandle
    prompt: list[int]
    params: SamplingParams
    sampler: Sampler
    text: TextStream
    state: Any = None
    last_token: int = -1
    generated: int = 0


class Scheduler:
    def __init__(self, engine: GenerationEngine, tokenizer: Any, *, eos_token_ids: Sequence[int],
                 max_batch: int, max_queue: int, metrics: GenerateMetrics | None = None) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos = frozenset(int(t) for t in eos_token_ids)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = metrics or GenerateMetrics()
        self.decode_steps: Counter[int] = Counter()  # sequences per decode step -> how many steps
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._outbox: list[tuple[GenerationHandle, Chunk]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = False
        self._abort: str | None = None  # set: fail everything with this message
        self.metrics.queue_depth.set_function(lambda: len(self._waiting))
        self.metrics.running.set_function(lambda: len(self._running))
        self.metrics.queue_capacity.set(max_queue)

    # ------------------------------------------------------------------ asyncio side

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="lepton-generate", daemon=True)
        self._thread.start()
        self.metrics.ready.set(1)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        """The worker runs and new requests are taken (not draining)."""
        return self._thread is not None and self._thread.is_alive() and not (self._draining or self._stopping)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, prompt: Sequence[int], params: SamplingParams, text: TextStream | None = None) -> GenerationHandle:
        """Queue a request; raises QueueFullError or ShuttingDownError at once."""
        if self._thread is None or self._draining or self._stopping:
            raise ShuttingDownError("the server is shutting down" if self._thread else "the scheduler is not started")
        handle = GenerationHandle(next(self._ids), len(prompt))
        req = _Request(handle, list(prompt), params, Sampler(params), text or TextStream(self.tokenizer, params.stop))
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests already wait (limit {self.max_queue})")
            handle._wake = self._notify
            self._waiting.append(req)
            self._cond.notify()
        return handle

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify()

    def begin_drain(self, timeout: float) -> None:
        """Take no new requests; those already in get ``timeout`` seconds to finish."""
        self._draining = True
        if self._loop is not None:
            self._loop.call_later(timeout, self.abort, "the server is shutting down")

    def abort(self, message: str) -> None:
        with self._cond:
            self._abort = message
            self._cond.notify()

    async def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._abort = self._abort or "the server is shutting down"
            self._cond.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        self.metrics.ready.set(0)

    def _deliver(self, batch: list[tuple[GenerationHandle, Chunk]]) -> None:
        for handle, chunk in batch:
            handle.chunks.put_nowait(chunk)

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._waiting or self._running or self._abort or self._stopping):
                        self._cond.wait()
                    if self._abort:
                        self._fail_all(self._abort)
                        self._abort = None  # done; later requests are refused while draining
                    if self._stopping:
                        self._flush()
                        return
                    admitted = []
                    while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                        admitted.append(self._waiting.popleft())
                self._drop_cancelled(admitted)
                if admitted:
                    self._prefill(admitted)
                if self._running:
                    self._decode()
                self._flush()

    def _flush(self) -> None:
        if self._outbox and self._loop is not None:
            out, self._outbox = self._outbox, []
            try:
                self._loop.call_soon_threadsafe(self._deliver, out)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _finish(self, req: _Request, reason: str, error: str | None = None) -> None:
        h = req.handle
        h.done = True
        tail = req.text.finish() if reason in ("stop", "length") else ""
        self._outbox.append((h, Chunk(tail, [], reason, len(req.prompt), req.generated, error)))
        self.metrics.finished.labels(reason=reason).inc()
        if h.first_token_at is not None and req.generated > 1:
            self.metrics.tpot.observe((time.perf_counter() - h.first_token_at) / (req.generated - 1))
        if req.state is not None:
            self.engine.release([req.state])
            req.state = None

    def _fail_all(self, message: str) -> None:
        for req in [*self._waiting, *self._running]:
            self._finish(req, "error", message)
        self._waiting.clear()
        self._running = []

    def _drop_cancelled(self, admitted: list[_Request]) -> None:
        for group in (self._running, admitted):
            gone = [r for r in group if r.handle.cancelled]
            for req in gone:
                self._finish(req, "cancelled")
                group.remove(req)
        with self._cond:  # cancelled while waiting: free their place in the queue now
            for req in [r for r in self._waiting if r.handle.cancelled]:
                self._waiting.remove(req)
                self._finish(req, "cancelled")

    def _prefill(self, admitted: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            states, logits = self.engine.prefill([r.prompt for r in admitted])
        except Exception as err:  # noqa: BLE001 - these requests fail; the server goes on
            log.exception("prefill failed")
            for req in admitted:
                self._finish(req, "error", f"prefill failed: {type(err).__name__}")
            return
        self.metrics.prefill_seconds.observe(time.perf_counter() - started)
        self.metrics.prompt_tokens.inc(sum(len(r.prompt) for r in admitted))
        logits = torch.as_tensor(logits)
        for i, req in enumerate(admitted):
            req.state = states[i]
            self._running.append(req)
            self._take(req, logits[i])
        self._running = [r for r in self._running if not r.handle.done]

    def _decode(self) -> None:
        batch = self._running
        started = time.perf_counter()
        try:
            logits = torch.as_tensor(self.engine.decode_step([r.state for r in batch], [r.last_token for r in batch]))
        except Exception as err:  # noqa: BLE001
            log.exception("decode step failed")
            for req in batch:
                self._finish(req, "error", f"decode failed: {type(err).__name__}")
            self._running = []
            return
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        self.metrics.decode_batch.observe(len(batch))
        self.decode_steps[len(batch)] += 1
        for i, req in enumerate(batch):
            req.handle.step_sizes.append(len(batch))
            self._take(req, logits[i])
        self._running = [r for r in batch if not r.handle.done]

    def _take(self, req: _Request, logits: torch.Tensor) -> None:
        """Choose the request's next token; send its text; finish it if it is done."""
        token = req.sampler.choose(logits)
        req.generated += 1
        req.last_token = token
        self.metrics.generated_tokens.inc()
        h = req.handle
        if h.first_token_at is None:
            h.first_token_at = time.perf_counter()
            self.metrics.ttft.observe(h.first_token_at - h.arrived)
        if token in self.eos and not req.params.ignore_eos:
            self._outbox.append((h, Chunk("", [token])))
            self._finish(req, "stop")
            return
        text = req.text.push(token)
        self._outbox.append((h, Chunk(text, [token])))
        if req.text.stopped:
            self._finish(req, "stop")
        elif req.generated >= req.params.max_new_tokens or len(req.prompt) + req.generated >= self.engine.max_context:
            self._finish(req, "length")
