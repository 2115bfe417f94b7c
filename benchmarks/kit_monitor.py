"""The bad-input kit's monitor surface: ``lepton monitor`` on the command line and its HTTP app.

Plugged into ``benchmarks/bad_inputs.py`` (``--surface monitor``): ``build(fix)`` makes, under
``fix/monitor``, a tiny random multi-task model (sentiment + topic, tests/monitor_fakes.py), a
signed copy, a small replay stream and a config with the server off; ``cases()`` are the CLI
cases (every accepted run replays a few lines with ``--exit-when-done``); ``servers(fix, scratch)``
starts ``lepton monitor`` with its HTTP app, sends it bad requests, drives two alerts to a webhook
receiver that trickles one byte a second for the first one, and checks the process stays healthy
and exits 0 on SIGTERM.
"""

from __future__ import annotations

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

import yaml

from bad_inputs import ROOT, Case, Ctx, _free_port, _server_case, alias_bomb

sys.path.insert(0, str(ROOT))

M = "monitor"
SHARED = [f"{M}/model", f"{M}/signed", f"{M}/stream.jsonl", f"{M}/config.yaml", f"{M}/texts.json", "key.pub",
          "other-key.pub"]
T0 = 1_700_000_000.0  # 2023-11-14: in the past, so no item of the stream is ahead of the clock


def _tilted_model(tiny: Path, dest: Path, texts: list[str]) -> Path:
    """The random multi-task model of tests/monitor_fakes.py, its sentiment head's bias set so
    that about half of ``texts`` come out negative and half positive (a random head calls every
    text the same): the server run needs texts of both kinds to raise alerts."""
    import torch
    from transformers import AutoConfig, BertForSequenceClassification

    from lepton.models import load_tokenizer
    from lepton.pipeline.artifact import save_artifact
    from lepton.runtimes.bundle import ModelBundle
    from lepton.runtimes.heads import Head, make_head
    from lepton.tasks import TaskSpec

    labels = ["negative", "neutral", "positive"]
    sentiment = TaskSpec(kind="sequence_classification", labels=labels, raw_labels=labels, max_length=64)
    topics = ["World", "Sports", "Business", "Sci/Tech"]
    topic = TaskSpec(kind="sequence_classification", labels=topics, raw_labels=topics, max_length=64)
    torch.manual_seed(0)
    main = BertForSequenceClassification(AutoConfig.from_pretrained(tiny, num_labels=3)).eval()
    head = make_head(main, topic, "test").eval()
    tokenizer = load_tokenizer(str(tiny))
    with torch.no_grad():
        logits = torch.cat([main(**tokenizer([t], return_tensors="pt")).logits for t in texts])
        diff = logits[:, 0] - logits[:, 2]
        bias = main.classifier.bias
        bias[0] -= float(diff.median())
        bias[1] -= 100.0  # never neutral
    bundle = ModelBundle(model=main, tokenizer=tokenizer, task=sentiment, source="tiny-bert",
                         heads={"topic": Head(task=topic, model=head)}, main_task="sentiment")
    return save_artifact(bundle, dest)


def build(fix: Path) -> None:
    """fix/monitor: model (multi-task: sentiment main, topic), signed (signed with fix/key),
    stream.jsonl (12 items), config.yaml (server off, output ./out), texts.json (texts the model
    calls negative / not negative for one topic, for the server's surges)."""
    import lepton
    from lepton.monitor.config import PredictConfig
    from lepton.monitor.predict import ModelClassifier
    from lepton.pipeline.artifact import sign_model

    base = fix / M
    base.mkdir(parents=True, exist_ok=True)
    words = ["market", "team", "storm", "chip", "shares", "match", "rain", "profit", "vote", "film", "loss",
             "win", "crash", "growth", "court", "trade", "virus", "goal", "bank", "oil"]
    texts = [f"{a} {b} {c}" for a in words for b in words[::3] for c in ("today", "again")]
    model = _tilted_model(fix / "tiny-bert", base / "model", texts)
    signed = Path(shutil.copytree(model, base / "signed"))
    sign_model(signed, fix / "key")
    items = [{"text": f"item {i} about markets and sports", "timestamp": T0 + 7 * i, "id": f"s{i}"}
             for i in range(12)]
    (base / "stream.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (base / "config.yaml").write_text(yaml.safe_dump({
        "schema_version": 1, "name": "kit", "window": {"width_s": 60},
        "ingest": {"max_batch": 8, "max_wait_ms": 1}, "server": {"enabled": False}, "output": "out"}))
    # Texts of one topic the model calls negative, and others it does not, far from the
    # boundary (batching changes the last digits): the server run's surges.
    classifier = ModelClassifier([lepton.load(model)], PredictConfig())
    preds = classifier.classify(texts)
    groups: dict[str, list[tuple[float, str]]] = {}
    for t, p in zip(texts, preds):
        groups.setdefault(p.topic, []).append((p.negative_score, t))
    topic = max(groups, key=lambda k: len(groups[k]))
    ranked = sorted(groups[topic])
    negative = [t for s, t in ranked[-5:] if s > 0.5]
    other = [t for s, t in ranked[:5] if s < 0.5]
    (base / "texts.json").write_text(json.dumps(
        {"topic": topic, "negative": negative, "other": other} if negative and other else {}))


