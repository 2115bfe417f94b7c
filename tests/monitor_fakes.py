"""Helpers for the monitor tests: a fake classifier (where the model is not the point), a tiny
random multi-task Lepton artifact (where it is), synthetic streams and a local webhook receiver."""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lepton.monitor.predict import Prediction

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a multiple of 60 and of 300 minus nothing odd


class KeywordClassifier:
    """Topic: the text's first word. Sentiment: negative when the text holds the word "bad"."""

    negative_label = "negative"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def classify(self, texts: list[str]) -> list[Prediction]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for t in texts:
            words = t.split()
            neg = "bad" in words
            p = 0.9 if neg else 0.1
            out.append(Prediction(topic=words[0] if words else "none", topic_score=0.99,
                                  sentiment="negative" if neg else "positive", sentiment_score=max(p, 1 - p),
                                  negative_score=p, scores={"negative": p, "positive": 1 - p}))
        return out


def synthetic_items(n: int, *, topics: tuple[str, ...] = ("sports", "business"), base: float = 0.15,
                    surge: tuple[str, int, int, float] | None = None, seed: int = 0,
                    step_s: float = 1.0) -> list[dict[str, Any]]:
    """``n`` items one ``step_s`` apart; negative with probability ``base``, or inside
    ``surge`` = (topic, first index, end index, share) with that share."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        topic = topics[i % len(topics)] if len(topics) > 1 else topics[0]
        share = base
        if surge and topic == surge[0] and surge[1] <= i < surge[2]:
            share = surge[3]
        word = "bad" if rng.random() < share else "good"
        items.append({"text": f"{topic} news is {word} today {i}", "timestamp": T0 + i * step_s, "id": f"i{i}"})
    return items


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    return path


def build_multitask_artifact(tiny_model_dir: Path, dest: Path, reference: Any = None) -> Path:
    """A random 2-layer BERT with a 3-way sentiment head (main task) and a 4-way topic head.
    ``reference``: a callable (bundle -> DriftReference) whose result is saved as the model's
    drift reference (none saved without it)."""
    import torch
    from transformers import AutoConfig, BertForSequenceClassification

    from lepton.models import load_tokenizer
    from lepton.pipeline.artifact import save_artifact
    from lepton.runtimes.bundle import ModelBundle
    from lepton.runtimes.heads import Head, make_head
    from lepton.tasks import TaskSpec

    sentiment = TaskSpec(kind="sequence_classification", labels=["negative", "neutral", "positive"],
                         raw_labels=["negative", "neutral", "positive"], max_length=64)
    topic_labels = ["World", "Sports", "Business", "Sci/Tech"]
    topic = TaskSpec(kind="sequence_classification", labels=topic_labels, raw_labels=topic_labels, max_length=64)
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=3)
    torch.manual_seed(0)
    main = BertForSequenceClassification(config).eval()
    head = make_head(main, topic, "test").eval()
    bundle = ModelBundle(model=main, tokenizer=load_tokenizer(str(tiny_model_dir)), task=sentiment,
                         source="tiny-bert", heads={"topic": Head(task=topic, model=head)}, main_task="sentiment")
    if reference is None:
        return save_artifact(bundle, dest)
    from lepton.evaluation.drift import REFERENCE_FILE

    return save_artifact(bundle, dest, extra_files={REFERENCE_FILE: reference(bundle).to_json()})


class WebhookReceiver:
    """A local HTTP server that answers the first ``fail_first`` POSTs with 500 (or hangs for
    ``hang_s`` seconds), then 200, and records every attempt's time and body."""

    def __init__(self, fail_first: int = 0, hang_s: float = 0.0) -> None:
        self.attempts: list[tuple[float, int, dict]] = []
        self.fail_first, self.hang_s = fail_first, hang_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                status = 500 if len(receiver.attempts) < receiver.fail_first else 200
                receiver.attempts.append((time.time(), status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
