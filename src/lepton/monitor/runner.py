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


def build_monitor(models: list[str] | None, cfg: MonitorConfig, *, classifier: Any = None) -> Any:
    """The engine over its store (and webhook notifier), not yet started. ``classifier``: an
    object with ``classify(texts)`` to use instead of loading ``models``."""
    from lepton.monitor.alerts import WebhookNotifier
    from lepton.monitor.engine import Monitor
    from lepton.monitor.metrics import MonitorMetrics
    from lepton.monitor.predict import load_classifier
    from lepton.monitor.store import Store, store_url

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if classifier is None:
        classifier = load_classifier(list(models or []), cfg.predict)  # verifies the checksums first
    store = Store(store_url(cfg.store.url, out))
    metrics = MonitorMetrics()
    notifier = WebhookNotifier(store, cfg.alerts.webhook, metrics) if cfg.alerts.webhook else None
    return Monitor(cfg, classifier, store, metrics, notifier)


def run_monitor(models: list[str], config: str | os.PathLike[str] | None = None, *,
                sources: list[str] = (), speed: float = 0.0, overrides: list[str] = (),
                exit_when_done: bool = False, log_level: str = "info") -> int:
    """Run until SIGINT/SIGTERM; returns the exit code."""
    cfg = load_config(config, overrides)
    specs: list[SourceSpec] = [parse_source(s) for s in sources] or [SourceSpec("http")]
    _check_run(cfg, specs, speed)
    monitor = build_monitor(models, cfg)
    monitor.start()
    if monitor.notifier is not None:
        monitor.notifier.start()
    running = start_sources(monitor, specs, speed)
    stop = threading.Event()
    # Our own SIGTERM/SIGINT handling (uvicorn runs in a thread, where it installs none): stop
    # taking items, let the queued ones commit, then exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = thread = None
    try:
        if cfg.server.enabled:
            server, thread = _start_server(monitor, cfg, log_level)
        if exit_when_done and running:
            _exit_when(running, stop.set)
        _wait_for_stop(stop, thread, cfg)
    finally:
        _shut_down(monitor, running, server, thread)
    failed = [s for s in running if s.error is not None]
    for s in failed:
        log.error("source %s failed: %s", s.name, s.error)
    return 1 if failed else 0


def _check_run(cfg: MonitorConfig, specs: list[SourceSpec], speed: float) -> None:
    """Refuse a bad --speed or an http source without the server; with the server, check that
    its packages are installed and its port is free, before anything starts."""
    if speed < 0:
        from lepton.monitor.config import MonitorConfigError

        raise MonitorConfigError(f"--speed {speed}: give 0 (as fast as possible) or a positive factor")
    if any(s.kind == "http" for s in specs) and not cfg.server.enabled:
        from lepton.monitor.config import MonitorConfigError

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

    server = uvicorn.Server(uvicorn.Config(create_app(monitor), host=cfg.server.host,
                                           port=cfg.server.port, log_level=log_level,
                                           access_log=False, lifespan="off"))
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
