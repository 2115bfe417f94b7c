"""What the prediction app (``lepton.serve.app``) and the generative app
(``lepton.serve.generation.app``) share: /docs served from local files, the drain on SIGTERM and
the hot swap on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI

log = logging.getLogger(__name__)


def on_shutdown_signal(loop: asyncio.AbstractEventLoop, begin_drain: Any) -> Any:
    """Call ``begin_drain`` on the loop when SIGTERM or SIGINT arrives, then whatever handled the
    signal before (uvicorn's, which stops listening and waits for open requests). Returns a
    function that puts the previous handlers back. Only the main thread can set signal handlers
    (a TestClient runs the app in another): there it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(sig: int, frame: Any) -> None:
        loop.call_soon_threadsafe(begin_drain)
        before = previous.get(sig)
        if callable(before):
            before(sig, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, before in previous.items():
            signal.signal(sig, before)

    return restore


def on_reload_signal(loop: asyncio.AbstractEventLoop, reload: Any) -> Any:
    """Call ``reload`` on the loop when SIGHUP arrives (a hot swap from the same path; without a
    handler SIGHUP would end the server). Returns a function that puts the previous handler back.
    Only in the main thread, and only where SIGHUP exists."""
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(sighup, lambda sig, frame: loop.call_soon_threadsafe(reload))
    return lambda: signal.signal(sighup, previous)


def swagger_assets() -> Path | None:
    """The folder of Swagger UI's files from the swagger-ui-bundle package, None if missing."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    folder = Path(swagger_ui_bundle.swagger_ui_path)
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI, assets: Path | None) -> None:
    """/docs from local files: no page of this server loads anything from the internet. Without
    swagger-ui-bundle, /docs is off (the schema stays at /openapi.json)."""
    if assets is None:
        log.info("/docs is off: swagger-ui-bundle is not installed (the schema is at /openapi.json)")
        return
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Any:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")
