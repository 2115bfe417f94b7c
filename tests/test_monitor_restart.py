"""kill -9 during ingestion, then a restart: no acknowledged item is lost and none is counted
twice. A real ``lepton monitor`` process (a tiny random multi-task model, SQLite) reads a followed
file while a client posts batches over HTTP; the process is SIGKILLed mid-stream and started
again on the same database."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("scipy")

from tests.conftest import ROOT
from tests.monitor_fakes import T0, build_multitask_artifact

pytestmark = pytest.mark.timeout(300)

FILE_ITEMS = 2000
HTTP_BATCHES = 150
HTTP_BATCH = 8


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: Path, config: Path, stream: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lepton", "monitor", str(model), "--config", str(config),
                             "--source", f"follow:{stream}", "--source", "http"],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"monitor exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"monitor not ready in time:\n{log.read_text()[-3000:]}")


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


def _post_batches(url: str, batches: list[list[dict]], acked: set[str], stop: threading.Event) -> None:
    with httpx.Client(timeout=10) as client:
        for batch in batches:
            if stop.is_set():
                return
            try:
                r = client.post(url + "/v1/ingest", json={"items": batch})
            except httpx.HTTPError:
                return  # the server died: this batch was not acknowledged
            if r.status_code == 200:
                acked.update(it["id"] for it in batch)


@pytest.mark.slow
def test_kill_9_mid_ingestion_loses_no_acknowledged_item_and_counts_none_twice(tiny_model_dir, tmp_path) -> None:
    model = build_multitask_artifact(tiny_model_dir, tmp_path / "tiny-news" / "model")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    config = tmp_path / "monitor.yaml"
    config.write_text(json.dumps({
        "predict": {"sentiment": {"task": None}, "topic": {"task": "topic"}, "batch_size": 16},
        "window": {"width_s": 60}, "ingest": {"max_batch": 32, "max_wait_ms": 5},
        "server": {"port": port}, "output": str(out)}))
    stream = tmp_path / "stream.jsonl"
    lines = [json.dumps({"text": f"shares of company {i} fell sharply after the report", "id": f"f{i}",
                         "timestamp": T0 + i * 0.5}) for i in range(FILE_ITEMS)]
    stream.write_text("\n".join(lines) + "\n")
    batches = [[{"text": f"the team won match {b}-{j}", "id": f"h{b}-{j}", "timestamp": T0 + b}
                for j in range(HTTP_BATCH)] for b in range(HTTP_BATCHES)]
    db = out / "monitor.db"
    log = tmp_path / "monitor.log"

    proc = _start(model, config, stream, log)
    acked: set[str] = set()
    stop = threading.Event()
    try:
        _wait_ready(proc, url, log)
        poster = threading.Thread(target=_post_batches, args=(url, batches, acked, stop))
        poster.start()
        deadline = time.time() + 120
        while _count(db) < FILE_ITEMS // 3 and time.time() < deadline:
            time.sleep(0.05)
        killed_at = _count(db)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the file is not read to its end
        proc.wait(10)
        stop.set()
        poster.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 < killed_at < FILE_ITEMS, "the kill did not land mid-ingestion"
    assert 0 < len(acked) < HTTP_BATCHES * HTTP_BATCH, "the kill did not land mid-HTTP-stream"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored_ids = {r[0] for r in conn.execute("SELECT item_id FROM items WHERE source = 'http'")}
    assert acked <= stored_ids  # every acknowledged item survived the kill

    # Restart on the same database; the client sends every batch again (at-least-once delivery).
    proc = _start(model, config, stream, log)
    try:
        _wait_ready(proc, url, log)
        _post_batches(url, batches, acked, threading.Event())
        deadline = time.time() + 120
        while _count(db) < FILE_ITEMS + HTTP_BATCHES * HTTP_BATCH and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # would any line be read twice, it would be stored by now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(db) as conn:
        file_ids = [r[0] for r in conn.execute("SELECT item_id FROM items WHERE source = 'follow'")]
        http_ids = [r[0] for r in conn.execute("SELECT item_id FROM items WHERE source = 'http'")]
        counted = conn.execute("SELECT SUM(n) FROM windows").fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        offset = conn.execute("SELECT byte_offset FROM offsets").fetchone()[0]
    assert len(file_ids) == len(set(file_ids)) == FILE_ITEMS  # each line once: none lost, none twice
    assert len(http_ids) == len(set(http_ids)) == HTTP_BATCHES * HTTP_BATCH
    assert counted == total == FILE_ITEMS + HTTP_BATCHES * HTTP_BATCH  # window counts: once each
    assert offset == stream.stat().st_size
    assert "resuming at byte" in log.read_text()
