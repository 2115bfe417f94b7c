"""The monitor against bad input: a replay's last line without a newline, YAML alias bombs, a
webhook receiver that trickles its answer, alert ids past the database's range, timestamps far
ahead of the stream, unsigned models with --require-signature, and the CLI's one-line errors."""

from __future__ import annotations

import json
import logging
import math
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("scipy")
pytest.importorskip("fastapi")

from lepton.monitor.config import MonitorConfigError, load_config, parse_config
from lepton.monitor.engine import Monitor, RawItem, TimestampError
from lepton.monitor.metrics import MonitorMetrics
from lepton.monitor.sources import FileSource, StdinSource
from lepton.monitor.store import Store, StoreError
from tests.monitor_fakes import T0, KeywordClassifier, build_multitask_artifact, synthetic_items, write_jsonl

pytestmark = pytest.mark.timeout(120)

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi"))  # 10^9 values in 400 bytes


def make_monitor(tmp_path: Path, **sections) -> Monitor:
    cfg = parse_config({"window": {"width_s": 60}, "surge": {"alpha": 0.001, "min_count": 10},
                        "output": str(tmp_path), **sections})
    monitor = Monitor(cfg, KeywordClassifier(), Store(f"sqlite:///{tmp_path / 'monitor.db'}"), MonitorMetrics())
    monitor.start()
    return monitor


def replay(monitor: Monitor, path: Path) -> FileSource:
    src = FileSource(monitor, path, follow=False)
    src.run()
    return src


def metric(monitor: Monitor, name: str) -> float:
    return sum(s.value for m in monitor.metrics.registry.collect() for s in m.samples
               if s.name == name + "_total")


# ---------------------------------------------------------------------------- replay files


def test_a_replay_counts_its_last_line_without_a_newline(tmp_path: Path) -> None:
    items = synthetic_items(5)
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(it) for it in items), encoding="utf-8")  # no final newline
    monitor = make_monitor(tmp_path)
    src = replay(monitor, path)
    monitor.stop()
    assert src.error is None and src.read == 5
    assert monitor.store.count_items() == 5
    assert monitor.store.offset(src.name).byte_offset == path.stat().st_size


def test_a_followed_file_waits_for_the_newline_of_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"text": "a one", "timestamp": T0}) + "\n" + '{"text": "a tw', encoding="utf-8")
    monitor = make_monitor(tmp_path)
    src = FileSource(monitor, path, follow=True, poll_s=0.05)
    threading.Thread(target=src.run, daemon=True).start()
    deadline = time.time() + 10
    while monitor.store.count_items() < 1 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert monitor.store.count_items() == 1  # half a line is not an item yet
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('o", "timestamp": %r}\n' % (T0 + 1))
    while monitor.store.count_items() < 2 and time.time() < deadline:
        time.sleep(0.05)
    src.stop.set()
    src.done.wait(5)
    monitor.stop()
    assert monitor.store.count_items() == 2


