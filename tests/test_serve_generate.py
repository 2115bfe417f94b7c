"""The generative server as a client sees it: a tiny random Llama and a byte-level tokenizer built
here, served by uvicorn in a thread on a loopback port, spoken to with a real HTTP client.

The served engine sleeps a little before each decode step (a wrapper, not a server setting), so
requests overlap in time the way real ones do on a real model."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")

from lepton.serve.generation import GenerateSettings, TorchEngine, create_generate_app  # noqa: E402
from lepton.serve.generation.sampling import TextStream  # noqa: E402

pytestmark = pytest.mark.timeout(120)

STEP_DELAY_S = 0.01
LIMITS = {"max_batch": 8, "max_queue": 8, "max_prompt_tokens": 64, "max_new_tokens": 32}


# ---------------------------------------------------------------------- model, tokenizer, servers


def _tokenizer() -> Any:
    """Byte-level BPE without merges: one token per UTF-8 byte, plus <pad>, <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    return fast


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         initializer_range=0.2)  # peaked logits: wrong positions or masks change them
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = 0
    return model, tokenizer


class SlowEngine:
    """A TorchEngine that sleeps before each decode step."""

    def __init__(self, inner: TorchEngine, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.max_context = inner.max_context

    def prefill(self, prompts):
        return self.inner.prefill(prompts)

    def decode_step(self, states, last_tokens):
        time.sleep(self.delay)
        return self.inner.decode_step(states, last_tokens)

    def release(self, states):
        self.inner.release(states)


class Server:
    def __init__(self, app: Any) -> None:
        self.app = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    @property
    def scheduler(self) -> Any:
        return self.app.state.scheduler

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def _serve(lm, delay: float, **limits: Any) -> Server:
    model, tokenizer = lm
    engine = SlowEngine(TorchEngine(model), delay)
    app = create_generate_app(model, tokenizer, GenerateSettings(**limits), model_name="tiny-llama",
                              generation_defaults={"max_new_tokens": 16}, engine=engine)
    return Server(app)


@pytest.fixture(scope="module")
def server(lm):
    s = _serve(lm, STEP_DELAY_S, **LIMITS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def small_server(lm):
    """One sequence at a time, one waiting: the third concurrent request is refused."""
    s = _serve(lm, 0.02, max_batch=1, max_queue=1, max_new_tokens=32)
    yield s
    s.stop()


def _post(url: str, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30, **kw)


def _events(response: httpx.Response) -> list[Any]:
    """The SSE data payloads; the last one must be [DONE]."""
    datas = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert datas and datas[-1] == "[DONE]", datas[-3:]
    return [json.loads(d) for d in datas[:-1]]


def _stream(url: str, path: str, body: dict[str, Any]) -> list[Any]:
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return _events(r)


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _reference(model: Any, prompt: list[int], max_new: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new, do_sample=False, eos_token_id=2, pad_token_id=0)
    return out[0, len(prompt):].tolist()


# ---------------------------------------------------------------------- units


def test_text_stream_keeps_characters_whole_and_cuts_at_stop(lm) -> None:
    _, tokenizer = lm
    text = "héllo wörld, ça va? END and more"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    plain = TextStream(tokenizer)
    deltas = [plain.push(t) for t in ids] + [plain.finish()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    stopped = TextStream(tokenizer, stop=["END"])
    out = []
    for t in ids:
        out.append(stopped.push(t))
        if stopped.stopped:
            break
    out.append(stopped.finish())
    assert "".join(out) == "héllo wörld, ça va? "
    assert not any("E" in d for d in out)  # the stop string's start was held back, never sent


def test_engine_greedy_equals_generate_as_requests_join_and_leave(lm) -> None:
    model, _ = lm
    engine = TorchEngine(model)
    prompts = {"a": [1, 5, 9, 33, 70, 100, 3], "b": [1, 200, 8], "c": [1] + [4] * 11 + [50]}
    want = {k: _reference(model, p, 12) for k, p in prompts.items()}
    got: dict[str, list[int]] = {k: [] for k in prompts}
    states: dict[str, Any] = {}
    worst = 0.0

    def step(names: list[str]) -> None:
        nonlocal worst
        logits = engine.decode_step([states[n] for n in names], [got[n][-1] for n in names])
        for n, row in zip(names, logits):
            alone = model(torch.tensor([prompts[n] + got[n]])).logits[0, -1]  # no cache, no padding
            worst = max(worst, float((alone - row).abs().max()))
            got[n].append(int(row.argmax()))

    with torch.inference_mode():
        (states["a"],), first = engine.prefill([prompts["a"]])
        got["a"].append(int(first[0].argmax()))
        for _ in range(3):
            step(["a"])  # a alone
        (states["b"], states["c"]), first = engine.prefill([prompts["b"], prompts["c"]])
        got["b"].append(int(first[0].argmax()))
        got["c"].append(int(first[1].argmax()))
        for _ in range(8):
            step(["a", "b", "c"])  # b and c join: three lengths in one step
        engine.release([states["a"]])  # a leaves with 12 tokens
        for _ in range(3):
            step(["c", "b"])  # the batch is rebuilt without a (and in another order)
    assert worst < 1e-4  # the padded, batched step computes each sequence's own logits
    for k in prompts:
        want_k = want[k][:12]
        assert got[k][:len(want_k)] == want_k, k


# ---------------------------------------------------------------------- HTTP


def test_concurrent_greedy_requests_equal_generate_alone(server, lm) -> None:
    model, tokenizer = lm
    prompts = ["The cat", "A much longer prompt about nothing at all", "Hi"]
    before = sum(n for size, n in server.scheduler.decode_steps.items() if size > 1)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda p: _post(server.url, "/v1/generate",
                                                {"prompt": p, "max_new_tokens": 20, "temperature": 0}), prompts))
    after = sum(n for size, n in server.scheduler.decode_steps.items() if size > 1)
    assert after > before  # they were batched
    for prompt, r in zip(prompts, answers):
        assert r.status_code == 200, r.text
        body = r.json()
        ids = tokenizer(prompt)["input_ids"]
        assert body["token_ids"] == _reference(model, ids, 20)
        assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(body["token_ids"]),
                                 "total_tokens": len(ids) + len(body["token_ids"])}
        assert body["finish_reason"] in ("stop", "length")


