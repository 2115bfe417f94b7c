"""The monitor over HTTP: ingestion acknowledged after the commit, 4xx naming the field for bad
items, metrics and health, and the dashboard rendered in headless Chromium with its charts and an
alert (checked in the DOM and a screenshot)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("scipy")

from fastapi.testclient import TestClient

from lepton.monitor.app import create_app
from tests.conftest import chromium, needs_chromium
from tests.monitor_fakes import T0, synthetic_items
from tests.test_monitor_engine import SURGE, make_monitor

pytestmark = pytest.mark.timeout(180)

@pytest.fixture()
def client(tmp_path: Path):
    monitor = make_monitor(tmp_path, ingest={"max_items": 5, "max_chars": 50, "max_body_bytes": 2000})
    with TestClient(create_app(monitor)) as c:
        yield c
    monitor.stop()


def test_ingest_answers_after_the_commit_and_counts_an_id_once(client) -> None:
    items = [{"text": "sports bad game", "timestamp": "2023-11-14T22:13:20Z", "id": "a"},
             {"text": "business good", "timestamp": T0 + 1, "id": 7, "source": "wire"},
             {"text": "sports fine"}]
    r = client.post("/v1/ingest", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 3, "duplicates": 0}
    store = client.app.state.monitor.store
    assert store.count_items() == 3  # stored before the answer came
    row = store.query("SELECT ts, source, item_id FROM items WHERE item_id = 'a'")[0]
    assert row == (T0, "http", "a")
    again = client.post("/v1/ingest", json={"items": items[:2]})
    assert again.json() == {"accepted": 0, "duplicates": 2}
    assert store.count_items() == 3


@pytest.mark.parametrize("body, field", [
    ({"items": [{"text": "ok"}, {"txt": "typo"}]}, "items.1.text"),
    ({"items": [{"text": "ok"}, {"text": "x", "txt": "typo"}]}, "items.1.txt"),
    ({"items": [{"text": "   "}]}, "items.0.text"),
    ({"items": [{"text": "x" * 51}]}, "items.0.text"),
    ({"items": [{"text": "ok", "timestamp": "yesterday"}]}, "items.0.timestamp"),
    ({"items": [{"text": "ok", "timestamp": True}]}, "items.0.timestamp"),
    ({"items": [{"text": "ok", "id": ""}]}, "items.0.id"),
    ({"items": []}, "items"),
    ({"items": [{"text": "ok"}] * 6}, "items"),
    ({"inputs": ["ok"]}, "items"),
])
def test_bad_items_get_422_naming_the_field(client, body, field) -> None:
    r = client.post("/v1/ingest", json=body)
    assert r.status_code == 422
    assert field in [d["field"] for d in r.json()["detail"]], r.json()
    assert client.app.state.monitor.store.count_items() == 0  # nothing of a bad request is stored


def test_non_json_and_oversized_bodies(client) -> None:
    r = client.post("/v1/ingest", content=b"text", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/v1/ingest", content=b"{bad json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "invalid JSON" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/ingest", json={"items": [{"text": "x" * 40}] * 5 + [{"text": "y" * 2000}]})
    assert r.status_code == 413


def test_metrics_health_and_readiness(client) -> None:
    client.post("/v1/ingest", json={"items": [{"text": "sports good"}]})
    client.post("/v1/ingest", json={"items": []})
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    text = client.get("/metrics").text
    for name in ("lepton_monitor_items_total", "lepton_monitor_queue_depth", "lepton_monitor_inference_seconds",
                 "lepton_monitor_ingest_latency_seconds", "lepton_monitor_alert_events", "lepton_monitor_open_alerts"):
        assert name in text
    assert 'lepton_monitor_items_total{channel="http"} 1.0' in text
    assert 'lepton_monitor_bad_items_total{channel="http"} 1.0' in text
    assert 'lepton_http_requests_total{path="/v1/ingest",status="422"} 1.0' in text
    client.app.state.monitor.ready = False
    assert client.get("/readyz").status_code == 503
    assert client.post("/v1/ingest", json={"items": [{"text": "x"}]}).status_code == 503


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def live_dashboard(tmp_path: Path):
    """A real server on a loopback port with a stream that holds one alert."""
    import uvicorn

    monitor = make_monitor(tmp_path, server={"refresh_s": 0.5})
    items = synthetic_items(3200, surge=SURGE)
    for i in range(0, len(items), 100):
        from lepton.monitor.engine import RawItem

        monitor.submit([RawItem(it["text"], it["timestamp"], it["id"]) for it in items[i:i + 100]],
                       block=True).result()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(monitor), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/", monitor
    server.should_exit = True
    thread.join(10)
    monitor.stop()


@needs_chromium
def test_dashboard_renders_charts_and_the_alert_in_chromium(tmp_path: Path, live_dashboard) -> None:
    import re

    url, monitor = live_dashboard
    alert = monitor.store.alerts()[0]
    done = chromium(tmp_path, "--virtual-time-budget=4000", "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-loaded="1"' in dom  # the script ran and fetched the state
    assert '<b id="stat-items">3200</b>' in dom
    charts = re.findall(r'<svg[^>]*class="topic-chart"[^>]*data-topic="([^"]+)"', dom)
    assert sorted(charts) == ["business", "sports"]
    assert len(re.findall(r'class="volume"', dom)) >= 2 * 50  # a bar per window and topic
    assert dom.count('class="negative-share"') == 2
    # The alert: a band on the business chart, a row in the table, its items listed.
    business = dom[dom.index('data-topic="business"'):]
    business = business[:business.index("</svg>")]
    assert f'class="alert-band" data-alert-id="{alert["id"]}"' in business
    assert re.search(rf'<tr class="alert-row[^"]*" data-alert-id="{alert["id"]}" data-status="closed">', dom)
    rows = re.findall(r'<tr class="alert-item"><td class="score">([0-9.]+)</td><td>([^<]+)</td>', dom)
    assert len(rows) == monitor.cfg.alerts.top_items
    assert all(float(score) == pytest.approx(0.9) and text.startswith("business") and " bad " in text
               for score, text in rows)


@needs_chromium
def test_dashboard_screenshot_is_not_blank(tmp_path: Path, live_dashboard) -> None:
    url, _ = live_dashboard
    shot = tmp_path / "dashboard.png"
    done = chromium(tmp_path, "--virtual-time-budget=4000", f"--screenshot={shot}", "--window-size=1400,900", url)
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1400, 900)
    assert len(data) > 30_000  # an empty page compresses to a few KB; charts and tables do not