def test_over_long_deeply_nested_and_huge_number_lines_are_skipped_not_fatal(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s.jsonl"
    lines = [json.dumps({"text": "a fine", "timestamp": T0}), '{"text": "' + "x" * 30_000 + '"}',
             "[" * 19_000, '{"text": "a big", "id": ' + "9" * 5000 + "}",
             json.dumps({"text": "a last", "timestamp": T0 + 1})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monitor = make_monitor(tmp_path, ingest={"max_body_bytes": 20_000})
    with caplog.at_level(logging.WARNING):
        src = replay(monitor, path)
    monitor.stop()
    assert src.error is None
    assert monitor.store.count_items() == 2
    assert metric(monitor, "lepton_monitor_bad_items") == 3
    assert "s.jsonl:2: a line over ingest.max_body_bytes" in caplog.text
    assert "s.jsonl:3: JSON nested too deeply" in caplog.text


# ---------------------------------------------------------------------------- config files


def test_a_yaml_alias_bomb_config_is_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(MonitorConfigError, match="expands to more than 100,000 values"):
        load_config(path)
    with pytest.raises(MonitorConfigError, match="expands to more than"):
        load_config(None, overrides=["predict={" + BOMB.strip().replace("\n", ", ") + "}"])
    assert time.perf_counter() - started < 5


def test_every_yaml_reader_goes_through_the_guarded_one(tmp_path: Path) -> None:
    """No module of the monitor (or search) calls yaml.safe_load itself: read_yaml guards it."""
    root = Path(__file__).resolve().parents[1] / "src" / "lepton"
    for folder in ("monitor", "search"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "yaml.safe_load" not in text and "yaml.load" not in text, path


# ---------------------------------------------------------------------------- webhook


class TricklingReceiver:
    """Answers alert 1's deliveries with headers, then one body byte a second for a minute;
    every other delivery at once with 200."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.delivered: list[tuple[float, int]] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
        while len(body) < length:
            body += conn.recv(65536)
        alert = json.loads(body)["alert"]["id"]
        try:
            if alert == 1:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n")
                for _ in range(60):
                    if self.stop.wait(1.0):
                        break
                    conn.sendall(b"x")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                self.delivered.append((time.time(), alert))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_trickling_webhook_receiver_holds_neither_the_outbox_nor_past_timeout_s(tmp_path: Path) -> None:
    from lepton.monitor.alerts import WebhookNotifier

    hook = TricklingReceiver()
    store = Store(f"sqlite:///{tmp_path / 'monitor.db'}")
    with store.transaction() as cur:
        for alert in (1, 1, 2, 3):  # alert 1's two events, then one of alerts 2 and 3
            payload = json.dumps({"event": "opened", "alert": {"id": alert}})
            cur.execute("INSERT INTO outbox (alert_id, event, payload, next_at) VALUES (?, ?, ?, ?)",
                        (alert, "opened", payload, 0.0))
    cfg = parse_config({"alerts": {"webhook": {"url": hook.url, "timeout_s": 1.5, "backoff_s": 30}}})
    notifier = WebhookNotifier(store, cfg.alerts.webhook)
    started = time.time()
    notifier.start()
    try:
        deadline = started + 10
        while time.time() < deadline:
            rows = dict(store.query("SELECT id, attempts FROM outbox"))
            if rows[1] >= 1 and len(hook.delivered) == 2:
                break
            time.sleep(0.05)
        rows = store.query("SELECT id, alert_id, status, attempts, last_error FROM outbox ORDER BY id")
    finally:
        notifier.stop()
        hook.close()
    # Alerts 2 and 3 were delivered at once, while alert 1's answer was still trickling in.
    assert sorted(a for _, a in hook.delivered) == [2, 3]
    assert all(t - started < 1.4 for t, _ in hook.delivered)
    assert rows[2][2:4] == ("delivered", 1) and rows[3][2:4] == ("delivered", 1)
    # Alert 1's first event gave up after timeout_s in all, not 60 s of one byte a second; its
    # second event waits behind it (events of one alert stay in order).
    assert rows[0][2:4] == ("pending", 1) and "timeout_s=1.5" in rows[0][4]
    assert rows[1][2:4] == ("pending", 0)


def test_backoff_of_a_huge_attempt_count_does_not_overflow() -> None:
    from lepton.monitor.alerts import backoff

    cfg = parse_config({"alerts": {"webhook": {"url": "http://x/", "max_attempts": 10**9}}}).alerts.webhook
    assert backoff(10**6, cfg) == cfg.backoff_max_s


# ---------------------------------------------------------------------------- timestamps


def test_a_timestamp_far_ahead_is_refused_counted_and_never_moves_the_watermark(tmp_path: Path, caplog) -> None:
    items = synthetic_items(200)
    bad = [{"text": "a bad one", "timestamp": 9.9e10}, {"text": "a nan", "timestamp": math.nan},
           {"text": "a past", "timestamp": -5}, {"text": "a far", "timestamp": "5107-01-01T00:00:00"}]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in items[:100] + bad + items[100:]), encoding="utf-8")
    monitor = make_monitor(tmp_path)
    with caplog.at_level(logging.WARNING):
        src = replay(monitor, path)
    assert src.error is None and src.read == 200
    assert monitor.max_ts == items[-1]["timestamp"]
    assert metric(monitor, "lepton_monitor_refused_timestamps") == 2  # the two in 5107
    assert metric(monitor, "lepton_monitor_bad_items") == 4
    assert "s.jsonl:101: timestamp 5107-" in caplog.text and "window.max_ahead_s=3600" in caplog.text
    # windows still close one by one: the stream's own last minute stays open
    assert monitor.store.query("SELECT COUNT(*) FROM windows WHERE closed = 0")[0][0] > 0
    with pytest.raises(TimestampError, match="item 1: timestamp"):
        monitor.submit([RawItem("a ok", ts=T0), RawItem("a bad", ts=9.9e10)])
    monitor.stop()


def test_stdin_refuses_a_far_timestamp_too(tmp_path: Path) -> None:
    import io

    monitor = make_monitor(tmp_path)
    lines = json.dumps({"text": "a fine", "timestamp": T0}) + "\n" + json.dumps({"text": "a no", "timestamp": 9e10})
    src = StdinSource(monitor, io.StringIO(lines + "\n"))
    src.run()
    monitor.stop()
    assert monitor.store.count_items() == 1 and monitor.max_ts == T0


@pytest.fixture()
def client(tmp_path: Path):
    from fastapi.testclient import TestClient

    from lepton.monitor.app import create_app

    monitor = make_monitor(tmp_path)
    with TestClient(create_app(monitor)) as c:
        c.monitor = monitor
        yield c
    monitor.stop()


def test_http_refuses_a_far_timestamp_with_422_naming_it(client) -> None:
    r = client.post("/v1/ingest", json={"items": [{"text": "a ok", "timestamp": T0},
                                                  {"text": "a bad", "timestamp": 9.9e10}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "items.1.timestamp"
    assert client.monitor.store.count_items() == 0 and client.monitor.max_ts is None
    assert "lepton_monitor_refused_timestamps_total{channel=\"http\"} 1.0" in client.get("/metrics").text
    for value in ("NaN", "Infinity", "-1", "1e400"):
        body = '{"items": [{"text": "a x", "timestamp": ' + value + "}]}"
        r = client.post("/v1/ingest", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, value


@pytest.mark.parametrize("path,status", [
    ("/v1/alerts/99999999999999999999", 422), (f"/v1/alerts/{2**63}", 422), ("/v1/alerts/-1", 422),
    ("/v1/alerts/abc", 422), ("/v1/alerts/1.5", 422), (f"/v1/alerts/{2**63 - 1}", 404), ("/v1/alerts/7", 404),
    ("/v1/alerts?limit=0", 422), ("/v1/alerts?limit=99999999999999999999", 422), ("/v1/alerts?limit=x", 422),
    ("/v1/dashboard?since=nan", 422), ("/v1/dashboard?since=inf", 422), ("/v1/dashboard?since=1e400", 422),
    ("/v1/dashboard?since=-1e300", 422), ("/v1/dashboard?since=abc", 422), ("/v1/dashboard?since=0", 200),
])
def test_alert_ids_and_query_parameters_out_of_range_are_4xx(client, path: str, status: int) -> None:
    assert client.get(path).status_code == status


# ---------------------------------------------------------------------------- the CLI


def cli(argv: list[str], capsys) -> tuple[int, str]:
    from lepton.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def one_line(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and lines[-1].startswith("lepton: error:"), err
    assert sum(ln.startswith("lepton: error:") for ln in lines) == 1, err
    return lines[-1]


@pytest.fixture(scope="module")
def mt_model(tiny_model_dir: Path, tmp_path_factory) -> Path:
    return build_multitask_artifact(tiny_model_dir, tmp_path_factory.mktemp("mt") / "model")


def test_monitor_config_alias_bomb_is_one_line_in_seconds(tmp_path: Path, capsys, monkeypatch, mt_model) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bomb.yaml").write_text(BOMB, encoding="utf-8")
    started = time.perf_counter()
    line = one_line(*cli(["monitor", str(mt_model), "--config", "bomb.yaml"], capsys))
    assert "bomb.yaml: expands to more than" in line and time.perf_counter() - started < 5


def test_require_signature_on_monitor(tmp_path: Path, capsys, monkeypatch, mt_model) -> None:
    pytest.importorskip("cryptography")
    import shutil

    from lepton.pipeline.artifact import sign_model
    from lepton.pipeline.signing import keygen

    monkeypatch.chdir(tmp_path)
    _, pub, _ = keygen(tmp_path / "key")
    _, other, _ = keygen(tmp_path / "other")
    signed = Path(shutil.copytree(mt_model, tmp_path / "signed"))
    sign_model(signed, tmp_path / "key")
    stream = write_jsonl(tmp_path / "s.jsonl", synthetic_items(3, topics=("World",)))
    run = ["--source", f"replay:{stream}", "--exit-when-done", "--set", "server.enabled=false",
           "--set", f"output={tmp_path / 'out'}"]
    line = one_line(*cli(["monitor", str(mt_model), "--require-signature", str(pub), *run], capsys))
    assert "not signed" in line
    line = one_line(*cli(["monitor", str(signed), "--require-signature", str(other), *run], capsys))
    assert "not with the trusted key" in line
    line = one_line(*cli(["monitor", str(signed), str(mt_model), "--require-signature", str(pub), *run], capsys))
    assert "not signed" in line and str(mt_model) in line
    assert not (tmp_path / "out").exists()  # refused before anything was written
    code, err = cli(["monitor", str(signed), "--require-signature", str(pub), *run], capsys)
    assert code == 0, err
    assert Store(f"sqlite:///{tmp_path / 'out' / 'monitor.db'}").count_items() == 3


def test_cli_source_and_store_faults_are_one_line_and_handlers_come_back(tmp_path: Path, capsys, monkeypatch,
                                                                         mt_model) -> None:
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGINT)
    stream = write_jsonl(tmp_path / "s.jsonl", synthetic_items(2))
    off = ["--set", "server.enabled=false"]
    assert "is not a file" in one_line(*cli(["monitor", str(mt_model), "--source", f"follow:{tmp_path}", *off],
                                            capsys))
    assert "--exit-when-done" in one_line(*cli(["monitor", str(mt_model), "--source", f"follow:{stream}",
                                                "--exit-when-done", *off], capsys))
    assert "--speed nan" in one_line(*cli(["monitor", str(mt_model), "--source", f"replay:{stream}", "--speed",
                                           "nan", *off], capsys))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "monitor.db").write_bytes(b"not a database at all" * 100)
    line = one_line(*cli(["monitor", str(mt_model), "--source", f"replay:{stream}", "--exit-when-done", *off,
                          "--set", "output=junk"], capsys))
    assert "junk/monitor.db: cannot open (file is not a database)" in line
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    line = one_line(*cli(["monitor", str(mt_model), "--source", f"replay:{stream}", "--exit-when-done", *off,
                          "--set", "output=afile"], capsys))
    assert "afile exists and is not a folder" in line
    code, err = cli(["monitor", str(mt_model), "--source", f"replay:{stream}", "--exit-when-done", *off,
                     "--set", "output=ok"], capsys)
    assert code == 0, err
    assert signal.getsignal(signal.SIGINT) is before


def test_a_source_failing_while_it_runs_is_one_line_naming_it(tmp_path: Path, capsys, monkeypatch,
                                                               mt_model) -> None:
    from lepton.monitor.sources import FileSource

    def fail(self) -> None:
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FileSource, "_run", fail)
    stream = write_jsonl(tmp_path / "s.jsonl", synthetic_items(2))
    line = one_line(*cli(["monitor", str(mt_model), "--source", f"replay:{stream}", "--exit-when-done",
                          "--set", "server.enabled=false"], capsys))
    assert f"replay:{stream}" in line and "ermission denied" in line


def test_store_of_another_schema_is_a_store_error(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE items (id INTEGER, body TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a Lepton monitor database"):
        Store(f"sqlite:///{tmp_path / 'x.db'}")
