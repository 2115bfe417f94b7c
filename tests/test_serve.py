"""`lepton serve` as a client sees it: real server processes on loopback ports, a real HTTP client.

The tiny artifacts are built, not trained (a random 2-layer BERT saved with save_artifact), and
every server this module needs is started at once, so their start-ups overlap; each test waits only
for the server it uses. Servers are always killed in teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from lepton.serve.app import TEST_DELAY_ENV

pytestmark = pytest.mark.timeout(240)

SENTENCES = ["a charming and often affecting journey .", "unflinchingly bleak and desperate",
             "the acting was superb", ""]
LIMITS = ["--max-inputs", "8", "--max-chars", "200", "--max-body-bytes", "4096"]
SCORECARD = {  # the shape lepton.run writes (see evaluation/scorecard.py), trimmed
    "name": "finetune", "split": "dev", "n_examples": 872,
    "quality": {"headline": "accuracy",
                "metrics": {"accuracy": {"value": 0.9, "ci95_low": 0.88, "ci95_high": 0.92, "n": 872}}},
    "efficiency": {"runtime": "torch", "size_mb": 0.5, "latency_ms": {"b1_real": {"p50": 1.25}}},
}


# ---------------------------------------------------------------------- artifacts


def _build(tiny_model_dir: Path, dest: Path, *, kind: str, labels: list[str], pair: bool = False,
           bias: list[float] | None = None, scorecards: list[dict] | None = None) -> Path:
    import torch
    from transformers import AutoConfig, BertForSequenceClassification, BertForTokenClassification

    from lepton.models import load_tokenizer
    from lepton.pipeline.artifact import save_artifact
    from lepton.runtimes.bundle import ModelBundle
    from lepton.tasks import TaskSpec

    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=len(labels))
    cls = BertForSequenceClassification if kind == "sequence_classification" else BertForTokenClassification
    torch.manual_seed(0)
    model = cls(config).eval()
    if bias is not None:  # make a random tagger emit some entities
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor(bias))
    task = TaskSpec(kind=kind, labels=labels, raw_labels=labels, max_length=64, pair=pair)
    bundle = ModelBundle(model=model, tokenizer=load_tokenizer(str(tiny_model_dir)), task=task,
                         source="tiny-bert")
    return save_artifact(bundle, dest, scorecards=scorecards)


@pytest.fixture(scope="module")
def artifacts(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-artifacts")
    out = {
        "cls": _build(tiny_model_dir, root / "tiny-sentiment" / "model", kind="sequence_classification",
                      labels=["negative", "positive"], scorecards=[SCORECARD]),
        "pair": _build(tiny_model_dir, root / "tiny-nli" / "model", kind="sequence_classification",
                       labels=["entailment", "neutral", "contradiction"], pair=True),
        "ner": _build(tiny_model_dir, root / "tiny-ner" / "model", kind="token_classification",
                      labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], bias=[0.0, 0.6, 0.3, 0.6, 0.3]),
    }
    tampered = Path(shutil.copytree(out["cls"], root / "tampered" / "model"))
    weights = tampered / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    out["tampered"] = tampered
    return out


# ---------------------------------------------------------------------- server processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m lepton serve` in a subprocess, its output in a log file."""

    def __init__(self, model: Path, *args: str, log_dir: Path, name: str, env: dict[str, str] | None = None,
                 watch: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lepton", "serve", str(model), "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.ready = False
        self.seen: list[tuple[int, int, str]] = []  # (healthz, readyz, readyz body) while starting
        self.watcher = threading.Thread(target=self._watch, daemon=True) if watch else None
        if self.watcher:
            self.watcher.start()

    def _watch(self, timeout: float = 150) -> None:
        """Poll /healthz and /readyz from the first moment until ready, recording what they say."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                health = httpx.get(self.url + "/healthz", timeout=2).status_code
                ready = httpx.get(self.url + "/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            self.seen.append((health, ready.status_code, ready.text))
            if ready.status_code == 200:
                self.ready = True
                return
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 150) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.ready = True
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def servers(artifacts, tmp_path_factory):
    """Start the module's servers at once (start-ups overlap); `servers[name]` waits for one.

    Two model servers only, as each process costs seconds of CPU to start: "main" (small limits)
    and "slow", whose every model call sleeps 1 s, the warm-up too, so that concurrent requests
    pile up (batches, a full queue), the warm-up can be watched from outside, and a request is
    surely in flight when SIGTERM comes. A server found dead (after the shutdown test) is restarted.
    """
    logs = tmp_path_factory.mktemp("serve-logs")
    specs = {
        "main": {"args": LIMITS},
        "slow": {"args": ["--max-wait-ms", "50", "--max-queue", "16"], "env": {TEST_DELAY_ENV: "1000"},
                 "watch": True},
    }
    started = {name: Server(artifacts["cls"], *spec["args"], log_dir=logs, name=name,
                            env=spec.get("env"), watch=spec.get("watch", False))
               for name, spec in specs.items()}
    tampered = subprocess.Popen([sys.executable, "-m", "lepton", "serve", str(artifacts["tampered"]),
                                 "--port", str(free_port())],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    class Pool:
        def __getitem__(self, name: str) -> Server:
            server = started[name]
            if server.proc.poll() is not None and server.ready:  # it served, then a test stopped it
                spec = specs[name]
                server = started[name] = Server(artifacts["cls"], *spec["args"], log_dir=logs,
                                                name=f"{name}-again", env=spec.get("env"))
            return server.wait_ready()

        def starting(self, name: str) -> Server:
            return started[name]

        def tampered(self) -> subprocess.CompletedProcess:
            out, err = tampered.communicate(timeout=120)
            return subprocess.CompletedProcess(tampered.args, tampered.returncode, out, err)

    try:
        yield Pool()
    finally:
        for server in started.values():
            server.stop()
        if tampered.poll() is None:
            tampered.kill()
            tampered.communicate()


@pytest.fixture(scope="module")
def main_server(servers) -> Server:
    return servers["main"]


def post(server: Server, body: Any = None, *, content: bytes | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    if content is None:
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(server.url + "/v1/predict", content=content, headers=headers, timeout=30)


def metric_samples(server: Server) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["label"] == w["label"]
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)


# ---------------------------------------------------------------------- predictions


def test_predictions_equal_lepton_load(main_server, artifacts):
    import lepton

    local = lepton.load(artifacts["cls"])
    response = post(main_server, {"inputs": SENTENCES})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-sentiment"
    _assert_same_predictions(body["predictions"], local.predict(SENTENCES))
    for text in SENTENCES[:2]:  # one input per request, as most clients send
        _assert_same_predictions(post(main_server, {"inputs": [text]}).json()["predictions"],
                                 local.predict([text]))


# Pair and NER models run in this process (create_app behind httpx's ASGI transport, lifespan and
# all): a server process more each would cost more start-up time than the tests take.


async def _in_process(app: Any, *requests: tuple[str, str, Any]) -> list[httpx.Response]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lepton.test", timeout=60) as client:
            return [await client.request(method, path, json=body) for method, path, body in requests]


def test_pair_model_takes_text_pairs(artifacts):
    import lepton
    from lepton.serve.app import create_app

    local = lepton.load(artifacts["pair"])
    pairs = [["A man plays a guitar.", "Someone makes music."], ["It rains.", "The sun is out."]]
    good, one, three, single, schema = asyncio.run(_in_process(
        create_app(artifacts["pair"], predictor=local),
        ("POST", "/v1/predict", {"inputs": pairs}), ("POST", "/v1/predict", {"inputs": ["one text"]}),
        ("POST", "/v1/predict", {"inputs": [["a", "b", "c"]]}), ("POST", "/v1/predict", {"inputs": [["a"]]}),
        ("GET", "/openapi.json", None)))
    assert good.status_code == 200, good.text
    assert good.json()["model"] == "tiny-nli"
    _assert_same_predictions(good.json()["predictions"], local.predict([tuple(p) for p in pairs]))
    assert [r.status_code for r in (one, three, single)] == [422] * 3
    inputs = schema.json()["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    assert inputs["items"]["type"] == "array" and inputs["items"]["maxItems"] == 2


def test_ner_entities_carry_character_offsets(artifacts):
    import lepton
    from lepton.serve.app import create_app

    local = lepton.load(artifacts["ner"])
    texts = ["Alice visited   Paris with Bob .", "Carol lives in Rome", "   "]
    (response,) = asyncio.run(_in_process(create_app(artifacts["ner"], predictor=local),
                                          ("POST", "/v1/predict", {"inputs": texts})))
    assert response.status_code == 200, response.text
    got, want = response.json()["predictions"], local.predict(texts)
    assert [g["tokens"] for g in got] == [w["tokens"] for w in want]
    assert [g["tags"] for g in got] == [w["tags"] for w in want]
    assert got[2] == {"tokens": [], "tags": [], "entities": []}
    entities = [(text, e) for text, g in zip(texts, got) for e in g["entities"]]
    assert entities, "the biased random tagger should find some entity"
    for text, entity in entities:
        assert text[entity["start"]:entity["end"]] == entity["text"]
    keys = ("entity", "words", "start", "end", "text")
    assert [[{k: e[k] for k in keys} for e in g["entities"]] for g in got] == \
        [[{k: e[k] for k in keys} for e in w["entities"]] for w in want]


def test_model_errors_become_500_and_input_errors_422(artifacts):
    import lepton
    from lepton.core.errors import LeptonError
    from lepton.serve.app import create_app

    real = lepton.load(artifacts["cls"])

    class Flaky:  # the real predictor, except on two magic words
        manifest, task = real.manifest, real.task

        def predict(self, items: list[str], batch_size: int = 32) -> list[dict]:
            if "explode" in items:
                raise RuntimeError("boom")
            if "refuse" in items:
                raise LeptonError("this input cannot be predicted")
            return real.predict(items, batch_size=batch_size)

    boom, refused, fine = asyncio.run(_in_process(
        create_app(artifacts["cls"], predictor=Flaky()), ("POST", "/v1/predict", {"inputs": ["explode"]}),
        ("POST", "/v1/predict", {"inputs": ["refuse"]}), ("POST", "/v1/predict", {"inputs": ["fine"]})))
    assert boom.status_code == 500 and "prediction failed" in boom.json()["detail"]
    assert "boom" not in boom.text  # internals stay in the server log
    assert refused.status_code == 422 and refused.json()["detail"] == "this input cannot be predicted"
    assert fine.status_code == 200


# ---------------------------------------------------------------------- bad requests


def _chunks(total: int):
    for _ in range(total // 1024):
        yield b" " * 1024


BAD_REQUESTS = {
    # name: (body as bytes, headers, status, words the message must hold)
    "invalid json": (b'{"inputs": [', None, 422, "invalid JSON"),
    "not an object": (b'["a film"]', None, 422, "valid dictionary"),
    "inputs not a list": (b'{"inputs": "a film"}', None, 422, "valid list"),
    "number in inputs": (b'{"inputs": [1]}', None, 422, "valid string"),
    "null in inputs": (b'{"inputs": [null]}', None, 422, "valid string"),
    "pair to a single-text model": (b'{"inputs": [["a", "b"]]}', None, 422, "valid string"),
    "empty list": (b'{"inputs": []}', None, 422, "at least 1"),
    "missing inputs": (b'{}', None, 422, "Field required"),
    "unknown field": (b'{"inputs": ["a"], "top_k": 3}', None, 422, "Extra inputs"),
    "too many inputs": (json.dumps({"inputs": ["a"] * 9}).encode(), None, 422, "at most 8"),
    "too long input": (json.dumps({"inputs": ["x" * 201]}).encode(), None, 422, "at most 200 characters"),
    "lone surrogate": (b'{"inputs": ["\\ud800"]}', None, 422, "unicode string"),
    "body too large": (json.dumps({"inputs": ["x" * 150] * 30}).encode(), None, 413, "too large"),
    "text/plain": (b'{"inputs": ["a"]}', {"Content-Type": "text/plain"}, 415, "application/json"),
    "no content type": (b'{"inputs": ["a"]}', {}, 415, "application/json"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_clear_4xx(main_server, case):
    content, headers, status, needle = BAD_REQUESTS[case]
    headers = {"Content-Type": "application/json"} if headers is None else headers
    response = post(main_server, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert needle in json.dumps(response.json()["detail"])
    assert "x" * 150 not in response.text  # the input is not echoed back


def test_body_too_large_while_reading_a_chunked_upload(main_server):
    response = httpx.post(main_server.url + "/v1/predict", content=_chunks(64 * 1024),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert "content-length" not in response.request.headers  # sent chunked: counted while read
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


def test_the_server_survives_bad_input(main_server):
    assert httpx.get(main_server.url + "/v1/predict").status_code == 405
    assert httpx.get(main_server.url + "/no/such/path").status_code == 404
    for content in (b"\xff\xfe\x00", b"[" * 4000, b"{" * 10_000,
                    b'{"inputs": ["\\u0000\\ufffd \\ud83d\\ude00"]}'):
        assert post(main_server, content=content,
                    headers={"Content-Type": "application/json"}).status_code in (200, 400, 413, 422)
    assert httpx.get(main_server.url + "/healthz").json()["status"] == "ok"
    assert post(main_server, {"inputs": ["still fine"]}).status_code == 200


# ---------------------------------------------------------------------- endpoints


def test_health_readiness_model_info_and_schema(main_server, artifacts):
    health = httpx.get(main_server.url + "/healthz").json()
    assert health["status"] == "ok" and health["artifact"]["path"] == str(artifacts["cls"].absolute())
    assert health["artifact"]["sha256"] == json.loads((artifacts["cls"] / "lepton.json").read_text())["manifest_sha256"]
    assert httpx.get(main_server.url + "/readyz").json()["status"] == "ready"
    info = httpx.get(main_server.url + "/v1/model").json()
    assert info["name"] == "tiny-sentiment"
    assert info["task"] == "sequence_classification"
    assert info["labels"] == ["negative", "positive"] and info["pair"] is False
    limits = dict(info["limits"])
    assert limits.pop("model_batch") in (1, 2, 4, 8, 16, 32)  # measured at start-up
    assert limits == {"max_inputs": 8, "max_chars": 200, "max_body_bytes": 4096, "max_batch": 32,
                      "max_wait_ms": 5.0, "max_queue": 256}
    assert info["scorecards"] == [{"name": "finetune", "split": "dev", "n_examples": 872,
                                   "headline": "accuracy", "value": 0.9, "ci95_low": 0.88,
                                   "ci95_high": 0.92, "latency_b1_p50_ms": 1.25, "size_mb": 0.5,
                                   "runtime": "torch"}]
    schema = httpx.get(main_server.url + "/openapi.json").json()
    inputs = schema["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    assert (inputs["minItems"], inputs["maxItems"], inputs["items"]["maxLength"]) == (1, 8, 200)
    assert {"413", "415", "422", "503"} <= set(schema["paths"]["/v1/predict"]["post"]["responses"])
    docs = httpx.get(main_server.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_metrics_count_requests_batches_and_queue(main_server):
    for _ in range(3):
        assert post(main_server, {"inputs": ["one", "two"]}).status_code == 200
    assert post(main_server, {"inputs": []}).status_code == 422
    samples = metric_samples(main_server)
    ok = samples[("lepton_http_requests_total", (("path", "/v1/predict"), ("status", "200")))]
    assert ok >= 3
    assert samples[("lepton_http_requests_total", (("path", "/v1/predict"), ("status", "422")))] >= 1
    assert post(main_server, content=b"x" * 5000, headers={"Content-Type": "application/json"}).status_code == 413
    samples = metric_samples(main_server)
    assert samples[("lepton_http_requests_total", (("path", "/v1/predict"), ("status", "413")))] >= 1
    assert samples[("lepton_http_request_duration_seconds_count", (("path", "/v1/predict"),))] >= 4
    assert samples[("lepton_batch_size_count", ())] >= 3
    assert samples[("lepton_batch_size_sum", ())] >= 6
    assert samples[("lepton_queue_depth", ())] == 0
    assert samples[("lepton_queue_capacity", ())] == 256
    assert samples[("lepton_ready", ())] == 1


# ---------------------------------------------------------------------- batching and limits


async def _concurrent(server: Server, n: int, text: str = "a film") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        return await asyncio.gather(*[client.post("/v1/predict", json={"inputs": [f"{text} {i}"]})
                                      for i in range(n)])


def test_concurrent_requests_are_batched(servers):
    server = servers["slow"]
    responses = asyncio.run(_concurrent(server, 16))
    assert [r.status_code for r in responses] == [200] * 16
    samples = metric_samples(server)
    batches = samples[("lepton_batch_requests_count", ())]
    singles = samples[("lepton_batch_requests_bucket", (("le", "1.0"),))]
    assert batches - singles >= 1, "no model call served more than one request"
    assert samples[("lepton_batch_size_sum", ())] >= 16  # the warm-up is not counted


def test_full_queue_answers_503_with_retry_after(servers):
    server = servers["slow"]  # --max-queue 16, each model call sleeps 1 s

    async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            first = asyncio.create_task(client.post("/v1/predict", json={"inputs": ["first"]}))
            await asyncio.sleep(0.15)  # its batch is now in the model call
            rest = await asyncio.gather(*[client.post("/v1/predict", json={"inputs": [f"r {i}"]})
                                          for i in range(24)])
            return await first, rest

    first, rest = asyncio.run(scenario())
    assert first.status_code == 200
    codes = [r.status_code for r in rest]
    assert set(codes) <= {200, 503}
    busy = [r for r in rest if r.status_code == 503]
    assert len(busy) >= 8 - 2 and codes.count(200) >= 14  # 16 may wait; timing may free a slot or two
    assert all(r.headers["retry-after"] == "1" for r in busy)
    assert "queue is full" in busy[0].json()["detail"]
    assert metric_samples(server)[("lepton_http_requests_total",
                                   (("path", "/v1/predict"), ("status", "503")))] == len(busy)


def test_lifecycle_warm_up_then_graceful_shutdown(servers):
    # Every model call sleeps 1 s here, the warm-up too: /healthz answered at once while /readyz
    # was 503 until the warm-up was done; then SIGTERM while a request is in flight: it gets 200.
    server = servers.starting("slow")
    server.watcher.join(150)
    assert server.seen, server.log()
    assert server.seen[0][:2] == (200, 503) and json.loads(server.seen[0][2])["status"] == "warming up"
    assert server.seen[-1][:2] == (200, 200) and json.loads(server.seen[-1][2])["status"] == "ready"

    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", post(server, {"inputs": ["in flight"]})))
    thread.start()
    time.sleep(0.5)  # the request is in its batch now
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    response = result["r"]
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1
    server.proc.wait(30)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)
    assert "Traceback" not in server.log()


def test_worker_factory_builds_the_app_from_the_environment(artifacts, monkeypatch):
    # `--workers N` hands uvicorn the import string "lepton.serve.app:factory"; each worker calls it.
    from uvicorn.importer import import_from_string

    from lepton.serve import ENV_MODEL, ENV_SETTINGS, ServeSettings

    factory = import_from_string("lepton.serve.app:factory")
    monkeypatch.setenv(ENV_MODEL, str(artifacts["cls"]))
    monkeypatch.setenv(ENV_SETTINGS, ServeSettings(max_inputs=3, name="w").model_dump_json())
    info, too_many = asyncio.run(_in_process(factory(), ("GET", "/v1/model", None),
                                             ("POST", "/v1/predict", {"inputs": ["a"] * 4})))
    assert info.json()["name"] == "w" and info.json()["limits"]["max_inputs"] == 3
    assert too_many.status_code == 422


# ---------------------------------------------------------------------- refusing to start


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lepton: error: "), done.stderr
    return lines[0]


def test_a_tampered_artifact_is_refused(servers):
    done = servers.tampered()  # started with the servers, so its start-up overlapped theirs
    line = _one_error_line(done)
    assert done.stdout == ""
    assert "model.safetensors" in line and "checksum mismatch" in line


def test_a_busy_port_is_refused_before_loading(artifacts):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        done = subprocess.run([sys.executable, "-m", "lepton", "serve", str(artifacts["cls"]),
                               "--port", str(sock.getsockname()[1])], capture_output=True, text=True,
                              timeout=120, check=False)
        line = _one_error_line(done)
    assert "cannot listen on 127.0.0.1" in line


def test_a_bad_setting_is_one_line(capsys):
    from lepton.cli import main

    assert main(["serve", "some/model", "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lepton: error: --max-batch: ")


# ---------------------------------------------------------------------- fuzzing the schema


def test_fuzz_the_openapi_schema_no_server_errors(main_server):
    """Schema-driven requests, valid and invalid (schemathesis over hypothesis, fixed seed)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(main_server.url + "/openapi.json")
    budget = {"/v1/predict": 200}
    sent: list[tuple[str, int]] = []

    def fuzz(operation: Any, examples: int) -> None:
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                             operation.as_strategy(GenerationMode.NEGATIVE))

        @seed(20240601)
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: Any) -> None:
            response = case.call(base_url=main_server.url, timeout=30)
            sent.append((operation.path, response.status_code))
            assert response.status_code < 500, (case.as_curl_command(), response.text)

        check()

    for result in schema.get_all_operations():
        operation = result.ok()
        fuzz(operation, budget.get(operation.path, 5))
    predicted = [code for path, code in sent if path == "/v1/predict"]
    assert len(predicted) >= 150
    assert 200 in predicted and any(400 <= c < 500 for c in predicted)  # both kinds were sent
    assert httpx.get(main_server.url + "/readyz").status_code == 200


