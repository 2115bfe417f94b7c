"""The bad-input kit's generative surface: ``lepton generate`` and the generative server.

Plugged into ``benchmarks/bad_inputs.py`` (``--surface generate``): ``build(fix)`` makes a tiny
random-weight Llama (a plain folder, the same with a chat template, a saved Lepton model from a
one-epoch recipe and a signed copy of it) under ``fix/generate``; ``cases()`` are the CLI cases;
``servers(fix, scratch)`` serves the saved model with ``lepton serve`` and sends bad requests to
``/v1/generate``, ``/v1/completions`` and ``/v1/chat/completions``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bad_inputs import ROOT, Case, Ctx, _free_port, _server_case

sys.path.insert(0, str(ROOT))

G = "generate"
SHARED = [f"{G}/llama", f"{G}/llama-chat", f"{G}/run", f"{G}/signed", f"{G}/train.tsv", "key.pub",
          "other-key.pub"]
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")
CONTEXT = 256  # the tiny Llama's max_position_embeddings (tests/gen_tiny.py)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", OMP_NUM_THREADS="1")


def build(fix: Path) -> None:
    """fix/generate: llama (a model folder), llama-chat (with a chat template), run (a saved
    generative Lepton model after a one-epoch fine-tune), signed (that model signed with fix/key)."""
    from tests.gen_tiny import save_tiny_llama, write_pairs_tsv

    base = fix / G
    base.mkdir(parents=True, exist_ok=True)
    llama = save_tiny_llama(base / "llama")
    chat = Path(shutil.copytree(llama, base / "llama-chat"))
    config_path = chat / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))
    data = write_pairs_tsv(base / "train.tsv", 16)
    recipe = {"schema_version": 1, "model": str(chat),  # the saved model keeps the chat template
              "task": {"kind": "generation", "max_length": 32, "generation": {"max_new_tokens": 4}},
              "data": {"train": {"path": str(data)}, "dev": {"path": str(data), "limit": 4}},
              "stages": [{"kind": "finetune", "epochs": 1, "lr": 1e-3, "batch_size": 8}],
              "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False},
              "output": {"dir": str(base / "run")}}
    (base / "recipe.json").write_text(json.dumps(recipe))
    lepton = [sys.executable, "-m", "lepton", "-q"]
    subprocess.run([*lepton, "run", str(base / "recipe.json"), "--no-progress"], check=True, env=_env(),
                   stdout=subprocess.DEVNULL)
    shutil.copytree(base / "run" / "model", base / "signed")
    subprocess.run([*lepton, "sign", str(base / "signed"), "--key", str(fix / "key")], check=True, env=_env(),
                   stdout=subprocess.DEVNULL)


# ============================================================================ CLI cases


def _spec(x: Ctx) -> str:
    return str(x.fix / G / "llama")


def _chat(x: Ctx) -> str:
    return str(x.fix / G / "llama-chat")


def _saved(x: Ctx) -> str:
    return str(x.fix / G / "run" / "model")


def _signed(x: Ctx) -> str:
    return str(x.fix / G / "signed")


def _gen(model: Any, *args: str) -> Any:
    """argv for `lepton generate MODEL ARGS...` (MODEL: a function of the case's context)."""
    return lambda x: ["generate", model(x), *args]


def _copy_signed(x: Ctx, change: str) -> str:
    folder = Path(shutil.copytree(x.fix / G / "signed", x.d / "signed"))
    if change == "weights":
        path = folder / "model.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif change == "manifest":
        manifest = json.loads((folder / "lepton.json").read_text())
        manifest["source_model"] = "someone else's"
        (folder / "lepton.json").write_text(json.dumps(manifest))
    elif change == "signature":
        (folder / "lepton.json.sig").write_text("garbage")
    elif change == "unsigned":
        (folder / "lepton.json.sig").unlink()
    return str(folder)


def _key(x: Ctx, which: str) -> str:
    return {"public": str(x.fix / "key.pub"), "other": str(x.fix / "other-key.pub"),
            "private": str(x.fix / "key"), "missing": str(x.d / "nope.pub"),
            "garbage": x.write("garbage.pub", b"\xff\xfe not a key"), "empty": x.write("empty.pub", ""),
            "folder": str(x.d)}[which]


LONG = " ".join(["word"] * 20_000)
OVER_TOKENS = "a " * 300  # under the character limit, over the token limit


def _args_cases() -> list[Case]:
    g = "generate args"
    sample = ("--strategy", "sample")
    rows = [
        ("--max-new-tokens 0", ("hi", "--max-new-tokens", "0")),
        ("--max-new-tokens negative", ("hi", "--max-new-tokens", "-5")),
        ("--max-new-tokens huge", ("hi", "--max-new-tokens", "99999999")),
        ("--max-new-tokens over the model's context", ("hi", "--max-new-tokens", "300")),
        ("--max-new-tokens equal to the context", ("hi", "--max-new-tokens", str(CONTEXT))),
        ("--max-new-tokens not a number", ("hi", "--max-new-tokens", "many")),
        ("--max-new-tokens a float", ("hi", "--max-new-tokens", "1.5")),
        ("--temperature with greedy", ("hi", "--temperature", "0.7")),
        ("--temperature NaN", ("hi", *sample, "--temperature", "nan")),
        ("--temperature inf", ("hi", *sample, "--temperature", "inf")),
        ("--temperature negative", ("hi", *sample, "--temperature", "-1")),
        ("--temperature 0 with sample", ("hi", *sample, "--temperature", "0")),
        ("--temperature huge", ("hi", *sample, "--temperature", "1e9")),
        ("--temperature not a number", ("hi", *sample, "--temperature", "warm")),
        ("--top-p with greedy", ("hi", "--top-p", "0.9")),
        ("--top-p 0", ("hi", *sample, "--top-p", "0")),
        ("--top-p over 1", ("hi", *sample, "--top-p", "1.5")),
        ("--top-p negative", ("hi", *sample, "--top-p", "-0.1")),
        ("--top-p NaN", ("hi", *sample, "--top-p", "nan")),
        ("--top-k with greedy", ("hi", "--top-k", "5")),
        ("--top-k negative", ("hi", *sample, "--top-k", "-1")),
        ("--top-k huge", ("hi", *sample, "--top-k", "10000000")),
        ("--seed with greedy", ("hi", "--seed", "3")),
        ("--seed 0 with greedy (the default value)", ("hi", "--seed", "0")),
        ("--seed with beam", ("hi", "--strategy", "beam", "--seed", "3")),
        ("--seed negative", ("hi", *sample, "--seed", "-1")),
        ("--seed over 2**32", ("hi", *sample, "--seed", str(2**40))),
        ("--num-beams with greedy", ("hi", "--num-beams", "3")),
        ("--num-beams with sample", ("hi", *sample, "--num-beams", "3")),
        ("--num-beams 1 with beam", ("hi", "--strategy", "beam", "--num-beams", "1")),
        ("--num-beams 0 with beam", ("hi", "--strategy", "beam", "--num-beams", "0")),
        ("--num-beams huge", ("hi", "--strategy", "beam", "--num-beams", "1000")),
        ("--repetition-penalty 0", ("hi", "--repetition-penalty", "0")),
        ("--repetition-penalty negative", ("hi", "--repetition-penalty", "-2")),
        ("--repetition-penalty NaN", ("hi", "--repetition-penalty", "nan")),
        ("--repetition-penalty huge", ("hi", "--repetition-penalty", "1000")),
        ("--stop empty", ("hi", "--stop", "")),
        ("--stop a lone surrogate", ("hi", "--stop", "\ud800")),
        ("17 --stop strings", ("hi", *[a for i in range(17) for a in ("--stop", f"s{i}")])),
        ("--strategy unknown", ("hi", "--strategy", "nucleus")),
        ("unknown flag", ("hi", "--temprature", "0.5")),
        ("--system without --chat", ("hi", "--system", "be brief")),
        ("--system empty with --chat", ("hi", "--chat", "--system", "")),
    ]
    out = [Case(kind, g, _gen(_spec, *args)) for kind, args in rows]
    out += [
        Case("--system a lone surrogate with --chat", g, _gen(_chat, "hi", "--chat", "--system", "\udcff")),
        Case("--chat without a chat template", g, _gen(_spec, "hi", "--chat")),
        Case("--temperature with greedy on a saved model", g, _gen(_saved, "hi", "--temperature", "0.5")),
        Case("--seed with greedy on a saved model", g, _gen(_saved, "hi", "--seed", "1")),
        Case("--top-p over 1 on a saved model", g, _gen(_saved, "hi", "--strategy", "sample", "--top-p", "2")),
        Case("--max-new-tokens 0 on a saved model", g, _gen(_saved, "hi", "--max-new-tokens", "0")),
        Case("--system without --chat on a saved model", g, _gen(_saved, "hi", "--system", "x")),
        Case("--chat on a saved model whose task has no chat", g, _gen(_saved, "hi", "--chat")),
        Case("--system with --chat on a saved model", g, _gen(_saved, "hi", "--chat", "--system", "x")),
        Case("seeded sampling on a saved model", g,
             _gen(_saved, "a man", "--strategy", "sample", "--seed", "3", "--temperature", "0.8",
                  "--max-new-tokens", "3"),
             expect="accept", why="every flag applies to --strategy sample and is in range: a valid call"),
        Case("--system with --chat on a model with a chat template", g,
             _gen(_chat, "hi", "--chat", "--system", "be brief", "--max-new-tokens", "2"),
             expect="accept", why="the system message goes into the chat template: a valid call"),
    ]
    return out


def _prompt_cases() -> list[Case]:
    g = "generate prompt"
    return [
        Case("empty prompt", g, _gen(_spec, "")),
        Case("empty prompt, saved model", g, _gen(_saved, "")),
        Case("empty second prompt", g, _gen(_spec, "a man", "")),
        Case("empty prompt, --json", g, _gen(_spec, "", "--json")),
        Case("empty prompt with --chat", g, _gen(_chat, "", "--chat")),
        Case("no prompt at all", g, lambda x: ["generate", _spec(x)]),
        Case("lone surrogate escape in a prompt", g, _gen(_spec, "caf\ud800")),
        Case("bytes that are not UTF-8 in a prompt", g,
             _gen(_spec, b"caf\xe9 \xff".decode("utf-8", "surrogateescape"))),
        Case("lone surrogate in a prompt, saved model", g, _gen(_saved, "\udfff")),
        Case("20,000-word prompt", g, _gen(_spec, LONG)),
        Case("20,000-word prompt, saved model", g, _gen(_saved, LONG)),
        Case("20,000-word prompt with --chat", g, _gen(_chat, LONG, "--chat")),
        Case("prompt over the context in tokens, under it in characters", g, _gen(_spec, OVER_TOKENS)),
        Case("prompt over the context, saved model", g, _gen(_saved, OVER_TOKENS)),
        Case("prompt fits, but not with --max-new-tokens", g,
             _gen(_spec, "a " * 100, "--max-new-tokens", "200")),
        Case("second of three prompts too long", g, _gen(_spec, "a", OVER_TOKENS, "b")),
        Case("whitespace-only prompt", g, _gen(_spec, "   ", "--max-new-tokens", "2"), expect="accept",
             why="spaces are text with tokens (the byte-level tokenizer encodes them); the model continues it"),
        Case("control characters in a prompt", g, _gen(_spec, "a\x07b\x1b[31m", "--max-new-tokens", "2"),
             expect="accept", why="valid text; the tokenizer encodes every byte; a continuation comes back"),
    ]


def _model_cases() -> list[Case]:
    g = "generate model"
    return [
        Case("model folder missing", g, lambda x: ["generate", str(x.d / "nope"), "hi"]),
        Case("model an empty string", g, lambda x: ["generate", "", "hi"]),
        Case("model a file", g, lambda x: ["generate", x.write("model.txt", "not a model"), "hi"]),
        Case("unknown builtin model", g, lambda x: ["generate", "builtin:nope", "hi"]),
        Case("a saved classifier", g, lambda x: ["generate", x.model, "hi"]),
        Case("an encoder folder (no LM head)", g, lambda x: ["generate", str(x.fix / "tiny-bert"), "hi"]),
        Case("saved model with damaged weights", g, lambda x: ["generate", _copy_signed(x, "weights"), "hi"]),
        Case("saved model with an edited manifest", g, lambda x: ["generate", _copy_signed(x, "manifest"), "hi"]),
        Case("model folder that is empty", g, lambda x: ["generate", _empty_folder(x), "hi"]),
        Case("model folder without weights", g,
             lambda x: ["generate", _without(x, "model.safetensors"), "hi"]),
        Case("model folder without a tokenizer", g,
             lambda x: ["generate", _without(x, "tokenizer.json", "tokenizer_config.json"), "hi"]),
    ]


def _empty_folder(x: Ctx) -> str:
    (x.d / "empty").mkdir()
    return str(x.d / "empty")


def _without(x: Ctx, *names: str) -> str:
    folder = Path(shutil.copytree(x.fix / G / "llama", x.d / "llama"))
    for name in names:
        (folder / name).unlink(missing_ok=True)
    return str(folder)


def _signing_cases() -> list[Case]:
    g = "generate signing"
    req = "--require-signature"
    return [
        Case("--require-signature with another key", g, _gen(_signed, "hi", req, "OTHER")),
        Case("--require-signature on an unsigned model", g, _gen(_saved, "hi", req, "PUB")),
        Case("--require-signature on a model folder (no manifest)", g, _gen(_spec, "hi", req, "PUB")),
        Case("--require-signature key file missing", g, _gen(_signed, "hi", req, "MISSING")),
        Case("--require-signature the private key", g, _gen(_signed, "hi", req, "PRIVATE")),
        Case("--require-signature a garbage key", g, _gen(_signed, "hi", req, "GARBAGE")),
        Case("--require-signature an empty key file", g, _gen(_signed, "hi", req, "EMPTY")),
        Case("--require-signature a folder", g, _gen(_signed, "hi", req, "FOLDER")),
        Case("--require-signature with no value", g, _gen(_signed, "hi", req)),
        Case("signed model, weights changed after signing", g,
             lambda x: ["generate", _copy_signed(x, "weights"), "hi", req, _key(x, "public")]),
        Case("signed model, manifest changed after signing", g,
             lambda x: ["generate", _copy_signed(x, "manifest"), "hi", req, _key(x, "public")]),
        Case("signed model, signature file garbage", g,
             lambda x: ["generate", _copy_signed(x, "signature"), "hi", req, _key(x, "public")]),
        Case("signed model, signature removed", g,
             lambda x: ["generate", _copy_signed(x, "unsigned"), "hi", req, _key(x, "public")]),
        Case("serve a generative model with another key", g,
             lambda x: ["serve", _signed(x), "--port", str(_free_port()), req, _key(x, "other")]),
        Case("serve an unsigned generative model with --require-signature", g,
             lambda x: ["serve", _saved(x), "--port", str(_free_port()), req, _key(x, "public")]),
        Case("serve a tampered signed generative model", g,
             lambda x: ["serve", _copy_signed(x, "weights"), "--port", str(_free_port()), req, _key(x, "public")]),
        Case("--require-signature with the right key", g,
             _gen(_signed, "a man", "--max-new-tokens", "2", req, "PUB"), expect="accept",
             why="the model is signed by the holder of that key: it generates, as serve/evaluate do"),
    ]


def _resolve_keys(case: Case) -> Case:
    """Key placeholders (PUB, OTHER, ...) in a case's argv, replaced by the fixture paths."""
    names = {"PUB": "public", "OTHER": "other", "PRIVATE": "private", "MISSING": "missing",
             "GARBAGE": "garbage", "EMPTY": "empty", "FOLDER": "folder"}
    inner = case.argv

    def argv(x: Ctx) -> list[str]:
        return [_key(x, names[a]) if a in names else a for a in inner(x)]

    case.argv = argv
    return case


def cases() -> list[Case]:
    out = _args_cases() + _prompt_cases() + _model_cases() + [_resolve_keys(c) for c in _signing_cases()]
    for case in out:
        case.protect = lambda x: [x.fix / G / "signed", x.fix / G / "run"]
    return out


# ============================================================================ server cases


J = {"Content-Type": "application/json"}
MSG = [{"role": "user", "content": "hi"}]


def _body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _field_cases() -> list[tuple[str, str, Any]]:
    """(kind, route, body): each a body with one bad field (bytes where JSON cannot say it)."""
    c, ch, g = "/v1/completions", "/v1/chat/completions", "/v1/generate"
    p = {"prompt": "hi"}
    m = {"messages": MSG}
    rows: list[tuple[str, str, Any]] = [
        ("lone surrogate in prompt (completions)", c, b'{"prompt": "caf\\ud800"}'),
        ("lone surrogate in a prompt list", c, b'{"prompt": ["\\udfff"]}'),
        ("lone surrogate in prompt (generate)", g, b'{"prompt": "\\ud800"}'),
        ("lone surrogate in a message's content", ch, b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("lone surrogate in a text part", ch,
         b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}'),
        ("lone surrogate in a message's name", ch,
         b'{"messages": [{"role": "user", "content": "hi", "name": "\\ud800"}]}'),
        ("lone surrogate in stop (completions)", c, b'{"prompt": "hi", "stop": "\\ud800"}'),
        ("lone surrogate in a stop list (chat)", ch,
         b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\udc00"]}'),
        ("lone surrogate in user", c, b'{"prompt": "hi", "user": "\\ud800"}'),
        ("lone surrogate in model", c, b'{"prompt": "hi", "model": "\\ud800"}'),
        ("invalid UTF-8 bytes in prompt", c, b'{"prompt": "caf\xe9"}'),
        ("invalid UTF-8 bytes in content", ch, b'{"messages": [{"role": "user", "content": "\xff"}]}'),
        ("empty prompt (completions)", c, {"prompt": ""}),
        ("empty prompt (generate)", g, {"prompt": ""}),
        ("empty prompt in a list", c, {"prompt": [""]}),
        ("empty prompt list", c, {"prompt": []}),
        ("two prompts", c, {"prompt": ["a", "b"]}),
        ("prompt token ids negative", c, {"prompt": [5, -1]}),
        ("prompt token ids out of the vocabulary", c, {"prompt": [5, 99999]}),
        ("prompt token ids booleans", c, {"prompt": [True, False]}),
        ("prompt token ids floats", c, {"prompt": [1.5]}),
        ("prompt null", c, {"prompt": None}),
        ("prompt a number", c, {"prompt": 123}),
        ("prompt an object", c, {"prompt": {"text": "hi"}}),
        ("prompt missing (completions)", c, {"max_tokens": 2}),
        ("prompt missing (generate)", g, {"max_new_tokens": 2}),
        ("prompt over the token limit", c, {"prompt": "a " * 300}),
        ("prompt over the character limit", g, {"prompt": "x" * 10_000}),
        ("prompt plus max_tokens over the context", c, {"prompt": "a " * 100, "max_tokens": 200}),
        ("messages empty", ch, {"messages": []}),
        ("messages an object", ch, {"messages": {"role": "user", "content": "hi"}}),
        ("messages a string", ch, {"messages": "hi"}),
        ("messages missing", ch, {"max_tokens": 2}),
        ("message with an unknown role", ch, {"messages": [{"role": "wizard", "content": "hi"}]}),
        ("message with role tool", ch, {"messages": [{"role": "tool", "content": "hi"}]}),
        ("message without content", ch, {"messages": [{"role": "user"}]}),
        ("message with empty content", ch, {"messages": [{"role": "user", "content": ""}]}),
        ("message with no text parts", ch, {"messages": [{"role": "user", "content": []}]}),
        ("message content null", ch, {"messages": [{"role": "user", "content": None}]}),
        ("message content a number", ch, {"messages": [{"role": "user", "content": 5}]}),
        ("message with an image part", ch,
         {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        ("text part without text", ch, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
        ("message with an unknown field", ch, {"messages": [{"role": "user", "content": "hi", "mood": "x"}]}),
        ("message name a number", ch, {"messages": [{"role": "user", "content": "hi", "name": 7}]}),
        ("messages a list of strings", ch, {"messages": ["hi"]}),
        ("1,100 messages (over 1,024)", ch, {"messages": MSG * 1100}),
        ("messages over the token limit", ch, {"messages": [{"role": "user", "content": "a " * 300}]}),
        ("response_format json_object", ch, {**m, "response_format": {"type": "json_object"}}),
        ("logprobs true (chat)", ch, {**m, "logprobs": True}),
        ("max_completion_tokens true", ch, {**m, "max_completion_tokens": True}),
        ("max_completion_tokens 0", ch, {**m, "max_completion_tokens": 0}),
        ("max_completion_tokens over the limit", ch, {**m, "max_completion_tokens": 100_000}),
        ("max_new_tokens true (generate)", g, {**p, "max_new_tokens": True}),
        ("max_new_tokens a string (generate)", g, {**p, "max_new_tokens": "3"}),
        ("max_new_tokens 0 (generate)", g, {**p, "max_new_tokens": 0}),
        ("ignore_eos a string (generate)", g, {**p, "ignore_eos": "yes"}),
        ("unknown field (generate)", g, {**p, "temprature": 0.5}),
        ("echo true", c, {**p, "echo": True}),
        ("echo 0", c, {**p, "echo": 0}),
        ("best_of 2", c, {**p, "best_of": 2}),
        ("best_of true", c, {**p, "best_of": True}),
        ("suffix given", c, {**p, "suffix": "x"}),
        ("logprobs 2 (completions)", c, {**p, "logprobs": 2}),
        ("logit_bias given", c, {**p, "logit_bias": {"5": 10}}),
        ("logit_bias NaN", c, b'{"prompt": "hi", "logit_bias": {"5": NaN}}'),
        ("wrong model name", c, {**p, "model": "gpt-4"}),
        ("model a number", c, {**p, "model": 4}),
        ("stream_options with an unknown field", c, {**p, "stream": True, "stream_options": {"x": 1}}),
        ("stream_options include_usage 1", c, {**p, "stream": True, "stream_options": {"include_usage": 1}}),
        ("streaming with a bad max_tokens", c, {**p, "stream": True, "max_tokens": True}),
        ("streaming chat with an empty message", ch, {"messages": [{"role": "user", "content": ""}],
                                                      "stream": True}),
    ]
    # One bad value of each numeric and flag field, on each OpenAI route.
    values: list[tuple[str, Any]] = [
        ("max_tokens", True), ("max_tokens", "2"), ("max_tokens", 2.0), ("max_tokens", 0), ("max_tokens", -1),
        ("max_tokens", 10**30), ("temperature", True), ("temperature", "1"), ("temperature", -0.5),
        ("temperature", 101), ("top_p", 0), ("top_p", 1.5), ("top_p", False), ("top_k", -1), ("top_k", 2.5),
        ("top_k", True), ("seed", -1), ("seed", 2**63), ("seed", True), ("seed", "7"), ("seed", 1.5),
        ("n", 2), ("n", True), ("n", 1.0), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", ""),
        ("stop", [1]), ("stop", "x" * 257), ("stream", 1), ("stream", "true"), ("presence_penalty", 0.5),
        ("presence_penalty", False), ("frequency_penalty", True), ("user", 5),
    ]
    for route, base in ((c, p), (ch, m)):
        for name, value in values:
            where = "chat" if route == ch else "completions"
            rows.append((f"{name} {json.dumps(value)[:20]} ({where})", route, {**base, name: value}))
    for token in ("NaN", "Infinity", "-Infinity"):
        for name in ("temperature", "top_p"):
            rows.append((f"{name} {token} (completions)", c, f'{{"prompt": "hi", "{name}": {token}}}'.encode()))
    return rows


def server_requests() -> list[tuple[str, Any, str, str]]:
    """(kind, request, expect, why) for ``_server_case``."""
    out = [(kind, ("POST", route, J, _body(body)), "error", "") for kind, route, body in _field_cases()]
    deep = b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # under the body limit
    out += [
        ("GET /v1/completions", ("GET", "/v1/completions", {}, None), "error", ""),
        ("PUT /v1/chat/completions", ("PUT", "/v1/chat/completions", J, b"{}"), "error", ""),
        ("DELETE /v1/generate", ("DELETE", "/v1/generate", {}, None), "error", ""),
        ("text/plain body", ("POST", "/v1/completions", {"Content-Type": "text/plain"}, b'{"prompt": "hi"}'),
         "error", ""),
        ("invalid JSON (chat)", ("POST", "/v1/chat/completions", J, b'{"messages": ['), "error", ""),
        ("empty body (generate)", ("POST", "/v1/generate", J, b""), "error", ""),
        ("JSON null body", ("POST", "/v1/completions", J, b"null"), "error", ""),
        ("JSON list body", ("POST", "/v1/chat/completions", J, b"[]"), "error", ""),
        ("JSON nested 30k deep", ("POST", "/v1/completions", J, deep), "error", ""),
        ("body over the limit", ("POST", "/v1/generate", J, _body({"prompt": "a" * 70_000})), "error", ""),
        ("whitespace-only prompt", ("POST", "/v1/completions", J, _body({"prompt": "   ", "max_tokens": 2})),
         "accept", "spaces are text with tokens; the model continues them"),
        ("NUL and control characters in a prompt",
         ("POST", "/v1/generate", J, _body({"prompt": "a\u0000b\u001b[31m", "max_new_tokens": 2})),
         "accept", "valid JSON text the byte-level tokenizer encodes; a continuation comes back"),
        ("temperature 0 with top_p", ("POST", "/v1/completions", J,
                                      _body({"prompt": "hi", "temperature": 0, "top_p": 0.5, "max_tokens": 2})),
         "accept", "OpenAI's semantics: temperature 0 is greedy and top_p does not change it (as OpenAI)"),
    ]
    return out


def servers(fix: Path, scratch: Path) -> list[dict[str, Any]]:
    """Serve the signed tiny decoder (with --require-signature) and send every bad request."""
    import httpx

    port = _free_port()
    log_path = scratch / "generate-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lepton", "serve", str(fix / G / "signed"),
                                 "--port", str(port), "--max-body-bytes", "65536", "--header-timeout", "2",
                                 "--body-timeout", "2", "--require-signature", str(fix / "key.pub")],
                                stdout=log, stderr=subprocess.STDOUT, env=_env())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    rows: list[dict[str, Any]] = []
    try:
        for kind, req, expect, why in server_requests():
            outcome, said = _server_case(url, port, req)
            rows.append({"kind": kind, "group": "generative server", "expect": expect, "why": why,
                         "outcome": outcome, "said": said})
            print(f"  generative server {len(rows):3d} {kind}: {outcome}", file=sys.stderr, flush=True)
        alive = httpx.get(url + "/healthz", timeout=5).status_code == 200
        good = all(httpx.post(url + route, json=body, timeout=60).status_code == 200 for route, body in (
            ("/v1/completions", {"prompt": "a man", "max_tokens": 2}),
            ("/v1/chat/completions", {"messages": MSG, "max_tokens": 2}),
            ("/v1/generate", {"prompt": "a man", "max_new_tokens": 2})))
    except httpx.TransportError:
        alive = good = False
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    log_text = log_path.read_text(errors="replace")
    ok = alive and good and code == 0 and "Traceback" not in log_text
    rows.append({"kind": "generative server still healthy, still generates and exits 0 after all of the above",
                 "group": "check", "expect": "accept", "why": "a check after the bad inputs, not a bad input itself",
                 "outcome": "accepted" if ok else "traceback",
                 "said": f"healthz {alive}, generates {good}, exit {code}, "
                         f"tracebacks in log: {log_text.count('Traceback')}"})
    return rows

