"""`lepton serve` under load and under SIGTERM with a backlog: are all requests answered cleanly?

    python benchmarks/serve_drain.py [--model OUT/model] [--clients 64] [--seconds 30]
                                     [--backlog 40] [--backlog-inputs 64] [--drain 30]

1. Load: ``--clients`` concurrent clients (httpx.AsyncClient) send one SST-2 sentence per
   request, each its next as soon as one returns, for ``--seconds``. Counts every answer by
   status, transport errors, throughput and latency.
2. Shutdown: ``--backlog`` requests of ``--backlog-inputs`` long inputs each (far more work than
   the drain allows) are sent at once; once the server has begun on them it gets SIGTERM with
   ``--drain-timeout`` ``--drain``. Every request must come back 200 or 503 with Retry-After,
   by the drain deadline, and the server must exit 0.

Without ``--model``, the real all-MiniLM-L6-v2 with a new (untrained) 2-label head is saved as a
Lepton artifact first: the predictions mean nothing, the compute is the real model's. Writes
``benchmarks/results/serve_drain.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def sentences() -> list[str]:
    from lepton.data import Columns, DataSplitConfig, load_split

    # The built-in SST-2 dev split (shipped in the package): runs from a fresh clone.
    return list(load_split(DataSplitConfig(path="builtin:sst2/dev"), Columns(text="sentence"), name="dev").texts)


def untrained_minilm(dest: Path) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from lepton.models import load_tokenizer, resolve_model
    from lepton.pipeline.artifact import save_artifact
    from lepton.runtimes.bundle import ModelBundle
    from lepton.tasks import TaskSpec
    from lepton.tasks.loading import load_for_task

    location = resolve_model("builtin:minilm-l6")
    labels = ["negative", "positive"]
    model = load_for_task(location, kind="sequence_classification", labels=labels).eval()
    task = TaskSpec(kind="sequence_classification", labels=labels, raw_labels=labels, max_length=128)
    return save_artifact(ModelBundle(model=model, tokenizer=load_tokenizer(location), task=task,
                                     source="builtin:minilm-l6"), dest)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, drain: float, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "lepton", "serve", str(model), "--port", str(port),
                             "--drain-timeout", str(drain)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve_drain: the server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit(f"serve_drain: not ready in time:\n{log.read_text()}")


def outcome(response: httpx.Response | None, error: str | None) -> str:
    if error is not None:
        return f"transport error ({error})"
    if response.status_code == 503:
        return "503 + Retry-After" if response.headers.get("retry-after") else "503 without Retry-After"
    return str(response.status_code)


async def load(url: str, texts: list[str], clients: int, seconds: float) -> tuple[Counter, list[float], float]:
    counts: Counter = Counter()
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(c: httpx.AsyncClient, k: int) -> None:
        i = k
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                r = await c.post("/v1/predict", json={"inputs": [texts[i % len(texts)]]})
                counts[outcome(r, None)] += 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as err:
                counts[outcome(None, type(err).__name__)] += 1
            i += clients

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        await asyncio.gather(*[client(c, k) for k in range(clients)])
    return counts, latencies, time.monotonic() - started


async def backlog_then_sigterm(url: str, proc: subprocess.Popen, texts: list[str], n: int, inputs: int,
                               drain: float) -> tuple[Counter, float, float, float]:
    long_text = " ".join(texts[:40])  # far past 128 tokens: every input is cut to max_length
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    counts: Counter = Counter()
    finished: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=drain + 60, limits=limits) as c:
        async def one() -> None:
            try:
                r = await c.post("/v1/predict", json={"inputs": [long_text] * inputs})
                counts[outcome(r, None)] += 1
            except httpx.HTTPError as err:
                counts[outcome(None, type(err).__name__)] += 1
            finished.append(time.monotonic())

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(3.0)  # all sent; the first batches are running
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
    last_answer = max(finished) - sent
    exited = await asyncio.to_thread(proc.wait, drain + 60)
    return counts, last_answer, time.monotonic() - sent, exited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a Lepton model folder (default: MiniLM with an untrained head)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--backlog", type=int, default=40)
    parser.add_argument("--backlog-inputs", type=int, default=64)
    parser.add_argument("--drain", type=float, default=30)
    args = parser.parse_args()
    texts = sentences()
    load_before = os.getloadavg()[0]  # other jobs on the machine share the cores
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else untrained_minilm(Path(tmp) / "minilm" / "model")
        port = free_port()
        log = Path(tmp) / "server.log"
        proc = start_server(model, port, args.drain, log)
        url = f"http://127.0.0.1:{port}"
        counts, lat, took = asyncio.run(load(url, texts, args.clients, args.seconds))
        drained, last, total, code = asyncio.run(
            backlog_then_sigterm(url, proc, texts, args.backlog, args.backlog_inputs, args.drain))
        server_log = log.read_text(errors="replace")
    lat.sort()
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    bad = lambda c: sum(v for k, v in c.items() if k not in ("200", "503 + Retry-After"))  # noqa: E731
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    text = "\n".join([
        "# `lepton serve`: load and SIGTERM with a backlog", "",
        f"`python benchmarks/serve_drain.py` on {cpu}, {os.cpu_count()} cores shared by the server and the "
        f"clients; model: {'real all-MiniLM-L6-v2 with an untrained head' if not args.model else args.model}; "
        f"server defaults (max batch 32, max wait 5 ms, max queue 256); load average {load_before:.1f} "
        "before the run (other jobs on the machine).", "",
        f"## {args.clients} concurrent clients for {args.seconds:.0f} s", "",
        "| answers | by status | 5xx other than 503 + Retry-After | throughput | p50 | p99 |",
        "|---|---|---|---|---|---|",
        f"| {sum(counts.values())} | {dict(counts)} | {bad(counts)} | {sum(counts.values()) / took:.1f} req/s | "
        f"{p(0.5):.0f} ms | {p(0.99):.0f} ms |", "",
        f"## SIGTERM with {args.backlog} requests x {args.backlog_inputs} long inputs in flight, "
        f"--drain-timeout {args.drain:g}", "",
        "| answers | by status | other than 200 / 503 + Retry-After | last answer after SIGTERM | exit status | "
        "tracebacks in the server log |", "|---|---|---|---|---|---|",
        f"| {sum(drained.values())} | {dict(drained)} | {bad(drained)} | {last:.1f} s | {code} | "
        f"{server_log.count('Traceback')} |", ""])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_drain.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
