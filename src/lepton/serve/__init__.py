"""HTTP serving of a saved Lepton model: FastAPI + uvicorn with dynamic micro-batching.

``lepton serve MODEL`` calls :func:`serve`; :func:`lepton.serve.app.create_app` builds the ASGI app
for embedding or testing. This module imports neither FastAPI nor uvicorn, so settings can be built
(and a missing extra reported in one line) before they are needed.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from lepton.serve.settings import (
    DRAIN_GRACE_S,
    ENV_MODEL,
    ENV_SETTINGS,
    ServeError,
    ServeSettings,
    check_port,
    require,
)

log = logging.getLogger(__name__)

__all__ = ["DRAIN_GRACE_S", "ENV_MODEL", "ENV_SETTINGS", "ServeError", "ServeSettings", "check_port", "require",
           "serve"]

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
