"""Hot swap in `lepton serve` (issue 26): POST /v1/admin/swap and SIGHUP replace the served model
without dropping a request; a bad swap is refused and the old model keeps serving; /healthz names
the artifact's manifest sha256 before and after.

The refusals run in-process (TestClient); the swap under 8 concurrent clients and the SIGHUP reload
run against a real `lepton serve` process whose every model call sleeps a little, so requests are
queued and in flight when the switch happens.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from lepton.serve.app import TEST_DELAY_ENV  # noqa: E402
from tests.test_serve import Server, _build  # noqa: E402
from tests.test_serve_generate import lm  # noqa: E402, F401  (fixture)

pytestmark = pytest.mark.timeout(240)

TOKEN = "swap-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SENTIMENT = ["negative", "positive"]


def _copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(src, dest))


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """"a" the served model; "b" its update (a class added: another checksum, distinguishable
    predictions); models a swap must refuse; and signed copies."""
    root = tmp_path_factory.mktemp("swap-models")
    seq = "sequence_classification"
    out = {
        "a": _build(tiny_model_dir, root / "v1" / "model", kind=seq, labels=SENTIMENT),
        "b": _build(tiny_model_dir, root / "v2" / "model", kind=seq, labels=[*SENTIMENT, "neutral"]),
        "c": _build(tiny_model_dir, root / "v3" / "model", kind=seq, labels=[*SENTIMENT, "neutral", "mixed"]),
        "ner": _build(tiny_model_dir, root / "ner" / "model", kind="token_classification", labels=["O", "B-PER"]),
        "pair": _build(tiny_model_dir, root / "pair" / "model", kind=seq, labels=SENTIMENT, pair=True),
        "fewer": _build(tiny_model_dir, root / "fewer" / "model", kind=seq, labels=["negative", "neutral"]),
    }
    damaged = _copy(out["b"], root / "damaged" / "model")
    weights = damaged / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    out["damaged"] = damaged
    return out


@pytest.fixture(scope="module")
def signed(models, tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("cryptography")
    from lepton.pipeline.artifact import sign_model
    from lepton.pipeline.signing import keygen

    root = tmp_path_factory.mktemp("swap-signed")
    mine, mine_pub, _ = keygen(root / "mine")
    theirs, _, _ = keygen(root / "theirs")
    out = {"pub": mine_pub, "a": _copy(models["a"], root / "a" / "model"),
           "b": _copy(models["b"], root / "b" / "model"), "b_theirs": _copy(models["b"], root / "bt" / "model"),
           "b_unsigned": _copy(models["b"], root / "bu" / "model")}
    sign_model(out["a"], mine)
    sign_model(out["b"], mine)
    sign_model(out["b_theirs"], theirs)
    return out


def checksum(folder: Path) -> str:
    return json.loads((folder / "lepton.json").read_text())["manifest_sha256"]


def _client(model: Path, **settings: Any):
    from fastapi.testclient import TestClient

    from lepton.serve import ServeSettings
    from lepton.serve.app import create_app

    values = {"model_batch": 4, "admin_token": TOKEN, **settings}
    return TestClient(create_app(model, ServeSettings(**values)))


def _warmed(client: Any, timeout: float = 60.0) -> None:
    """Wait until /readyz is 200: the model warms up in the background after start (slower on a
    loaded machine), and a refused swap must leave a ready server ready."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server did not warm up"
        time.sleep(0.05)


def _swap(client: Any, model: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/admin/swap", content=json.dumps({"model": str(model)}),
                       headers=AUTH if headers is None else headers)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ---------------------------------------------------------------------- in-process