# ============================================================================ CLI cases


def _model(x: Ctx) -> str:
    return str(x.fix / M / "model")


def _stream(x: Ctx) -> str:
    return str(x.fix / M / "stream.jsonl")


def run(x: Ctx, *extra: str, model: str | None = None, source: str | None = None,
        config: str | None = None) -> list[str]:
    """A monitor run that ends: the replay stream, --exit-when-done, the server off, output here."""
    return ["monitor", model or _model(x), "--config", config or str(x.fix / M / "config.yaml"),
            "--source", source or f"replay:{_stream(x)}", "--exit-when-done", *extra]


def replay(x: Ctx, text: str | bytes, *extra: str) -> list[str]:
    return run(x, *extra, source=f"replay:{x.write('stream.jsonl', text)}")


def config(x: Ctx, text: str | bytes) -> list[str]:
    return run(x, config=x.write("monitor.yaml", text))


def lines(*items: Any) -> str:
    return "".join((it if isinstance(it, str) else json.dumps(it)) + "\n" for it in items)


def tampered_signed(x: Ctx) -> str:
    copy = Path(shutil.copytree(x.fix / M / "signed", x.d / "signed"))
    manifest = json.loads((copy / "lepton.json").read_text())
    manifest["task"]["labels"] = list(reversed(manifest["task"]["labels"]))
    (copy / "lepton.json").write_text(json.dumps(manifest))
    return str(copy)


def other_schema_db(x: Ctx) -> list[str]:
    import sqlite3

    (x.d / "out").mkdir()
    conn = sqlite3.connect(x.d / "out" / "monitor.db")
    conn.execute("CREATE TABLE items (id INTEGER, body TEXT)")
    conn.commit()
    conn.close()
    return run(x)


def junk_db(x: Ctx) -> list[str]:
    (x.d / "out").mkdir()
    (x.d / "out" / "monitor.db").write_bytes(os.urandom(4096))
    return run(x)


def run_folder(x: Ctx) -> Path:
    shutil.copytree(x.fix / M / "model", x.d / "run" / "model")
    return x.d / "run"


def model_copy(x: Ctx) -> Path:
    return Path(shutil.copytree(x.fix / M / "model", x.d / "model"))


