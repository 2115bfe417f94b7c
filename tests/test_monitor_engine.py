"""The ingest engine over SQLite with a fake classifier: counts, duplicates, windows and alerts in
the database, a restart that resumes the detectors, file sources that resume from their offset,
webhook retries with back-off that never block ingestion, and HTTP ingestion's 4xx rules."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("scipy")
pytest.importorskip("fastapi")

from lepton.monitor.config import parse_config
from lepton.monitor.engine import Monitor, QueueFullError, RawItem
from lepton.monitor.metrics import MonitorMetrics
from lepton.monitor.sources import FileSource, StdinSource
from lepton.monitor.store import Store
from tests.monitor_fakes import T0, KeywordClassifier, WebhookReceiver, synthetic_items, write_jsonl

pytestmark = pytest.mark.timeout(120)

SURGE = ("business", 2400, 2700, 0.7)  # items 2400-2699: business goes from 15% to 70% negative


def make_monitor(tmp_path: Path, classifier=None, url: str | None = None, **sections) -> Monitor:
    tree = {"window": {"width_s": 60}, "surge": {"alpha": 0.001, "min_count": 10}, "output": str(tmp_path),
            **sections}
    cfg = parse_config(tree)
    store = Store(url or f"sqlite:///{tmp_path / 'monitor.db'}")
    notifier = None
    if cfg.alerts.webhook is not None:
        from lepton.monitor.alerts import WebhookNotifier

        notifier = WebhookNotifier(store, cfg.alerts.webhook)
    monitor = Monitor(cfg, classifier or KeywordClassifier(), store, MonitorMetrics(), notifier)
    monitor.start()
    if notifier is not None:
        notifier.start()
    return monitor


def feed(monitor: Monitor, items: list[dict], batch: int = 50) -> list:
    results = []
    for i in range(0, len(items), batch):
        raws = [RawItem(text=it["text"], ts=it["timestamp"], item_id=it.get("id")) for it in items[i:i + batch]]
        results.append(monitor.submit(raws, block=True).result(timeout=30))
    return results


def test_items_windows_and_an_alert_with_its_items_are_stored(tmp_path: Path) -> None:
    monitor = make_monitor(tmp_path)
    feed(monitor, synthetic_items(4000, surge=SURGE))
    monitor.stop()
    store = monitor.store
    assert store.count_items() == 4000
    rows = store.query("SELECT topic, SUM(n), SUM(negative) FROM windows GROUP BY topic ORDER BY topic")
    neg_items = store.query("SELECT topic, COUNT(*) FROM items WHERE negative = 1 GROUP BY topic ORDER BY topic")
    assert [(r[0], r[1]) for r in rows] == [("business", 2000), ("sports", 2000)]
    assert [r[2] for r in rows] == [r[1] for r in neg_items]  # window counts agree with the items
    alerts = store.alerts()
    assert [a["topic"] for a in alerts] == ["business"]  # the surge, and no false alarm in 4000 items
    a = alerts[0]
    assert a["status"] == "closed"
    surge_start, surge_end = T0 + SURGE[1], T0 + SURGE[2]
    assert surge_start - 60 < a["first_start"] <= surge_start  # opened in the surge's first window
    assert a["closed_at"] >= surge_end
    assert a["peak_share"] > 0.5 and a["baseline_share"] < 0.25
    items = store.alert_items(a["id"], 5)
    assert len(items) == 5 and all(i["sentiment"] == "negative" for i in items)
    assert all(surge_start - 60 <= i["ts"] < a["closed_at"] for i in items)
    fired = store.query("SELECT COUNT(*) FROM windows WHERE alert_id = ? AND fired = 1", (a["id"],))[0][0]
    assert fired == a["windows"] >= 2


def test_an_id_sent_twice_is_stored_and_counted_once(tmp_path: Path) -> None:
    monitor = make_monitor(tmp_path)
    items = synthetic_items(100)
    first = feed(monitor, items)
    again = feed(monitor, items[40:60] + [{"text": "sports bad", "timestamp": T0 + 200, "id": "new"}])
    monitor.stop()
    assert sum(r.accepted for r in first) == 100
    assert again[0].accepted == 1 and again[0].duplicates == 20
    assert monitor.store.count_items() == 101
    assert monitor.store.query("SELECT SUM(n) FROM windows")[0][0] == 101


def test_a_restart_resumes_baselines_and_an_open_alert(tmp_path: Path) -> None:
    items = synthetic_items(4000, surge=SURGE)
    first = make_monitor(tmp_path)
    feed(first, items[:2520])  # stop in the middle of the surge, an alert open
    first.stop()
    assert [a["status"] for a in first.store.alerts()] == ["open"]
    first.store.close()
    second = make_monitor(tmp_path)
    assert second.detectors["business"].in_episode
    feed(second, items[2520:])
    second.stop()
    alerts = second.store.alerts()
    assert len(alerts) == 1 and alerts[0]["status"] == "closed"  # the same episode, not a new one


def test_follow_source_resumes_from_its_stored_offset(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "stream.jsonl", synthetic_items(300))
    with path.open("a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"text": "", "timestamp": T0}) + "\n")
    monitor = make_monitor(tmp_path / "db")
    src = FileSource(monitor, path, follow=True, poll_s=0.05)
    import threading

    threading.Thread(target=src.run, daemon=True).start()
    deadline = time.time() + 30
    while monitor.store.count_items() < 300 and time.time() < deadline:
        time.sleep(0.05)
    with path.open("a") as fh:  # a line written in two parts: only the complete line is read
        fh.write('{"text": "sports bad tail", "timestamp": ')
        fh.flush()
        time.sleep(0.3)
        fh.write(f'{T0 + 400}, "id": "tail"}}\n')
    while monitor.store.count_items() < 301 and time.time() < deadline:
        time.sleep(0.05)
    src.stop.set()
    src.done.wait(5)
    monitor.stop()
    assert monitor.store.count_items() == 301
    assert monitor.metrics.bad_items.labels(channel="follow")._value.get() == 2
    offset = monitor.store.offset(src.name)
    assert offset is not None and offset.byte_offset == path.stat().st_size
    monitor.store.close()
    # A restart reads nothing again; new lines after it are read once.
    with path.open("a") as fh:
        fh.write(json.dumps({"text": "business good", "timestamp": T0 + 401}) + "\n")
    again = make_monitor(tmp_path / "db")
    src2 = FileSource(again, path, follow=True, poll_s=0.05)
    threading.Thread(target=src2.run, daemon=True).start()
    while again.store.count_items() < 302 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # time enough to (wrongly) read more
    src2.stop.set()
    src2.done.wait(5)
    again.stop()
    assert src2.error is None and src2.read == 1
    assert again.store.count_items() == 302


def test_replay_paces_by_timestamps_times_the_speed(tmp_path: Path) -> None:
    items = synthetic_items(40, step_s=10.0)  # 390 s of stream time
    path = write_jsonl(tmp_path / "replay.jsonl", items)
    monitor = make_monitor(tmp_path / "db")
    src = FileSource(monitor, path, follow=False, speed=300.0)  # 390 s / 300 = 1.3 s
    started = time.perf_counter()
    src.run()
    took = time.perf_counter() - started
    monitor.stop()
    assert src.error is None and monitor.store.count_items() == 40
    assert 1.2 <= took < 5.0


def test_stdin_takes_json_and_plain_lines(tmp_path: Path) -> None:
    monitor = make_monitor(tmp_path)
    lines = "\n".join([json.dumps({"text": "sports bad", "id": "a", "timestamp": T0}), "business fine day",
                       '{"txt": "typo"}', ""]) + "\n"
    src = StdinSource(monitor, io.StringIO(lines))
    src.run()
    monitor.stop()
    assert src.error is None and monitor.store.count_items() == 2
    assert monitor.metrics.bad_items.labels(channel="stdin")._value.get() == 1


def test_a_full_queue_refuses_instead_of_growing(tmp_path: Path) -> None:
    monitor = make_monitor(tmp_path, KeywordClassifier(delay_s=0.3), ingest={"max_queue": 10, "max_batch": 5})
    first = monitor.submit([RawItem("sports good", T0)] * 1)
    monitor.submit([RawItem("sports good", T0 + 1)] * 9)
    with pytest.raises(QueueFullError, match="max_queue 10"):
        monitor.submit([RawItem("sports good", T0 + 2)] * 5)
    first.result(timeout=10)
    monitor.stop()


def test_webhook_is_retried_with_back_off_until_delivered(tmp_path: Path) -> None:
    hook = WebhookReceiver(fail_first=2)
    try:
        monitor = make_monitor(tmp_path, alerts={"webhook": {"url": hook.url, "backoff_s": 0.2,
                                                              "max_attempts": 5}})
        feed(monitor, synthetic_items(2520, surge=SURGE))  # opens an alert
        deadline = time.time() + 20
        while not any(s == 200 for _, s, _ in hook.attempts) and time.time() < deadline:
            time.sleep(0.05)
        monitor.stop()
        monitor.notifier.stop()
    finally:
        hook.close()
    statuses = [s for _, s, _ in hook.attempts]
    assert statuses[:3] == [500, 500, 200]
    first = hook.attempts[2][2]
    assert first["event"] == "opened" and first["alert"]["topic"] == "business"
    gaps = [hook.attempts[i + 1][0] - hook.attempts[i][0] for i in range(2)]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38  # 0.2 s, then doubled
    row = monitor.store.query("SELECT status, attempts FROM outbox ORDER BY id LIMIT 1")[0]
    assert row == ("delivered", 3)


def test_a_hanging_webhook_never_blocks_ingestion(tmp_path: Path) -> None:
    hook = WebhookReceiver(hang_s=3.0)
    try:
        monitor = make_monitor(tmp_path, alerts={"webhook": {"url": hook.url, "timeout_s": 10}})
        items = synthetic_items(4000, surge=SURGE)
        feed(monitor, items[:2520])  # the alert opens; its delivery now hangs for 3 s
        deadline = time.time() + 10
        while monitor.store.query("SELECT COUNT(*) FROM outbox")[0][0] == 0 and time.time() < deadline:
            time.sleep(0.02)
        started = time.perf_counter()
        feed(monitor, items[2520:3000])
        took = time.perf_counter() - started
        monitor.stop()
        monitor.notifier.stop(timeout=0.1)
    finally:
        hook.close()
    assert took < 2.0  # 480 more items stored while the webhook hangs
    assert monitor.store.count_items() == 3000