def test_swap_switches_model_healthz_metrics_and_predictions(models):
    with _client(models["a"]) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok"
        assert health["artifact"]["sha256"] == checksum(models["a"])
        assert health["artifact"]["path"] == str(models["a"].absolute())
        assert health["artifact"]["lepton_version"] and health["server_version"]
        assert client.get("/readyz").json()["artifact"]["sha256"] == checksum(models["a"])
        before = client.post("/v1/predict", json={"inputs": ["a fine film"]}).json()
        assert before["model_sha256"] == checksum(models["a"])
        assert set(before["predictions"][0]["scores"]) == set(SENTIMENT)

        response = _swap(client, models["b"])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["artifact"]["sha256"] == checksum(models["b"])
        assert body["previous"]["sha256"] == checksum(models["a"])

        assert client.get("/healthz").json()["artifact"]["sha256"] == checksum(models["b"])
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["artifact"]["sha256"] == checksum(models["b"])
        after = client.post("/v1/predict", json={"inputs": ["a fine film"]}).json()
        assert after["model_sha256"] == checksum(models["b"])
        assert set(after["predictions"][0]["scores"]) == {*SENTIMENT, "neutral"}
        info = client.get("/v1/model").json()
        assert info["labels"] == [*SENTIMENT, "neutral"] and info["name"] == "v2"
        assert info["artifact"]["sha256"] == checksum(models["b"])

        metrics = _samples(client.get("/metrics").text)
        assert metrics[("lepton_model_swaps_total", (("outcome", "swapped"),))] == 1
        assert metrics[("lepton_model_swaps_total", (("outcome", "refused"),))] == 0
        info_metric = [k for k in metrics if k[0] == "lepton_artifact_info"]
        assert len(info_metric) == 1 and ("sha256", checksum(models["b"])) in info_metric[0][1]


@pytest.mark.parametrize("target, reason", [
    ("missing", "no such model folder"),
    ("damaged", "model.safetensors"),
    ("ner", "token_classification"),
    ("pair", "text pairs"),
    ("fewer", "'positive'"),
])
def test_a_bad_swap_is_refused_and_the_old_model_keeps_serving(models, tmp_path, target, reason):
    path = tmp_path / "no-such-model" if target == "missing" else models[target]
    with _client(models["a"]) as client:
        _warmed(client)
        response = _swap(client, path)
        assert response.status_code == 409, response.text
        assert reason in response.json()["detail"]
        assert client.get("/healthz").json()["artifact"]["sha256"] == checksum(models["a"])
        assert client.get("/readyz").status_code == 200
        served = client.post("/v1/predict", json={"inputs": ["still serving"]})
        assert served.status_code == 200 and served.json()["model_sha256"] == checksum(models["a"])
        metrics = _samples(client.get("/metrics").text)
        assert metrics[("lepton_model_swaps_total", (("outcome", "refused"),))] == 1
        assert metrics[("lepton_model_swaps_total", (("outcome", "swapped"),))] == 0


def test_the_admin_route_needs_the_token_and_is_off_without_one(models):
    with _client(models["a"], admin_token=None) as client:
        assert _swap(client, models["b"]).status_code == 404
        assert "/v1/admin/swap" not in client.get("/openapi.json").json()["paths"]
    with _client(models["a"]) as client:
        assert _swap(client, models["b"], {"Content-Type": "application/json"}).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token", "Content-Type": "application/json"}
        assert _swap(client, models["b"], wrong).status_code == 403
        assert client.post("/v1/admin/swap", content=b"{}", headers=AUTH).status_code == 422
        assert client.post("/v1/admin/swap", content=b'{"model": 3}', headers=AUTH).status_code == 422
        assert client.get("/healthz").json()["artifact"]["sha256"] == checksum(models["a"])


def test_with_require_signature_only_a_model_signed_by_the_key_is_swapped_in(signed):
    with _client(signed["a"], require_signature=str(signed["pub"])) as client:
        assert client.get("/healthz").json()["artifact"]["signature_verified"] is True
        for bad, reason in (("b_unsigned", "not signed"), ("b_theirs", "not with the trusted key")):
            response = _swap(client, signed[bad])
            assert response.status_code == 409 and reason in response.json()["detail"].lower(), response.text
            assert client.get("/healthz").json()["artifact"]["sha256"] == checksum(signed["a"])
        response = _swap(client, signed["b"])
        assert response.status_code == 200, response.text
        assert client.get("/healthz").json()["artifact"]["sha256"] == checksum(signed["b"])