GOOD = {"text": "a fine item", "timestamp": T0}
OFF = "server: {enabled: false}\n"
ACCEPTED = {
    "replay: an empty file": "nothing to replay; the run ends at once with 0 items",
    "replay: every line malformed": "each bad line is logged with file:line, counted in "
                                    "lepton_monitor_bad_items and skipped; a stream never stops on one line",
    "replay: last line without a newline": "a replayed file's last line counts without its newline",
    "replay: a timestamp in the year 5107": "the item is refused, logged and counted "
                                            "(lepton_monitor_refused_timestamps); the watermark does not move",
    "replay: NaN and infinite timestamps": "refused as not Unix seconds, logged, counted, skipped",
    "replay: negative and 0001-01-01 timestamps": "refused as before 1970, logged, counted, skipped",
    "replay: a line nested 50,000 deep": "logged as nested too deeply, counted, skipped",
    "replay: a 5,000-digit integer id": "logged as not a JSON object, counted, skipped",
    "replay: a line over ingest.max_body_bytes": "skipped without being read into memory whole; logged, counted",
    "replay: invalid UTF-8": "logged as not a JSON object, counted, skipped",
    "replay: a UTF-16 file": "every line is not JSON (logged, counted, skipped)",
    "replay: CRLF line ends": "JSON allows the trailing \\r as whitespace; the items are stored",
    "replay: JSON arrays and scalars as lines": "logged as not a JSON object, counted, skipped",
    "replay: empty and blank texts": "logged naming field 'text', counted, skipped",
    "replay: a text over ingest.max_chars": "logged naming field 'text', counted, skipped",
    "replay: unknown fields in an item": "logged naming the extra field, counted, skipped",
    "replay: the same id twice": "stored once, counted once (lepton_monitor_duplicate_items)",
    "replay: an id 201 characters long": "logged naming field 'id', counted, skipped",
    "replay: a timestamp of true / a list / garbage": "logged naming field 'timestamp', counted, skipped",
    "replay: blank lines only": "blank lines are not items",
    "replay: NUL bytes and control characters in a text": "valid JSON strings; the tokenizer drops them",
    "replay: out-of-order and duplicate timestamps": "event time, not arrival order: late items are stored "
                                                     "and counted (windows already closed are not re-tested)",
    "signing: a signed model and its key": "the signature is valid: the run goes ahead",
    "config: an empty file": "every default (server off through --set)",
    "args: a run folder for MODEL": "a run folder stands for the model inside it, as for every command",
}