def test_two_concurrent_requests_share_one_decode_step(server) -> None:
    sched = server.scheduler
    _wait(lambda: sched.running == 0 and sched.waiting == 0)
    before = sched.decode_steps[2]
    body = {"prompt": "two at once", "max_new_tokens": 12, "ignore_eos": True, "temperature": 0}
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _post(server.url, "/v1/generate", body), range(2)))
    assert [r.status_code for r in answers] == [200, 200]
    assert all(r.json()["usage"]["completion_tokens"] == 12 for r in answers)
    assert sched.decode_steps[2] > before  # a decode step held both requests
    assert answers[0].json()["text"] == answers[1].json()["text"]


def test_streaming_and_openai_shapes(server) -> None:
    url = server.url
    once = {"prompt": "Once", "max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
    plain = _post(url, "/v1/generate", once)
    assert plain.status_code == 200
    events = _stream(url, "/v1/generate", once)
    assert "".join(e["text"] for e in events) == plain.json()["text"]
    assert sum(len(e["token_ids"]) for e in events) == 10
    assert events[-1]["finish_reason"] == "length" and events[-1]["usage"]["completion_tokens"] == 10

    comp = _post(url, "/v1/completions", {"model": "tiny-llama", "prompt": "Once", "max_tokens": 10,
                                          "temperature": 0, "ignore_eos": True}).json()
    assert comp["object"] == "text_completion" and comp["id"].startswith("cmpl-") and comp["model"] == "tiny-llama"
    assert isinstance(comp["created"], int)
    assert comp["choices"][0]["text"] == plain.json()["text"] and comp["choices"][0]["finish_reason"] == "length"
    assert comp["usage"]["completion_tokens"] == 10
    chunks = _stream(url, "/v1/completions", {"prompt": "Once", "max_tokens": 10, "temperature": 0,
                                              "ignore_eos": True, "stream_options": {"include_usage": True}})
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == comp["choices"][0]["text"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == comp["usage"]["total_tokens"]

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
    chat = _post(url, "/v1/chat/completions", {"model": "tiny-llama", "messages": messages, "max_tokens": 8,
                                               "temperature": 0}).json()
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")
    message = chat["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    chunks = _stream(url, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0})
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == chat["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"][0]["delta"] == {}

    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-llama"
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(url + "/readyz").json() == {"status": "ready"}
    assert "/v1/chat/completions" in httpx.get(url + "/openapi.json").json()["paths"]


def test_seeded_sampling_repeats_and_stop_strings_end_text(server) -> None:
    body = {"prompt": "Tell me", "max_new_tokens": 24, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 7,
            "ignore_eos": True}
    a, b = (_post(server.url, "/v1/generate", body).json() for _ in range(2))
    assert a["token_ids"] == b["token_ids"]
    c = _post(server.url, "/v1/generate", {**body, "seed": 8}).json()
    assert c["token_ids"] != a["token_ids"]
    text = a["text"]
    stop = next((text[i:i + 2] for i in range(2, len(text) - 2) if text[i:i + 2].strip()), None)
    if stop is None:
        pytest.skip(f"no usable stop string in the sample {text!r}")
    cut = _post(server.url, "/v1/generate", {**body, "stop": [stop]}).json()
    assert cut["finish_reason"] == "stop" and cut["text"] == text[:text.index(stop)]


def test_disconnected_stream_is_cancelled_and_server_goes_on(server) -> None:
    sched, metrics = server.scheduler, server.app.state.metrics
    _wait(lambda: sched.running == 0 and sched.waiting == 0)
    cancelled = metrics.finished.labels(reason="cancelled")._value.get()
    generated = metrics.generated_tokens._value.get()
    with httpx.stream("POST", server.url + "/v1/generate", timeout=30,
                      json={"prompt": "go on", "max_new_tokens": 32, "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert sched.running == 1
    # Leaving the block closed the connection mid-stream.
    _wait(lambda: metrics.finished.labels(reason="cancelled")._value.get() == cancelled + 1)
    _wait(lambda: sched.running == 0)
    assert metrics.generated_tokens._value.get() - generated < 32  # it stopped early
    after = _post(server.url, "/v1/generate", {"prompt": "still here?", "max_new_tokens": 4, "ignore_eos": True})
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 4
    # A non-streaming client that gives up (its read times out, httpx closes the connection).
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={"prompt": "wait", "max_tokens": 32, "ignore_eos": True},
                   timeout=httpx.Timeout(5.0, read=0.1))
    _wait(lambda: metrics.finished.labels(reason="cancelled")._value.get() == cancelled + 2)
    _wait(lambda: sched.running == 0)


def test_full_queue_answers_503_with_retry_after(small_server) -> None:
    url, sched = small_server.url, small_server.scheduler
    long = {"prompt": "busy", "max_new_tokens": 30, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/generate", json={**long, "stream": True}, timeout=30) as running:
        lines = running.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # admitted: it holds the only slot
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(_post, url, "/v1/generate", {**long, "max_new_tokens": 2})
            _wait(lambda: sched.waiting == 1)
            refused = _post(url, "/v1/completions", {"prompt": "me too", "max_tokens": 2})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "server_error"
            assert refused.json()["error"]["code"] == "server_busy"
            for _ in lines:  # let the running one finish; the waiting one then runs
                pass
            assert waiting.result().status_code == 200


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/generate", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/generate", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/generate", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/generate", {"prompt": "x", "top_k": -1}, 400, "top_k"),
    ("/v1/generate", {"prompt": "x", "seed": "abc"}, 400, "seed"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 0}, 400, "max_new_tokens"),
    ("/v1/generate", {"prompt": "x", "max_new_tokens": 33}, 400, "max_new_tokens"),
    ("/v1/generate", {"prompt": "x" * 80}, 400, "prompt"),
    ("/v1/generate", {"prompt": ""}, 400, "prompt"),
    ("/v1/generate", {"prompt": "x", "stop": [""]}, 400, "stop"),
    ("/v1/generate", {"max_new_tokens": 3}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"prompt": [5, 99999]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "temprature": 1}, 400, "temprature"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 80}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 40},
     400, "max_completion_tokens"),
])
def test_bad_requests_answer_4xx_naming_the_field(server, path, body, status, param) -> None:
    r = _post(server.url, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert param in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_invalid_json_is_400_in_openai_shape(server) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"messages": [', timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("invalid JSON")


def test_metrics_have_token_histograms(server) -> None:
    r = _post(server.url, "/v1/generate", {"prompt": "metrics", "max_new_tokens": 5, "ignore_eos": True})
    assert r.status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for name in ("lepton_generate_time_to_first_token_seconds_bucket",
                 "lepton_generate_time_per_output_token_seconds_bucket",
                 "lepton_generate_decode_batch_size_bucket", "lepton_queue_depth",
                 "lepton_generate_running"):
        assert name in text, name
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples["lepton_generate_time_to_first_token_seconds_count"] >= 1
    assert samples["lepton_generate_time_per_output_token_seconds_count"] >= 1
    assert samples["lepton_generate_generated_tokens_total"] >= 5
    assert samples['lepton_http_requests_total{path="/v1/generate",status="200"}'] >= 1


def test_settings_from_serve_settings_and_engine_protocol(lm) -> None:
    from lepton.serve import ServeSettings
    from lepton.serve.generation import GenerationEngine

    settings = GenerateSettings.from_serve(ServeSettings(max_batch=4, max_queue=3), max_new_tokens=7)
    assert (settings.max_batch, settings.max_queue, settings.max_new_tokens) == (4, 3, 7)
    engine = TorchEngine(lm[0])
    assert isinstance(engine, GenerationEngine) and isinstance(SlowEngine(engine, 0), GenerationEngine)
    assert engine.max_context == 128


def test_drain_refuses_new_requests_and_ends_running_ones_at_the_deadline(lm) -> None:
    import asyncio

    from lepton.serve.generation.sampling import SamplingParams
    from lepton.serve.generation.scheduler import Scheduler, ShuttingDownError

    model, tokenizer = lm

    async def scenario() -> None:
        sched = Scheduler(SlowEngine(TorchEngine(model), 0.02), tokenizer, eos_token_ids=[2], max_batch=2,
                          max_queue=2)
        sched.start()
        handle = sched.submit([1, 5, 6], SamplingParams(max_new_tokens=100, ignore_eos=True))
        await handle.chunks.get()  # it runs
        sched.begin_drain(0.2)
        with pytest.raises(ShuttingDownError):
            sched.submit([1, 5], SamplingParams(max_new_tokens=2))
        result = await asyncio.wait_for(handle.result(), 10)
        assert result.finish_reason == "error" and "shutting down" in (result.error or "")
        assert result.completion_tokens < 100 and sched.running == 0
        await sched.close()
        assert not sched._thread.is_alive()

    asyncio.run(scenario())


# ---------------------------------------------------------------------- strict fields, valid text

C, CH, G = "/v1/completions", "/v1/chat/completions", "/v1/generate"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("path", "raw", "param"), [
    (G, b'{"prompt": "caf\\ud800"}', "prompt"),
    (C, b'{"prompt": "caf\\ud800"}', "prompt"),
    (C, b'{"prompt": ["\\udfff"]}', "prompt"),
    (CH, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
    (CH, b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}', "messages"),
    (CH, b'{"messages": [{"role": "user", "content": "hi", "name": "\\ud800"}]}', "messages"),
    (C, b'{"prompt": "hi", "stop": "\\ud800"}', "stop"),
    (CH, b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\udc00"]}', "stop"),
    (C, b'{"prompt": "hi", "user": "\\ud800"}', "user"),
])
def test_a_lone_surrogate_is_400_naming_the_field_on_every_route(server, path, raw, param) -> None:
    r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and "lone surrogate" in error["message"], error


@pytest.mark.parametrize(("path", "field", "value"), [
    (C, "max_tokens", True), (C, "max_tokens", "2"), (C, "max_tokens", 2.0), (G, "max_new_tokens", True),
    (CH, "max_completion_tokens", True), (C, "n", True), (C, "n", 1.0), (C, "temperature", True),
    (C, "temperature", "1"), (CH, "top_p", False), (C, "top_k", True), (C, "top_k", 2.5), (G, "seed", True),
    (G, "seed", "7"), (C, "stream", 1), (G, "ignore_eos", "yes"), (C, "presence_penalty", False),
    (C, "echo", 0), (C, "best_of", True), (CH, "logprobs", 0), (C, "prompt", [True]), (C, "prompt", [1.5]),
    (C, "prompt", [5, -1]),
])
def test_numbers_and_flags_are_strictly_typed(server, path, field, value) -> None:
    body = {"messages": HI} if path == CH else {"prompt": "hi"}
    r = _post(server.url, path, {**body, field: value})
    assert r.status_code == 400, (field, value, r.text)
    assert r.json()["error"]["param"] == field


@pytest.mark.parametrize(("path", "raw", "param"), [
    (C, b'{"prompt": "hi", "temperature": NaN}', "temperature"),
    (C, b'{"prompt": "hi", "temperature": Infinity}', "temperature"),
    (G, b'{"prompt": "hi", "top_p": NaN}', "top_p"),
    (C, b'{"prompt": "hi", "presence_penalty": -Infinity}', "presence_penalty"),
])
def test_nan_and_infinity_are_refused(server, path, raw, param) -> None:
    r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(("path", "body", "param"), [
    (C, {"prompt": ""}, "prompt"),
    (C, {"prompt": [""]}, "prompt"),
    (CH, {"messages": [{"role": "user", "content": ""}]}, "messages"),
    (CH, {"messages": [{"role": "user", "content": []}]}, "messages"),
    (CH, {"messages": HI * 2000}, "messages"),
    (G, {"prompt": "x" * 5000}, "prompt"),  # over the characters any tokenizer could fit: not tokenized
])
def test_empty_and_oversized_prompts_are_refused(server, path, body, param) -> None:
    r = _post(server.url, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_server_still_answers_valid_requests_of_every_route(server) -> None:
    assert _post(server.url, C, {"prompt": "hi", "max_tokens": 2, "n": 1, "presence_penalty": 0}).status_code == 200
    assert _post(server.url, CH, {"messages": HI, "max_tokens": 2, "logprobs": False}).status_code == 200
    assert _post(server.url, G, {"prompt": " ", "max_new_tokens": 2, "temperature": 1}).status_code == 200
