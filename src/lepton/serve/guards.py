"""What keeps the server answering clean 4xx/503 under bad clients and at shutdown.

- ``TimedHttpToolsProtocol``: uvicorn's HTTP protocol with a header read timeout; a connection
  that opens, or starts a request, and does not finish its headers in time is answered 408 and
  closed (uvicorn itself waits for headers forever).
- ``BodyGuardMiddleware``: 413 for a body over the limit, 408 for a body that stalls.
- ``JSONBodyRoute``: request bodies that are not UTF-8 or nest too deeply are a 422 naming the
  field (FastAPI answers both with a bare 400).
- ``DrainGuardMiddleware``: a request uvicorn cancels at its graceful-shutdown limit is answered
  503 with Retry-After instead of uvicorn's 500.

Hand-written: uvicorn and FastAPI offer no setting for any of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"

try:  # uvicorn's fast parser (the serve extra installs it); without it uvicorn's h11 is used
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools missing
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


if HttpToolsProtocol is not None:

    class TimedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        """HttpToolsProtocol with a deadline for each request's headers, from the connection's
        first byte (or its opening) to the end of the headers."""

        header_timeout = 10.0  # set by lepton.serve.serve (and a worker's factory) from settings
        max_header_bytes = 64 * 1024  # httptools itself takes headers of any size

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes = 0
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            self._header_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value))
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > self.max_header_bytes:
                # Raised inside a parser callback: uvicorn answers 400 and closes the connection.
                raise ValueError(f"request headers over {self.max_header_bytes} bytes")

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # a new request begins: its headers must come in time
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                body = b'{"detail":"request headers not received in time"}'
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()
else:  # pragma: no cover
    TimedHttpToolsProtocol = None  # type: ignore[assignment,misc]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (limit {limit} bytes)", headers={"Connection": "close"})


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s", headers={"Connection": "close"})


async def _refuse(send: Any, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close", **(headers or {})})
    await response({"type": "http"}, None, send)


class BodyGuardMiddleware:
    """413 for a body over the limit: from Content-Length before reading, else while reading
    (chunked uploads), so an oversized body is never held in memory whole; 408 when the body
    stops arriving for ``timeout`` seconds."""

    def __init__(self, app: Any, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _refuse(send, 400, "Content-Length is not a number")
                return
            if length > self.max_bytes:
                await _refuse(send, 413, BodyTooLarge(self.max_bytes).detail)
                return
        received = 0
        body_done = False
        started = False

        async def guarded_receive() -> dict:
            nonlocal received, body_done
            if body_done:  # after the body: waiting for a disconnect is not a stall
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                raise BodyTimeout(self.timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # FastAPI turns it into the 413 response
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as err:  # raised outside FastAPI's handling
            if started:
                raise
            await _refuse(send, err.status_code, err.detail)


class DrainGuardMiddleware:
    """Outermost: when uvicorn cancels a request at its graceful-shutdown limit before any
    response started, answer 503 with Retry-After (uvicorn would send 500 and log a traceback)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not started:
                with contextlib.suppress(Exception):
                    await _refuse(send, 503, "the server is shutting down; retry later",
                                  {"Retry-After": RETRY_AFTER_S})
            # Not re-raised: the request is answered, and uvicorn only waits for it to end.


def _first_bad_string(value: Any, path: list[Any]) -> list[Any] | None:
    """The JSON path of the first string (or key) holding bytes that were not UTF-8."""
    if isinstance(value, str):
        return path if any("\udc80" <= ch <= "\udcff" for ch in value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if _first_bad_string(k, []) is not None:
                return [*path, k]
            found = _first_bad_string(v, [*path, k])
            if found is not None:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _first_bad_string(v, [*path, i])
            if found is not None:
                return found
    return None


def _printable(part: Any) -> Any:
    """A key with bad bytes, shown with U+FFFD in their place (the answer must be UTF-8 itself)."""
    if isinstance(part, str):
        return part.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return part


class BodyError(HTTPException):
    """A request body that cannot be read as JSON; ``loc`` names where. An HTTPException, so
    FastAPI's body parsing lets it through (anything else there becomes a bare 400)."""

    def __init__(self, loc: list[Any], msg: str, kind: str) -> None:
        super().__init__(422, msg)
        self.loc, self.msg, self.kind = loc, msg, kind


def parse_json_body(body: bytes) -> Any:
    """json.loads for request bodies: invalid UTF-8 names the field it is in; JSON nested
    deeper than the parser can go is said so; both as a BodyError (the app answers 422)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        # Decode what is there, keeping the bad bytes as lone surrogates, to find their field.
        text = body.decode("utf-8", errors="surrogateescape")
        try:
            where = _first_bad_string(json.loads(text), ["body"])
        except (ValueError, RecursionError):
            where = None
        loc = [_printable(p) for p in where] if where else ["body", err.start]
        raise BodyError(loc,
                        f"invalid UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start}); "
                        "the body must be UTF-8 JSON", "utf8_invalid") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BodyError(["body"], "JSON nested too deeply", "json_too_deep") from None
    except json.JSONDecodeError:
        raise  # FastAPI's own 422 with the position
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise BodyError(["body"], f"invalid JSON: {str(err).splitlines()[0]}", "json_invalid") from None


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


class JSONBodyRoute(APIRoute):
    """An APIRoute whose JSON bodies go through ``parse_json_body``; a bad body gets
    ``body_error_response`` (FastAPI's 422 shape here; a subclass may answer in another)."""

    @staticmethod
    def body_error_response(err: BodyError) -> Response:
        return JSONResponse({"detail": [{"loc": err.loc, "msg": err.msg, "type": err.kind}]}, status_code=422)

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Any:
            try:
                return await handler(_JSONRequest(request.scope, request.receive))
            except BodyError as err:
                return self.body_error_response(err)

        return route