def cases() -> list[Case]:
    def c(kind: str, group: str, argv: Any, **kw: Any) -> Case:
        why = ACCEPTED.get(kind, "")
        return Case(kind, group, argv, expect="accept" if why else "error", why=why, **kw)

    a, cf, rp, sg, st = "monitor args", "monitor config", "monitor replay", "monitor signing", "monitor store"
    return [
        # ---- arguments
        c("args: no MODEL", a, lambda x: ["monitor"]),
        c("args: three models", a, lambda x: ["monitor", _model(x), _model(x), _model(x)]),
        c("args: MODEL missing", a, lambda x: run(x, model=str(x.d / "nope"))),
        c("args: MODEL a file", a, lambda x: run(x, model=_stream(x))),
        c("args: MODEL a plain Hugging Face folder", a, lambda x: run(x, model=str(x.fix / "tiny-bert"))),
        c("args: MODEL a single-task model (no topic task)", a, lambda x: run(x, model=x.model)),
        c("args: MODEL2 missing", a, lambda x: ["monitor", _model(x), str(x.d / "nope2"), *run(x)[2:]]),
        c("args: a run folder for MODEL", a, lambda x: run(x, model=str(run_folder(x)))),
        c("args: --speed -1", a, lambda x: run(x, "--speed", "-1")),
        c("args: --speed nan", a, lambda x: run(x, "--speed", "nan")),
        c("args: --speed inf", a, lambda x: run(x, "--speed", "inf")),
        c("args: --speed abc", a, lambda x: run(x, "--speed", "abc")),
        c("args: --source of an unknown kind", a, lambda x: run(x, source="kafka:topic")),
        c("args: --source replay: without a file", a, lambda x: run(x, source="replay:")),
        c("args: --source replay of a missing file", a, lambda x: run(x, source=f"replay:{x.d / 'no.jsonl'}")),
        c("args: --source replay of a folder", a, lambda x: run(x, source=f"replay:{x.d}")),
        c("args: --source follow of a folder", a, lambda x: run(x, source=f"follow:{x.d}")),
        c("args: --source http with a file", a, lambda x: run(x, source="http:x.jsonl")),
        c("args: --source stdin with a file", a, lambda x: run(x, source="stdin:x")),
        c("args: --source http with the server off", a, lambda x: run(x, source="http")),
        c("args: --exit-when-done with only a followed file", a, lambda x: run(x, source=f"follow:{_stream(x)}")),
        c("args: --set without =", a, lambda x: run(x, "--set", "surge.alpha")),
        c("args: --set of an unknown key", a, lambda x: run(x, "--set", "surge.alpah=0.01")),
        c("args: --set surge.alpha=2", a, lambda x: run(x, "--set", "surge.alpha=2")),
        c("args: --set window.width_s=0", a, lambda x: run(x, "--set", "window.width_s=0")),
        c("args: --set window.width_s=-60", a, lambda x: run(x, "--set", "window.width_s=-60")),
        c("args: --set window.max_ahead_s=0", a, lambda x: run(x, "--set", "window.max_ahead_s=0")),
        c("args: --set window.width_s=.nan", a, lambda x: run(x, "--set", "window.width_s=.nan")),
        c("args: --set predict.batch_size=0", a, lambda x: run(x, "--set", "predict.batch_size=0")),
        c("args: --set ingest.max_batch=true", a, lambda x: run(x, "--set", "ingest.max_batch=true")),
        c("args: --set server.port=70000", a, lambda x: run(x, "--set", "server.port=70000")),
        c("args: --set store.url=mysql://x", a, lambda x: run(x, "--set", "store.url=mysql://x/db")),
        c("args: --set alerts.webhook.url=ftp://x", a, lambda x: run(x, "--set", "alerts.webhook.url=ftp://x")),
        c("args: --set alerts.webhook.timeout_s=0", a,
          lambda x: run(x, "--set", "alerts.webhook.url=http://127.0.0.1:9/", "--set", "alerts.webhook.timeout_s=0")),
        c("args: --set predict.sentiment.model=1 with one model", a,
          lambda x: run(x, "--set", "predict.sentiment.model=1")),
        c("args: --set predict.topic.task of no task", a, lambda x: run(x, "--set", "predict.topic.task=nope")),
        c("args: --set predict.negative_label of no label", a, lambda x: run(x, "--set", "predict.negative_label=bad")),
        c("args: --set schema_version=2", a, lambda x: run(x, "--set", "schema_version=2")),
        c("args: --set an alias bomb", a, lambda x: run(x, "--set", "predict={" + alias_bomb().strip().replace(
            "\n", ", ") + "}")),
        c("args: --set output to an empty name", a, lambda x: run(x, "--set", "output=")),
        c("args: --set output to a file", a, lambda x: run(x, "--set", f"output={x.write('afile', 'mine')}"),
          protect=lambda x: [x.d / "afile"]),
        c("args: --set output under a file", a, lambda x: run(x, "--set", f"output={x.write('afile', 'mine')}/sub"),
          protect=lambda x: [x.d / "afile"]),
        c("args: --set output inside a saved model", a, lambda x: run(x, "--set", f"output={model_copy(x)}/db"),
          protect=lambda x: [x.d / "model"]),
        c("args: --set store.url=sqlite:/// (no path)", a, lambda x: run(x, "--set", "store.url=sqlite:///")),
        c("args: --set ${UNSET} in a value", a, lambda x: run(x, "--set", "name=${LEPTON_KIT_UNSET_VAR}")),
        # ---- config files
        c("config: missing file", cf, lambda x: run(x, config=str(x.d / "none.yaml"))),
        c("config: a folder", cf, lambda x: run(x, config=str(x.d))),
        c("config: a YAML alias bomb", cf, lambda x: config(x, alias_bomb())),
        c("config: invalid YAML", cf, lambda x: config(x, "window: {width_s: 60\nsurge: [")),
        c("config: a list at the top", cf, lambda x: config(x, "- a\n- b\n")),
        c("config: a scalar at the top", cf, lambda x: config(x, "42\n")),
        c("config: not UTF-8", cf, lambda x: config(x, b"name: caf\xe9\xff\n")),
        c("config: a typo in a key", cf, lambda x: config(x, "surge: {alpah: 0.01}\nserver: {enabled: false}\n")),
        c("config: ${UNSET} without a default", cf,
          lambda x: config(x, "name: ${LEPTON_KIT_UNSET_VAR}\nserver: {enabled: false}\n")),
        c("config: nested 10,000 deep", cf, lambda x: config(x, "a: " + "[" * 10_000 + "]" * 10_000 + "\n")),
        c("config: a boolean for a number", cf, lambda x: config(x, "window: {width_s: true}\n" + OFF)),
        c("config: 1e400 for a count", cf, lambda x: config(x, "surge: {min_count: 1e400}\n" + OFF)),
        c("config: a string for a section", cf, lambda x: config(x, "surge: fisher\nserver: {enabled: false}\n")),
        c("config: a webhook without url", cf,
          lambda x: config(x, "alerts: {webhook: {timeout_s: 1}}\nserver: {enabled: false}\n")),
        c("config: an empty file", cf, lambda x: run(x, "--set", "server.enabled=false", "--set", "output=out",
                                                     config=x.write("empty.yaml", ""))),
        # ---- replay files (bad lines are skipped and counted; the run goes on)
        c("replay: an empty file", rp, lambda x: replay(x, "")),
        c("replay: every line malformed", rp, lambda x: replay(x, "not json\n{\n}\n[1,\n")),
        c("replay: last line without a newline", rp, lambda x: replay(x, lines(GOOD) + json.dumps(GOOD))),
        c("replay: a timestamp in the year 5107", rp,
          lambda x: replay(x, lines(GOOD, {"text": "a future", "timestamp": 9.9e10}, GOOD))),
        c("replay: NaN and infinite timestamps", rp,
          lambda x: replay(x, lines(GOOD, '{"text": "a", "timestamp": NaN}', '{"text": "b", "timestamp": Infinity}',
                                    '{"text": "c", "timestamp": 1e999}'))),
        c("replay: negative and 0001-01-01 timestamps", rp,
          lambda x: replay(x, lines({"text": "a", "timestamp": -1}, {"text": "b", "timestamp": "0001-01-01T00:00:00"},
                                    GOOD))),
        c("replay: a line nested 50,000 deep", rp, lambda x: replay(x, lines("[" * 50_000 + "]" * 50_000, GOOD))),
        c("replay: a 5,000-digit integer id", rp, lambda x: replay(x, lines('{"text": "a", "id": ' + "9" * 5000 + "}",
                                                                          GOOD))),
        c("replay: a line over ingest.max_body_bytes", rp,
          lambda x: replay(x, lines({"text": "x" * 50_000}, GOOD), "--set", "ingest.max_body_bytes=1000")),
        c("replay: invalid UTF-8", rp, lambda x: replay(x, b'{"text": "caf\xe9 \xff"}\n' + lines(GOOD).encode())),
        c("replay: a UTF-16 file", rp, lambda x: replay(x, lines(GOOD).encode("utf-16"))),
        c("replay: CRLF line ends", rp, lambda x: replay(x, lines(GOOD, GOOD).replace("\n", "\r\n"))),
        c("replay: JSON arrays and scalars as lines", rp, lambda x: replay(x, lines("[1, 2]", "3", '"text"', "null"))),
        c("replay: empty and blank texts", rp, lambda x: replay(x, lines({"text": ""}, {"text": "  \t "}, GOOD))),
        c("replay: a text over ingest.max_chars", rp, lambda x: replay(x, lines({"text": "x" * 20_000}, GOOD))),
        c("replay: unknown fields in an item", rp, lambda x: replay(x, lines({"text": "a", "label": "x"}, GOOD))),
        c("replay: the same id twice", rp, lambda x: replay(x, lines({**GOOD, "id": "1"}, {**GOOD, "id": "1"}))),
        c("replay: an id 201 characters long", rp, lambda x: replay(x, lines({**GOOD, "id": "i" * 201}))),
        c("replay: a timestamp of true / a list / garbage", rp,
          lambda x: replay(x, lines({"text": "a", "timestamp": True}, {"text": "b", "timestamp": [1]},
                                    {"text": "c", "timestamp": "yesterday"}))),
        c("replay: blank lines only", rp, lambda x: replay(x, "\n\n   \n\t\n")),
        c("replay: NUL bytes and control characters in a text", rp,
          lambda x: replay(x, lines({"text": "a\u0000b\u0007c\u001b[31m", "timestamp": T0}))),
        c("replay: out-of-order and duplicate timestamps", rp,
          lambda x: replay(x, lines(*({"text": f"t {i}", "timestamp": T0 + (i * 37) % 300} for i in range(20))))),
        # ---- signing
        c("signing: an unsigned model", sg, lambda x: run(x, "--require-signature", str(x.fix / "key.pub"))),
        c("signing: signed with another key", sg,
          lambda x: run(x, "--require-signature", str(x.fix / "other-key.pub"), model=str(x.fix / M / "signed"))),
        c("signing: the key file missing", sg,
          lambda x: run(x, "--require-signature", str(x.d / "none.pub"), model=str(x.fix / M / "signed"))),
        c("signing: a private key for the public one", sg,
          lambda x: run(x, "--require-signature", str(x.fix / "key"), model=str(x.fix / M / "signed"))),
        c("signing: a key file of garbage", sg,
          lambda x: run(x, "--require-signature", x.write("bad.pub", "-----BEGIN PUBLIC KEY-----\nxx\n"),
                        model=str(x.fix / M / "signed"))),
        c("signing: an empty key path", sg,
          lambda x: run(x, "--require-signature", "", model=str(x.fix / M / "signed"))),
        c("signing: a manifest changed after signing", sg,
          lambda x: run(x, "--require-signature", str(x.fix / "key.pub"), model=tampered_signed(x))),
        c("signing: a signed model and an unsigned second one", sg,
          lambda x: ["monitor", str(x.fix / M / "signed"), _model(x), "--require-signature", str(x.fix / "key.pub"),
                     "--config", str(x.fix / M / "config.yaml"), "--source", f"replay:{_stream(x)}",
                     "--exit-when-done"]),
        c("signing: a signed model and its key", sg,
          lambda x: run(x, "--require-signature", str(x.fix / "key.pub"), model=str(x.fix / M / "signed"))),
        # ---- the store
        c("store: a monitor.db of random bytes", st, junk_db),
        c("store: a SQLite database of another schema", st, other_schema_db),
        c("store: postgresql:// nobody listens on", st,
          lambda x: run(x, "--set", "store.url=postgresql://u:p@127.0.0.1:9/db")),
    ]


