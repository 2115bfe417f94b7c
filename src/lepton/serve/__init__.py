"""HTTP serving of a saved Lepton model: FastAPI + uvicorn with dynamic micro-batching.

``lepton serve MODEL`` calls :func:`serve`; :func:`lepton.serve.app.create_app` builds the ASGI app
for embedding or testing. This module imports neither FastAPI nor uvicorn, so settings can be built
(and a missing extra reported in one line) before they are needed.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lepton.core.errors import LeptonError, MissingExtraError

log = logging.getLogger(__name__)

__all__ = ["ServeError", "ServeSettings", "serve"]

# How `lepton serve --workers N` hands the model and settings to each worker process.
ENV_MODEL = "LEPTON_SERVE_MODEL"
ENV_SETTINGS = "LEPTON_SERVE_SETTINGS"
DRAIN_GRACE_S = 5.0  # after the drain deadline, for answers still being written to slow clients


class ServeError(LeptonError):
    """The server cannot start with the given settings (bad limit, port in use ...)."""


class ServeSettings(BaseModel):
    """Everything ``lepton serve`` can be told; the defaults are the CLI's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)  # processes; each loads its own copy of the model
    name: str | None = None  # shown in /v1/model; default: the artifact's run folder name
    max_batch: int = Field(32, ge=1, le=4096)  # inputs gathered from concurrent requests
    # Inputs per model call within a gathered batch (length-sorted sub-batches); None: the size
    # with the lowest time per input, measured on this machine when the server starts.
    model_batch: int | None = Field(None, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)  # how long a batch waits for company
    max_queue: int = Field(256, ge=1)  # requests waiting for a batch; beyond it: 503
    max_inputs: int = Field(64, ge=1)  # inputs in one request
    max_chars: int = Field(10_000, ge=1)  # characters in one input text
    max_body_bytes: int = Field(1 << 20, ge=1)  # request body size; beyond it: 413
    # Graceful shutdown: in-flight requests have this long after SIGTERM; what cannot finish
    # in time is answered 503 with Retry-After.
    drain_timeout_s: float = Field(30.0, ge=0, le=3600)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)  # a request's headers must arrive in time
    body_timeout_s: float = Field(30.0, gt=0, le=3600)  # a body that stalls this long: 408
    require_signature: str | None = None  # a public key file: serve only a model its holder signed
    access_log: bool = False
    log_level: str = "info"

    @classmethod
    def build(cls, **values: object) -> ServeSettings:
        """Validate, turning a bad value into one ServeError line naming the option."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as err:
            first = err.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            field = field[:-2] if field.endswith("_s") else field  # drain_timeout_s: --drain-timeout
            option = "--" + field.replace("_", "-") if field else "settings"
            raise ServeError(f"{option}: {first['msg']} (got {first.get('input')!r})") from None


def require(module: str, extra: str = "serve") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{module} is needed here: pip install 'lepton[{extra}]'") from err


def check_port(host: str, port: int) -> None:
    """Fail in one line, before the model loads, when the address cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve(model_path: str | os.PathLike[str], settings: ServeSettings | None = None) -> int:
    """Run the HTTP server until SIGTERM/SIGINT; returns the exit code.

    The artifact's checksums are verified before the server listens: a damaged or tampered model
    raises ArtifactError and nothing is served. With ``workers > 1`` every worker process loads
    its own copy of the model (memory grows with N) and keeps its own /metrics.
    """
    settings = settings or ServeSettings()
    require("fastapi")
    uvicorn = require("uvicorn")
    check_port(settings.host, settings.port)
    from lepton.serve.guards import TimedHttpToolsProtocol

    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
              "access_log": settings.access_log, "lifespan": "on",
              # The app answers every request by the drain deadline (503 for what cannot finish);
              # uvicorn's own limit comes later, for responses still being sent.
              "timeout_graceful_shutdown": settings.drain_timeout_s + DRAIN_GRACE_S}
    if TimedHttpToolsProtocol is not None:
        TimedHttpToolsProtocol.header_timeout = settings.header_timeout_s
        common["http"] = TimedHttpToolsProtocol
    else:
        log.warning("httptools is not installed: no header read timeout (pip install 'lepton[serve]')")
    if settings.workers == 1:
        from lepton.serve.app import create_app

        app = create_app(model_path, settings)  # loads and verifies: raises before listening
        # uvicorn re-raises a SIGTERM it handled once it has shut down; a clean drain exits 0.
        previous = signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            uvicorn.run(app, **common)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0

    from lepton.pipeline.artifact import read_manifest

    # Verify once here (each worker verifies again as it loads).
    read_manifest(model_path, public_key=settings.require_signature)
    os.environ[ENV_MODEL] = str(Path(model_path).resolve())
    os.environ[ENV_SETTINGS] = settings.model_dump_json()
    if "OMP_NUM_THREADS" not in os.environ:  # N processes x all cores each would oversubscribe
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.workers))
    uvicorn.run("lepton.serve.app:factory", factory=True, workers=settings.workers, **common)
    return 0