# ---------------------------------------------------------------------- the batcher alone


def test_a_failing_request_fails_alone_and_the_worker_lives_on():
    from lepton.core.errors import LeptonError
    from lepton.serve.batcher import MicroBatcher, QueueFullError
    from lepton.serve.metrics import ServeMetrics

    calls: list[int] = []

    def predict(items: list[str]) -> list[dict]:
        calls.append(len(items))
        if "boom" in items:
            raise RuntimeError("model exploded")
        if "bad" in items:
            raise LeptonError("bad input")
        return [{"label": s} for s in items]

    async def scenario() -> list[Any]:
        metrics = ServeMetrics()
        batcher = MicroBatcher(predict, max_batch=8, max_wait_ms=20, max_queue=4, metrics=metrics)
        batcher.start()
        jobs = [["a", "b"], ["boom"], ["c"], ["bad"]]
        out = await asyncio.gather(*[batcher.submit(j) for j in jobs], return_exceptions=True)
        with pytest.raises(QueueFullError):
            await asyncio.gather(*[batcher.submit(["x"]) for _ in range(6)])
        out.append(await batcher.submit(["after"]))
        await batcher.close(timeout=5)
        return out

    out = asyncio.run(scenario())
    assert out[0] == [{"label": "a"}, {"label": "b"}] and out[2] == [{"label": "c"}]
    assert isinstance(out[1], RuntimeError) and isinstance(out[3], LeptonError)
    assert out[4] == [{"label": "after"}]
    assert calls[0] == 5  # one batch for all four requests, then one by one