# ============================================================================ the server


class TricklingReceiver:
    """A webhook receiver: alert 1's deliveries get headers, then one body byte a second for a
    minute; every other delivery 200 at once. Records (time, alert id) of those it answered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.answered: list[tuple[float, int, str]] = []
        self.trickled: list[float] = []
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
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length"))
            while len(body) < length:
                body += conn.recv(65536)
            event = json.loads(body)
            alert = int(event["alert"]["id"])
            if alert == 1:
                self.trickled.append(time.time())
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n")
                for _ in range(60):
                    if self.stop.wait(1.0):
                        break
                    conn.sendall(b"x")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                self.answered.append((time.time(), alert, event["event"]))
        except (OSError, ValueError, KeyError, StopIteration):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def server_cases(texts: dict[str, Any]) -> list[tuple[str, Any]]:
    j = {"Content-Type": "application/json"}
    post = "/v1/ingest"
    head = b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

    def items(*its: Any) -> bytes:
        return json.dumps({"items": list(its)}).encode()

    return [
        ("alert id past 2^63", ("GET", f"/v1/alerts/{2**64}", {}, None)),
        ("alert id of 100 digits", ("GET", "/v1/alerts/" + "9" * 100, {}, None)),
        ("alert id negative", ("GET", "/v1/alerts/-1", {}, None)),
        ("alert id not a number", ("GET", "/v1/alerts/abc", {}, None)),
        ("alert id a float", ("GET", "/v1/alerts/1.5", {}, None)),
        ("alert id that does not exist", ("GET", f"/v1/alerts/{2**63 - 1}", {}, None)),
        ("alerts limit 0", ("GET", "/v1/alerts?limit=0", {}, None)),
        ("alerts limit past 2^63", ("GET", f"/v1/alerts?limit={2**64}", {}, None)),
        ("alerts limit negative", ("GET", "/v1/alerts?limit=-5", {}, None)),
        ("alerts limit not a number", ("GET", "/v1/alerts?limit=lots", {}, None)),
        ("dashboard since NaN", ("GET", "/v1/dashboard?since=nan", {}, None)),
        ("dashboard since infinity", ("GET", "/v1/dashboard?since=inf", {}, None)),
        ("dashboard since 1e400", ("GET", "/v1/dashboard?since=1e400", {}, None)),
        ("dashboard since -1e300", ("GET", "/v1/dashboard?since=-1e300", {}, None)),
        ("dashboard since not a number", ("GET", "/v1/dashboard?since=yesterday", {}, None)),
        ("GET /v1/ingest", ("GET", post, {}, None)),
        ("PUT /v1/ingest", ("PUT", post, j, b"{}")),
        ("DELETE /v1/alerts/1", ("DELETE", "/v1/alerts/1", {}, None)),
        ("POST /healthz", ("POST", "/healthz", j, b"{}")),
        ("unknown path", ("GET", "/v2/everything", {}, None)),
        ("no Content-Type", ("POST", post, {}, items({"text": "a"}))),
        ("text/plain", ("POST", post, {"Content-Type": "text/plain"}, items({"text": "a"}))),
        ("empty body", ("POST", post, j, b"")),
        ("null", ("POST", post, j, b"null")),
        ("a list", ("POST", post, j, b"[]")),
        ("empty object", ("POST", post, j, b"{}")),
        ("items empty", ("POST", post, j, b'{"items": []}')),
        ("items null", ("POST", post, j, b'{"items": null}')),
        ("items a string", ("POST", post, j, b'{"items": "text"}')),
        ("items of strings", ("POST", post, j, b'{"items": ["a", "b"]}')),
        ("too many items", ("POST", post, j, items(*[{"text": "a"}] * 9))),
        ("text too long", ("POST", post, j, items({"text": "a" * 201}))),
        ("text empty", ("POST", post, j, items({"text": ""}))),
        ("text blank", ("POST", post, j, items({"text": " \t "}))),
        ("text a number", ("POST", post, j, items({"text": 5}))),
        ("extra field in an item", ("POST", post, j, items({"text": "a", "label": "neg"}))),
        ("extra field in the body", ("POST", post, j, b'{"items": [{"text": "a"}], "x": 1}')),
        ("timestamp in the year 5107", ("POST", post, j, items({"text": "a", "timestamp": 9.9e10}))),
        ("timestamp 10^12", ("POST", post, j, items({"text": "a", "timestamp": 10**12}))),
        ("timestamp NaN", ("POST", post, j, b'{"items": [{"text": "a", "timestamp": NaN}]}')),
        ("timestamp -Infinity", ("POST", post, j, b'{"items": [{"text": "a", "timestamp": -Infinity}]}')),
        ("timestamp negative", ("POST", post, j, items({"text": "a", "timestamp": -1}))),
        ("timestamp ISO year 9999", ("POST", post, j, items({"text": "a", "timestamp": "9999-12-31T23:59:59"}))),
        ("timestamp ISO year 1", ("POST", post, j, items({"text": "a", "timestamp": "0001-01-01T00:00:00+14:00"}))),
        ("timestamp garbage", ("POST", post, j, items({"text": "a", "timestamp": "soon"}))),
        ("timestamp true", ("POST", post, j, items({"text": "a", "timestamp": True}))),
        ("id a list", ("POST", post, j, items({"text": "a", "id": [1]}))),
        ("id 201 characters", ("POST", post, j, items({"text": "a", "id": "i" * 201}))),
        ("id a 5000-digit integer", ("POST", post, j, b'{"items": [{"text": "a", "id": ' + b"9" * 5000 + b"}]}")),
        ("source empty", ("POST", post, j, items({"text": "a", "source": ""}))),
        ("body over the limit (Content-Length)", ("POST", post, j, items({"text": "a" * 5000}))),
        ("body over the limit (chunked)", ("POST", post, j, iter([b'{"items": [{"text": "', b"a" * 5000, b'"}]}']))),
        ("invalid JSON", ("POST", post, j, b'{"items": [')),
        ("trailing garbage", ("POST", post, j, b'{"items": [{"text": "a"}]} xx')),
        ("invalid UTF-8", ("POST", post, j, b'{"items": [{"text": "caf\xe9"}]}')),
        ("UTF-16 body", ("POST", post, j, '{"items": [{"text": "a"}]}'.encode("utf-16"))),
        ("JSON nested 1,000 deep", ("POST", post, j, b'{"items": ' + b"[" * 1000 + b"]" * 1000 + b"}")),
        ("1e999999 as a text", ("POST", post, j, b'{"items": [{"text": 1e999999}]}')),
        ("duplicate keys", ("POST", post, j, b'{"items": [{"text": "a"}], "items": 5}')),
        ("Content-Length not a number", ("raw", head + b"Content-Length: abc\r\n\r\n{}", "status")),
        ("garbage request line", ("raw", b"HELLO THERE\r\n\r\n", "status")),
        ("headers that never end", ("raw", head, "close")),
        ("connect and send nothing", ("raw", b"", "close")),
        ("body shorter than Content-Length", ("raw", head + b"Content-Length: 100\r\n\r\n{\"items\": ", "close")),
    ]


def _get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0


def _surge_rows(url: str, texts: dict[str, Any], hook: TricklingReceiver) -> dict[str, Any]:
    """Drive two alert episodes of one topic (windows of 60 s, in the past): alert 1's delivery
    trickles; alert 2's must arrive while it does. Returns the row."""
    import httpx

    kind = "webhook receiver trickling one byte a second (timeout_s 4)"
    row = {"kind": kind, "group": "monitor server", "expect": "error", "why": ""}
    if not texts:
        return {**row, "outcome": "skipped", "said": "the random model gave no topic with both sentiments"}
    base = (time.time() // 60 - 100) * 60  # 100 minutes ago, on a window boundary
    plan = ["other"] * 3 + ["negative", "other", "other", "negative", "other"]  # window kinds in order
    started = None
    for w, which in enumerate(plan):
        pool = texts[which]
        batch = [{"text": pool[i % len(pool)], "timestamp": base + w * 60 + i} for i in range(12)]
        r = httpx.post(url + "/v1/ingest", json={"items": batch[:8]}, timeout=30)
        r2 = httpx.post(url + "/v1/ingest", json={"items": batch[8:]}, timeout=30)
        if r.status_code != 200 or r2.status_code != 200:
            return {**row, "outcome": "traceback", "said": f"ingest {r.status_code} {r2.status_code}: {r.text[:100]}"}
        if hook.trickled and started is None:
            started = hook.trickled[0]
    deadline = time.time() + 20
    while time.time() < deadline and not any(a == 2 for _, a, _ in hook.answered):
        time.sleep(0.1)
    started = hook.trickled[0] if hook.trickled else None
    second = next((t for t, a, _ in hook.answered if a == 2), None)
    if started is None or second is None:
        alerts = httpx.get(url + "/v1/alerts", timeout=10).json()
        return {**row, "outcome": "hang", "said": f"trickled {len(hook.trickled)}, answered {hook.answered}, "
                                                  f"alerts {[(a['id'], a['status']) for a in alerts]}"}
    held = second - started
    return {**row, "outcome": "clean" if held < 4.0 else "hang",
            "said": f"alert 2 delivered {held:.1f} s after alert 1's delivery began trickling "
                    f"(attempts of alert 1 so far: {len(hook.trickled)})"}


def servers(fix: Path, scratch: Path) -> list[dict[str, Any]]:
    port = _free_port()
    hook = TricklingReceiver()
    out = scratch / "monitor-server"
    log_path = scratch / "monitor-server.log"
    texts = json.loads((fix / M / "texts.json").read_text())
    sets = {"server.port": port, "output": out, "ingest.max_items": 8, "ingest.max_chars": 200,
            "ingest.max_body_bytes": 4096, "server.header_timeout_s": 2, "server.body_timeout_s": 2,
            "window.width_s": 60, "surge.alpha": 0.05, "surge.min_count": 5, "surge.min_negative": 3,
            "surge.min_baseline": 10, "surge.baseline_windows": 3, "surge.close_after": 1,
            "alerts.webhook.url": hook.url, "alerts.webhook.timeout_s": 4, "alerts.webhook.backoff_s": 30}
    argv = [sys.executable, "-m", "lepton", "monitor", str(fix / M / "model")]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _get(url + "/readyz") != 200 and proc.poll() is None:
        time.sleep(0.3)
    rows: list[dict[str, Any]] = []
    try:
        rows.append(_surge_rows(url, texts, hook))
        print(f"  monitor server   1 {rows[0]['kind']}: {rows[0]['outcome']} ({rows[0]['said']})", file=sys.stderr,
              flush=True)
        for kind, req in server_cases(texts):
            outcome, said = _server_case(url, port, req)
            rows.append({"kind": kind, "group": "monitor server", "expect": "error", "why": "",
                         "outcome": outcome, "said": said})
            print(f"  monitor server {len(rows):3d} {kind}: {outcome}", file=sys.stderr, flush=True)
        alive = _get(url + "/healthz") == 200
        import httpx

        good = httpx.post(url + "/v1/ingest", json={"items": [{"text": "a good item"}]}, timeout=30).status_code == 200
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 60 s"
        hook.close()
    log_text = log_path.read_text(errors="replace")
    refused = next((ln for ln in metrics.splitlines() if ln.startswith("lepton_monitor_refused_timestamps_total")), "")
    rows.append({"kind": "monitor still healthy and exits 0 after all of the above", "group": "check",
                 "expect": "accept", "why": "a check after the bad inputs, not a bad input itself",
                 "outcome": "accepted" if alive and good and code == 0 and "Traceback" not in log_text
                 else "traceback",
                 "said": f"healthz {alive}, ingest {good}, exit {code}, tracebacks in log: "
                         f"{log_text.count('Traceback')}, {refused}"})
    return rows
