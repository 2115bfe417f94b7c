"""Issue 26, drift per monitor window: when a time window closes (across all topics) its stored
texts, predicted labels and confidences are compared with the model's drift reference
(lepton.evaluation.drift.check_window); the result is stored with the window, logged when it
flags drift, counted in the metrics, served by GET /v1/drift and drawn on the dashboard."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from lepton.monitor.app import create_app
from lepton.monitor.config import MonitorConfigError, PredictConfig, parse_config
from lepton.monitor.predict import DriftBinding, load_classifier
from lepton.monitor.surge import window_start
from tests.conftest import chromium, needs_chromium
from tests.monitor_fakes import T0, KeywordClassifier, build_multitask_artifact
from tests.test_monitor_engine import feed, make_monitor

pytestmark = pytest.mark.timeout(120)

WIDTH = 60
BASE = window_start(T0, WIDTH) + WIDTH  # the first window's start
LABELS = ["negative", "positive"]  # KeywordClassifier's sentiment labels
TOPICS = ("sports", "business", "world")
WORDS = ["news", "is", "today", "the", "team", "match", "market", "report", "good", "great", "new", "city",
         "game", "season", "price", "week"]
FINANCE = ["shares", "profit", "warning", "quarterly", "revenue", "dividend", "bond", "yield", "merger",
           "investors", "earnings", "guidance", "stock", "inflation", "rates", "bank", "credit"]


def texts(n: int, seed: int, shifted: bool = False) -> list[str]:
    """Short general news (a fifth with "bad": negative for KeywordClassifier), or, ``shifted``,
    long financial sentences in other words (and none negative)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if shifted:
            words = ["business"] + [rng.choice(FINANCE) for _ in range(rng.randint(12, 20))]
        else:
            words = [rng.choice(TOPICS)] + [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
            if rng.random() < 0.2:
                words.insert(rng.randint(1, len(words)), "bad")
        out.append(" ".join(words))
    return out


def window_items(index: int, seed: int, shifted: bool = False, n: int = WIDTH) -> list[dict]:
    """``n`` items spread over window ``index`` (from BASE)."""
    start = BASE + index * WIDTH
    return [{"text": t, "timestamp": start + i * WIDTH / n, "id": f"w{index}-{i}"}
            for i, t in enumerate(texts(n, seed, shifted))]


def closer(index: int) -> list[dict]:
    """One item at the start of window ``index``: it closes every window before it."""
    return [{"text": "world news today", "timestamp": BASE + index * WIDTH, "id": f"close-{index}"}]


def reference_of(tokenizer, sentences: list[str], classifier=None, labels=LABELS):
    """A drift reference of ``sentences`` as ``classifier`` (KeywordClassifier) sees them."""
    from lepton.evaluation.drift import DriftReference, content_ids, input_profile

    special, unk = content_ids(tokenizer)
    profile = input_profile(tokenizer(sentences, truncation=True, max_length=64)["input_ids"], special, unk)
    preds = (classifier or KeywordClassifier()).classify(sentences)
    profile.confidences = np.asarray([p.sentiment_score for p in preds])
    profile.predictions = np.asarray([labels.index(p.sentiment) for p in preds])
    task = SimpleNamespace(kind="sequence_classification", labels=list(labels), max_length=64)
    return DriftReference.build(profile, task=task, tokenizer=tokenizer, split="dev")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from lepton.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def reference(tokenizer):
    return reference_of(tokenizer, texts(300, seed=99))


class DriftClassifier(KeywordClassifier):
    """KeywordClassifier with a drift reference of its sentiment head (as load_classifier binds)."""

    def __init__(self, reference, tokenizer) -> None:
        super().__init__()
        self.drift = DriftBinding(reference, "sentiment", tokenizer)


def drift_monitor(tmp_path: Path, reference, tokenizer, **sections):
    return make_monitor(tmp_path, DriftClassifier(reference, tokenizer), window={"width_s": WIDTH}, **sections)


def shifted_stream() -> list[dict]:
    """Windows 0-4, window 3 shifted; then an item that closes them all."""
    items = []
    for w in range(5):
        items += window_items(w, seed=w, shifted=w == 3)
    return items + closer(5)


# ------------------------------------------------------------------- the check per window


def test_a_shifted_window_is_flagged_stored_logged_counted_and_served(tmp_path, reference, tokenizer, caplog):
    monitor = drift_monitor(tmp_path, reference, tokenizer)
    with caplog.at_level(logging.WARNING, logger="lepton.monitor"):
        feed(monitor, shifted_stream(), batch=25)
        monitor.stop()  # the last close pass runs after the last commit: stop() waits for it
    windows = monitor.store.drift_windows()
    assert [w["start"] for w in windows] == [BASE + i * WIDTH for i in (4, 3, 2, 1, 0)]  # newest first
    assert [w["drift"] for w in windows] == [False, True, False, False, False]
    assert all(w["tested"] and w["n"] == WIDTH and w["head"] == "sentiment" for w in windows)
    shifted = windows[1]
    assert shifted["verdict"] == "drift: update advised" and shifted["end"] == shifted["start"] + WIDTH
    flagged = {t["name"] for t in shifted["tests"] if t["flagged"]}
    assert {"input_length", "tokens", "prediction_mix"} <= flagged, shifted["reasons"]
    assert len(shifted["reasons"]) == len(flagged)
    assert all(t["p_adjusted"] > 0.01 for w in windows if not w["drift"] for t in w["tests"])
    # One WARNING line, for the shifted window only, with the reasons.
    lines = [r.getMessage() for r in caplog.records if "DRIFT" in r.getMessage()]
    assert len(lines) == 1 and "input length (tokens)" in lines[0] and "60 items" in lines[0]

    metrics = monitor.metrics.render()[0].decode()
    assert 'lepton_monitor_drift_windows_total{verdict="drift"} 1.0' in metrics
    assert 'lepton_monitor_drift_windows_total{verdict="no_drift"} 4.0' in metrics
    assert 'lepton_monitor_drift_p_value{test="tokens"}' in metrics

    with TestClient(create_app(monitor)) as client:
        served = client.get("/v1/drift").json()
        assert served["enabled"] and served["status"].startswith("on: the sentiment head")
        assert served["windows"] == windows
        assert [w["drift"] for w in client.get("/v1/drift?limit=2").json()["windows"]] == [False, True]
        for bad in ("0", "1001", "x", "-1"):
            r = client.get(f"/v1/drift?limit={bad}")
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query.limit", bad
        state = client.get("/v1/dashboard").json()
        assert state["drift"]["windows"][1]["drift"] and state["drift"]["alpha"] == 0.01
        page = client.get("/").text
        assert 'id="drift-strip"' in page and "renderDrift(state.drift)" in page
    monitor.store.close()


def test_same_distribution_windows_are_not_flagged_and_a_small_one_is_not_tested(tmp_path, reference, tokenizer):
    monitor = drift_monitor(tmp_path, reference, tokenizer)
    items = []
    for w in range(6):
        items += window_items(w, seed=100 + w)
    items += window_items(6, seed=7, n=20) + closer(7)  # 20 items: under drift.min_items (30)
    feed(monitor, items)
    monitor.stop()
    windows = monitor.store.drift_windows()
    assert len(windows) == 7 and not any(w["drift"] for w in windows)
    assert all(w["tested"] and len(w["tests"]) == 5 for w in windows[1:])
    small = windows[0]
    assert not small["tested"] and small["n"] == 20 and small["verdict"] == "not tested: 20 items (fewer than 30)"
    metrics = monitor.metrics.render()[0].decode()
    assert 'lepton_monitor_drift_windows_total{verdict="not_tested"} 1.0' in metrics
    assert 'verdict="drift"' not in metrics
    monitor.store.close()


def test_drift_settings_apply_and_the_check_can_be_turned_off(tmp_path, reference, tokenizer):
    # min_items 100: no window of 60 items is tested. enabled false: nothing is checked or stored.
    monitor = drift_monitor(tmp_path / "a", reference, tokenizer, drift={"min_items": 100})
    feed(monitor, shifted_stream())
    monitor.stop()
    assert [w["tested"] for w in monitor.store.drift_windows()] == [False] * 5
    off = drift_monitor(tmp_path / "b", reference, tokenizer, drift={"enabled": False})
    feed(off, shifted_stream())
    off.stop()
    assert off.drift is None and off.store.drift_windows() == []
    assert off.drift_status == "off (drift.enabled is false)"
    assert off.store.query("SELECT COUNT(*) FROM windows WHERE closed = 1")[0][0] > 0  # the surge rule still runs


def test_a_restart_keeps_the_stored_drift_windows_and_checks_each_window_once(tmp_path, reference, tokenizer):
    stream = shifted_stream()
    first = drift_monitor(tmp_path, reference, tokenizer)
    feed(first, stream[:200])  # windows 0-2 closed
    first.stop()
    before = first.store.drift_windows()
    assert [w["start"] for w in before] == [BASE + 2 * WIDTH, BASE + WIDTH, BASE]
    first.store.close()

    second = drift_monitor(tmp_path, reference, tokenizer)
    assert second.store.drift_windows() == before
    feed(second, stream[150:])  # 50 items sent again (duplicates), then the rest
    second.stop()
    after = second.store.drift_windows()
    assert [w["start"] for w in after] == [BASE + i * WIDTH for i in (4, 3, 2, 1, 0)]
    assert after[2:] == before  # the windows checked before the restart are not checked again
    assert [w["drift"] for w in after] == [False, True, False, False, False]
    assert after[1]["n"] == WIDTH  # window 3 read from the store: every item, none twice
    with TestClient(create_app(second)) as client:
        assert client.get("/v1/drift").json()["windows"] == after
    second.store.close()


@needs_chromium
def test_the_dashboard_draws_the_drift_strip_in_chromium(tmp_path, reference, tokenizer):
    import re
    import threading
    import time

    import httpx
    import uvicorn

    from tests.test_monitor_http import _free_port

    monitor = drift_monitor(tmp_path, reference, tokenizer)
    feed(monitor, shifted_stream())
    monitor.stop()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(monitor), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        done = chromium(tmp_path, "--virtual-time-budget=4000", "--dump-dom", f"http://127.0.0.1:{port}/")
    finally:
        server.should_exit = True
        thread.join(10)
        monitor.store.close()
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-loaded="1"' in dom
    cells = re.findall(r'<span class="drift-cell ([a-z_]+)" data-start="([0-9.]+)"', dom)
    assert [c for c, _ in cells] == ["no_drift", "no_drift", "no_drift", "drift", "no_drift"]  # oldest first
    assert [float(start) for _, start in cells] == [BASE + i * WIDTH for i in range(5)]
    assert re.search(r'<span class="badge" id="drift-status">on: the sentiment head', dom)
    assert '<div id="drift-latest" class="no_drift">latest ' in dom and "no drift detected" in dom


# ------------------------------------------------------------------- loading the reference


@pytest.fixture(scope="module")
def artifacts(tiny_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny multi-task model without a reference, with one of its main (sentiment) task, and with
    one whose labels are no configured head's."""
    folder = tmp_path_factory.mktemp("drift-models")
    sentences = texts(120, seed=5)

    def sentiment_ref(bundle):
        rng = random.Random(0)
        labels = bundle.task.labels
        fake = SimpleNamespace(classify=lambda ts: [SimpleNamespace(sentiment=rng.choice(labels),
                                                                    sentiment_score=rng.uniform(0.34, 1))
                                                    for _ in ts])
        return reference_of(bundle.tokenizer, sentences, fake, labels)

    return {"none": build_multitask_artifact(tiny_model_dir, folder / "none"),
            "sentiment": build_multitask_artifact(tiny_model_dir, folder / "sentiment", sentiment_ref),
            "other": build_multitask_artifact(tiny_model_dir, folder / "other",
                                              lambda b: reference_of(b.tokenizer, sentences))}


def test_a_model_without_a_reference_turns_the_check_off_with_a_log_line(tmp_path, artifacts, caplog):
    with caplog.at_level(logging.INFO, logger="lepton.monitor"):
        classifier = load_classifier([str(artifacts["none"])], PredictConfig())
    assert classifier.drift is None
    assert "no drift reference; drift check off" in caplog.text
    monitor = make_monitor(tmp_path, classifier, window={"width_s": WIDTH})
    assert monitor.drift is None and monitor.drift_status == "off (the model has no drift reference)"
    feed(monitor, window_items(0, seed=1) + closer(1))
    monitor.stop()
    assert monitor.store.drift_windows() == []
    assert monitor.store.query("SELECT COUNT(*) FROM windows WHERE closed = 1")[0][0] > 0
    with TestClient(create_app(monitor)) as client:
        served = client.get("/v1/drift").json()
        assert served == {"enabled": False, "status": "off (the model has no drift reference)", "alpha": 0.01,
                          "min_items": 30, "windows": []}
    monitor.store.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lepton.monitor"):
        other = load_classifier([str(artifacts["other"])], PredictConfig())
    assert other.drift is None and "describes no configured head" in caplog.text
    with caplog.at_level(logging.INFO, logger="lepton.monitor"):
        off = load_classifier([str(artifacts["sentiment"])], PredictConfig(), drift=False)
    assert off.drift is None and "drift check off (drift.enabled is false)" in caplog.text


def test_a_model_with_a_reference_checks_its_sentiment_head_per_window(tmp_path, artifacts, caplog):
    with caplog.at_level(logging.INFO, logger="lepton.monitor"):
        classifier = load_classifier([str(artifacts["sentiment"])], PredictConfig())
    binding = classifier.drift
    assert binding is not None and binding.head == "sentiment" and "drift check on" in caplog.text
    assert binding.reference.labels == classifier.sentiment_labels and len(binding.reference) == 120
    monitor = make_monitor(tmp_path, classifier, window={"width_s": WIDTH})
    feed(monitor, window_items(0, seed=1, n=40) + window_items(1, seed=2, shifted=True, n=40) + closer(2))
    monitor.stop()
    windows = monitor.store.drift_windows()
    assert len(windows) == 2 and all(w["tested"] and w["n"] == 40 for w in windows)
    assert {t["name"] for t in windows[0]["tests"]} == {"input_length", "tokens", "unknown_tokens", "confidence",
                                                        "prediction_mix"}
    assert windows[0]["drift"] and {"input_length", "tokens"} <= {t["name"] for t in windows[0]["tests"]
                                                                  if t["flagged"]}
    monitor.store.close()


# ------------------------------------------------------------------- the config


@pytest.mark.parametrize("drift, key", [
    ({"alpha": 0}, "drift.alpha"), ({"alpha": 1}, "drift.alpha"), ({"alpha": -0.1}, "drift.alpha"),
    ({"alpha": "often"}, "drift.alpha"), ({"min_items": 1}, "drift.min_items"),
    ({"min_items": 2.5}, "drift.min_items"), ({"enabled": "maybe"}, "drift.enabled"),
    ({"alpah": 0.01}, "drift.alpah"), ("on", "drift"),
])
def test_bad_drift_settings_are_one_line_naming_the_key(drift, key):
    with pytest.raises(MonitorConfigError) as err:
        parse_config({"drift": drift})
    message = str(err.value)
    assert "\n" not in message and f"{key}" in message, message
    assert parse_config({"drift": {"alpha": 0.05, "min_items": 2}}).drift.alpha == 0.05
