"""``lepton monitor``: load the models, open the store, start the engine, the sources and the
HTTP server, and run until stopped (or, with ``exit_when_done``, until the file sources end)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from lepton.monitor.config import MonitorConfig, load_config
from lepton.monitor.sources import SourceSpec, parse_source, start_sources

log = logging.getLogger(__name__)


def build_monitor(models: list[str] | None, cfg: MonitorConfig, *, classifier: Any = None,
                  public_key: str | os.PathLike[str] | None = None) -> Any:
    """The engine over its store (and webhook notifier), not yet started. ``classifier``: an
    object with ``classify(texts)`` to use instead of loading ``models``. ``public_key``: refuse
    any model whose manifest that key's holder did not sign."""
    from lepton.monitor.alerts import WebhookNotifier
    from lepton.monitor.engine import Monitor
    from lepton.monitor.metrics import MonitorMetrics
    from lepton.monitor.predict import load_classifier
    from lepton.monitor.store import Store, store_url

    if classifier is None:  # verifies the checksums (and the signatures) first, before writing anything
        classifier = load_classifier(list(models or []), cfg.predict, public_key=public_key,
                                     drift=cfg.drift.enabled)
    out = Path(cfg.output)
    _make_output(out)
    store = Store(store_url(cfg.store.url, out))
    metrics = MonitorMetrics()
    notifier = WebhookNotifier(store, cfg.alerts.webhook, metrics) if cfg.alerts.webhook else None
    return Monitor(cfg, classifier, store, metrics, notifier)


def _make_output(out: Path) -> None:
    """The output folder (where SQLite lives), created if missing; one line when it cannot be."""
    from lepton.monitor.config import MonitorConfigError

    if out.exists() and not out.is_dir():
        raise MonitorConfigError(f"output: {out} exists and is not a folder")
    from lepton.runtimes.saved import is_saved_model

    inside = next((p for p in (out.resolve(), *out.resolve().parents) if is_saved_model(p)), None)
    if inside is not None:
        raise MonitorConfigError(f"output: {out} is inside the saved model {inside}; a model folder holds only "
                                 "what its manifest lists (give another folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from lepton.core.atomic import describe

        raise MonitorConfigError(f"output: cannot create {out} ({describe(err)})") from None


def run_monitor(models: list[str], config: str | os.PathLike[str] | None = None, *,
                sources: list[str] = (), speed: float = 0.0, overrides: list[str] = (),
                exit_when_done: bool = False, log_level: str = "info",
                public_key: str | os.PathLike[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM (or, with ``exit_when_done``, the end of the file sources);
    returns 0. A source that fails is a MonitorError naming it, once everything has stopped."""
    cfg = load_config(config, overrides)
    specs: list[SourceSpec] = [parse_source(s) for s in sources] or [SourceSpec("http")]
    _check_run(cfg, specs, speed, exit_when_done)
    monitor = build_monitor(models, cfg, public_key=public_key)
    stop = threading.Event()
    # Our own SIGTERM/SIGINT handling (uvicorn runs in a thread, where it installs none): stop
    # taking items, let the queued ones commit, then exit 0. The previous handlers come back at the end.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    running: list = []
    server = thread = None
    try:
        monitor.start()
        if monitor.notifier is not None:
            monitor.notifier.start()
        running = start_sources(monitor, specs, speed)
        if cfg.server.enabled:
            server, thread = _start_server(monitor, cfg, log_level)
        if exit_when_done and running:
            _exit_when(running, stop.set)
        _wait_for_stop(stop, thread, cfg)
    finally:
        _shut_down(monitor, running, server, thread)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [s for s in running if s.error is not None]
    if failed:
        from lepton.monitor.config import MonitorError

        raise MonitorError("; ".join(f"{s.name}: {_describe(s.error)}" for s in failed)
                           + " (the items read before it are stored)")
    return 0


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError):
        from lepton.core.atomic import describe

        return describe(err)
    return str(err) or type(err).__name__


def _check_run(cfg: MonitorConfig, specs: list[SourceSpec], speed: float, exit_when_done: bool = False) -> None:
    """Refuse a bad --speed or an http source without the server; with the server, check that
    its packages are installed and its port is free, before anything starts."""
    import math

    from lepton.monitor.config import MonitorConfigError

    if not math.isfinite(speed) or speed < 0:
        raise MonitorConfigError(f"--speed {speed}: give 0 (as fast as possible) or a positive factor")
    if exit_when_done and not any(s.kind in ("replay", "stdin") for s in specs):
        raise MonitorConfigError("--exit-when-done stops once the replay and stdin sources end: give one "
                                 "(--source replay:FILE.jsonl or stdin); a followed file or http never ends")
    if any(s.kind == "http" for s in specs) and not cfg.server.enabled:
        raise MonitorConfigError("--source http needs the server (server.enabled is false)")
    if cfg.server.enabled:
        from lepton.serve import check_port, require

        require("fastapi")
        require("uvicorn")
        check_port(cfg.server.host, cfg.server.port)


def _start_server(monitor: Any, cfg: MonitorConfig, log_level: str) -> tuple[Any, threading.Thread]:
    """The HTTP server (ingest, dashboard) running in a daemon thread; returns it and its thread."""
    import uvicorn

    from lepton.monitor.app import create_app
    from lepton.serve.guards import TimedHttpToolsProtocol

    options: dict[str, Any] = {}
    if TimedHttpToolsProtocol is not None:  # close connections whose headers stall, as lepton serve
        TimedHttpToolsProtocol.header_timeout = cfg.server.header_timeout_s
        options["http"] = TimedHttpToolsProtocol
    else:
        log.warning("httptools is not installed: no header read timeout (pip install 'lepton[serve]')")
    server = uvicorn.Server(uvicorn.Config(create_app(monitor), host=cfg.server.host,
                                           port=cfg.server.port, log_level=log_level,
                                           access_log=False, lifespan="off", **options))
    thread = threading.Thread(target=server.run, name="lepton-monitor-http", daemon=True)
    thread.start()
    log.info("dashboard: http://%s:%d/", cfg.server.host, cfg.server.port)
    return server, thread


def _wait_for_stop(stop: threading.Event, thread: threading.Thread | None, cfg: MonitorConfig) -> None:
    """Wait until ``stop`` is set; ServeError if the HTTP server's thread ends first."""
    while not stop.wait(0.5):
        if thread is not None and not thread.is_alive():
            from lepton.serve import ServeError

            raise ServeError(f"the HTTP server on {cfg.server.host}:{cfg.server.port} stopped")


def _shut_down(monitor: Any, running: list, server: Any, thread: threading.Thread | None) -> None:
    """Stop the server (in-flight requests finish first), the sources, the engine (queued items
    commit), the notifier, and close the store."""
    if server is not None and thread is not None:
        server.should_exit = True  # in-flight requests finish first
        thread.join(30)
    for src in running:
        src.stop.set()
    monitor.stop()
    if monitor.notifier is not None:
        monitor.notifier.stop()
    monitor.store.close()


def _exit_when(running: list, action: Any) -> None:
    def wait() -> None:
        for src in running:
            src.done.wait()
        log.info("every source has ended; stopping (--exit-when-done)")
        action()

    threading.Thread(target=wait, name="lepton-monitor-exit", daemon=True).start()