def test_a_failed_warm_up_keeps_the_server_not_ready():
    from lepton.serve.batcher import MicroBatcher

    def predict(items: list[str]) -> list[dict]:
        raise RuntimeError("no model")

    async def scenario() -> tuple[str, str]:
        batcher = MicroBatcher(predict, max_batch=4, max_wait_ms=0, max_queue=4, warmup=["warm up"])
        batcher.start()
        with pytest.raises(RuntimeError):
            await batcher.submit(["a"])  # served after the warm-up, and fails like it
        state = batcher.state
        await batcher.close(timeout=5)
        return state, batcher.state

    assert asyncio.run(scenario()) == ("warm-up failed", "shutting down")


def test_model_batch_tuning_picks_the_fastest_size_per_input():
    from types import SimpleNamespace

    from lepton.serve.app import tune_model_batch

    class Fake:
        """3 ms per model call, 0.5 ms per input up to 4 inputs a call, 2 ms beyond: best at 4."""

        task = SimpleNamespace(pair=False)

        def predict(self, items, batch_size):
            for start in range(0, len(items), batch_size):
                n = len(items[start:start + batch_size])
                time.sleep(0.003 + n * (0.0005 if batch_size <= 4 else 0.002))
            return [None] * len(items)

    found = tune_model_batch(Fake(), 32)
    assert found["model_batch"] == 4, found
    assert set(found["ms_per_input"]) == {"1", "2", "4", "8", "16", "32"}
    assert tune_model_batch(Fake(), 2)["model_batch"] == 2  # never above max_batch