def test_a_second_swap_while_one_runs_is_refused(models):
    with _client(models["a"]) as client:
        results: list[int] = []
        threads = [threading.Thread(target=lambda m=m: results.append(_swap(client, models[m]).status_code))
                   for m in ("b", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Loading takes long enough that the second finds the first running (409), unless it
        # came after it finished (200, the same model again).
        assert sorted(results) in ([200, 409], [200, 200])
        assert client.get("/healthz").json()["artifact"]["sha256"] == checksum(models["b"])


def test_retire_lets_queued_requests_finish_on_the_old_model_then_stops():
    from lepton.serve.batcher import MicroBatcher, ShuttingDownError

    def slow(items: list[Any]) -> list[dict[str, Any]]:
        time.sleep(0.05)
        return [{"old": x} for x in items]

    async def scenario() -> tuple[list[Any], int, list[Any]]:
        old = MicroBatcher(slow, max_batch=2, max_wait_ms=0, max_queue=64)
        old.start()
        jobs = [asyncio.ensure_future(old.submit([i])) for i in range(10)]
        await asyncio.sleep(0.01)  # the first batch is running, the rest queued
        refused = await old.retire(timeout=10)
        done = await asyncio.gather(*jobs)
        stuck = MicroBatcher(lambda items: time.sleep(0.5) or [{} for _ in items], max_batch=1, max_wait_ms=0,
                             max_queue=64)
        stuck.start()
        late = [asyncio.ensure_future(stuck.submit([i])) for i in range(3)]
        await asyncio.sleep(0.01)
        left = await stuck.retire(timeout=0.1)
        outcomes = await asyncio.gather(*late, return_exceptions=True)
        with pytest.raises(ShuttingDownError):
            await old.submit(["after"])
        return [refused, done], left, outcomes

    (refused, done), left, outcomes = asyncio.run(scenario())
    assert refused == 0 and done == [[{"old": i}] for i in range(10)]
    assert left == 3 and all(isinstance(o, ShuttingDownError) for o in outcomes)


# ---------------------------------------------------------------------- a real server


def _load(url: str, stop: threading.Event, log: list[tuple[float, float, int, str]]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = client.post(url + "/v1/predict", json={"inputs": ["a fine film", "dull"]})
                sha = r.json().get("model_sha256", "") if r.status_code == 200 else r.text
                log.append((sent, time.monotonic(), r.status_code, sha))
            except httpx.HTTPError as err:  # a dropped connection is a failure too
                log.append((sent, time.monotonic(), -1, repr(err)))


def test_swap_under_8_concurrent_clients_drops_none_then_sighup_reloads(models, tmp_path):
    from lepton.core.atomic import swap_into_place

    live = _copy(models["a"], tmp_path / "live" / "model")
    updated = _copy(models["b"], tmp_path / "updated" / "model")
    server = Server(live, "--model-batch", "4", "--max-wait-ms", "2", log_dir=tmp_path, name="swap",
                    env={TEST_DELAY_ENV: "20", "LEPTON_ADMIN_TOKEN": TOKEN})
    try:
        server.wait_ready()
        assert httpx.get(server.url + "/healthz").json()["artifact"]["sha256"] == checksum(models["a"])
        stop, log = threading.Event(), []
        clients = [threading.Thread(target=_load, args=(server.url, stop, log)) for _ in range(8)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        asked = time.monotonic()
        swapped = httpx.post(server.url + "/v1/admin/swap", json={"model": str(updated)},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        answered = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for c in clients:
            c.join(30)
        assert swapped.status_code == 200, swapped.text + server.log()
        failed = [entry for entry in log if entry[2] != 200]
        assert not failed, failed[:5]
        old, new = checksum(models["a"]), checksum(models["b"])
        assert {sha for *_, sha in log} == {old, new}
        after = [sha for sent, _, _, sha in log if sent > answered]
        assert all(sha == new for sha in after), "a request sent after the swap met the old model"
        assert all(sha == old for _, got, _, sha in log if got < asked)
        assert sum(sent > answered for sent, *_ in log) > 8 and sum(got < asked for _, got, *_ in log) > 8
        assert httpx.get(server.url + "/healthz").json()["artifact"]["sha256"] == new

        # SIGHUP: the operator replaced the served folder atomically (as `lepton update -o` does).
        third = checksum(models["c"])
        swap_into_place(_copy(models["c"], tmp_path / "staging" / "model"), updated)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = httpx.get(server.url + "/healthz").json()
            if health["artifact"]["sha256"] == third:
                break
            time.sleep(0.1)
        assert health["artifact"]["sha256"] == third, server.log()
        assert health["artifact"]["path"] == str(updated.absolute())
        r = httpx.post(server.url + "/v1/predict", json={"inputs": ["fine"]})
        assert r.status_code == 200 and r.json()["model_sha256"] == third

        # SIGHUP onto an incompatible model (a label gone): refused, the server serves on.
        swap_into_place(_copy(models["a"], tmp_path / "staging2" / "model"), updated)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "lacks the label" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "swap refused, the old model keeps serving" in server.log()
        assert httpx.get(server.url + "/healthz").json()["artifact"]["sha256"] == third
        assert server.proc.poll() is None, "SIGHUP ended the server"
    finally:
        server.stop()


# ---------------------------------------------------------------------- generative servers


def test_a_generative_server_refuses_a_swap_with_409_and_names_its_artifact(lm):  # noqa: F811
    from fastapi.testclient import TestClient

    from lepton.serve.generation import create_generate_app
    from lepton.serve.swap import Artifact

    model, tokenizer = lm
    artifact = Artifact(path="/models/tiny-llama", sha256="ab" * 32, lepton_version="0", signature_verified=False)
    app = create_generate_app(model, tokenizer, model_name="tiny-llama", artifact=artifact, admin_token=TOKEN)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok", "artifact": artifact.model_dump()}
        assert client.get("/readyz").json()["artifact"]["sha256"] == "ab" * 32
        assert _swap(client, "/models/other", {"Content-Type": "application/json"}).status_code == 401
        refused = _swap(client, "/models/other")
        assert refused.status_code == 409, refused.text
        assert "not supported for generative models yet" in refused.json()["error"]["message"]
    plain = create_generate_app(model, tokenizer, model_name="tiny-llama")
    with TestClient(plain) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert _swap(client, "/models/other").status_code == 404


def test_a_multitask_model_swaps_with_its_heads_and_refuses_a_model_without_them(tiny_model_dir, tmp_path, models):
    import lepton
    from lepton.pipeline.recipe import parse_recipe
    from tests.test_multitask import multitask_recipe

    lepton.run(parse_recipe(multitask_recipe(tiny_model_dir, tmp_path)), progress=False)
    first = tmp_path / "out" / "model"
    again = _copy(first, tmp_path / "again" / "model")
    with _client(first) as client:
        refused = _swap(client, models["a"])
        assert refused.status_code == 409 and "extra tasks" in refused.json()["detail"], refused.text
        assert _swap(client, again).status_code == 200
        assert client.get("/healthz").json()["artifact"]["path"] == str(again.absolute())
        topic = client.post("/v1/tasks/topic/predict", json={"inputs": ["bank stock today"]})
        assert topic.status_code == 200 and set(topic.json()["predictions"][0]["scores"]) == {"sport", "money", "tech"}
        assert client.post("/v1/predict", json={"inputs": ["great movie"]}).status_code == 200
