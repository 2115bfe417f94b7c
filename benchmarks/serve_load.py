"""Serving under load: `lepton serve` with dynamic batching on and off, side by side in one run.

Two servers of the same model on loopback ports: batching on (--max-batch 32 --max-wait-ms 5) and
off (--max-batch 1, one request per model call). N concurrent clients (httpx.AsyncClient) send
SST-2 dev sentences, one per request; the two servers take turns in rounds (on, off, off, on, ...)
so machine drift hits both alike. Reports throughput, p50/p95/p99 latency and errors for each, and
the ratio. Bounded: a fixed request count per server and an overall time limit.

    python benchmarks/serve_load.py [--model runs/sst2-minilm-finetune/model] [--requests 1000]
                                    [--concurrency 32] [--rounds 4] [--time-limit 110] [--threads N]

The clients share the machine with the servers, so by default each server's model gets half the
cores (--threads) and the clients and the server's event loop the rest; the clients' CPU use is
part of what is measured, alike for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODES = {"batching": ["--max-batch", "32", "--max-wait-ms", "5"],
         "batch-1": ["--max-batch", "1", "--max-wait-ms", "0"]}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of this server's rounds
    sent: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def sentences(limit: int | None = None) -> list[str]:
    from lepton.data import Columns, DataSplitConfig, load_split

    # The built-in SST-2 dev split (shipped in the package): runs from a fresh clone.
    split = load_split(DataSplitConfig(path="builtin:sst2/dev"), Columns(text="sentence"), name="dev")
    return list(split.texts)[:limit]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model: str, mode: str, log_dir: Path, threads: int | None = None) -> None:
        self.mode = mode
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_dir / f"{mode}.log"
        port = self.url.rsplit(":", 1)[1]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lepton", "-q", "serve", model, "--port", port,
                 "--max-queue", "4096", *MODES[mode]], stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"serve_load: the {self.mode} server exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        sys.exit(f"serve_load: the {self.mode} server was not ready in time:\n{self.log_path.read_text()}")

    def mean_batch(self) -> float | None:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                      if line.startswith(("lepton_batch_size_sum", "lepton_batch_size_count")))
        count = float(values.get("lepton_batch_size_count", 0))
        return float(values["lepton_batch_size_sum"]) / count if count else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def load(url: str, texts: list[str], offset: int, n: int, concurrency: int, deadline: float,
               tally: Tally | None) -> None:
    """Send n requests from `concurrency` clients; each client sends its next as soon as one returns."""
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                response = await client.post("/v1/predict",
                                             json={"inputs": [texts[(offset + i) % len(texts)]]})
            except httpx.HTTPError as err:
                if tally is not None:
                    tally.error(type(err).__name__)
                continue
            if tally is None:
                continue
            tally.sent += 1
            if response.status_code == 200:
                tally.latencies.append(time.perf_counter() - start)
            else:
                tally.error(f"HTTP {response.status_code}")

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*[client_loop(client) for _ in range(concurrency)])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "sst2-minilm-finetune" / "model"))
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per server")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=4, help="turns each server takes")
    parser.add_argument("--time-limit", type=float, default=110,
                        help="seconds for start-up and load together; requests stop when it is reached")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="torch threads per server (default: half the cores; the clients and the "
                             "server's event loop need the rest)")
    args = parser.parse_args()

    deadline = time.monotonic() + args.time_limit
    texts = sentences()
    tallies = {mode: Tally() for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        servers = {mode: Server(args.model, mode, Path(tmp), args.threads) for mode in MODES}
        try:
            for server in servers.values():
                server.wait_ready(deadline)
            for server in servers.values():  # warm both up: connections, allocator, threads
                asyncio.run(load(server.url, texts, 0, 2 * args.concurrency, args.concurrency, deadline, None))
            per_round = [args.requests // args.rounds + (r < args.requests % args.rounds)
                         for r in range(args.rounds)]
            order = list(MODES)
            for r, n in enumerate(per_round):
                for mode in order if r % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    asyncio.run(load(servers[mode].url, texts, sum(per_round[:r]), n, args.concurrency,
                                     deadline, tallies[mode]))
                    tallies[mode].seconds += time.perf_counter() - start
            batches = {mode: s.mean_batch() for mode, s in servers.items()}
        finally:
            for server in servers.values():
                server.stop()

    from lepton.evaluation.environment import describe, fingerprint

    print(f"lepton serve under load: {args.model}")
    print(f"{args.concurrency} concurrent clients, {args.requests} requests per server in {args.rounds} "
          f"interleaved rounds, one SST-2 dev sentence per request, loopback")
    print(f"machine: {describe(fingerprint())}; server torch threads: {args.threads}")
    print()
    print(f"{'server':<10} {'settings':<30} {'ok':>6} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'mean batch':>10}")
    for mode, tally in tallies.items():
        lat = [x * 1000 for x in tally.latencies]
        throughput = len(lat) / tally.seconds if tally.seconds else float("nan")
        batch = batches[mode]
        print(f"{mode:<10} {' '.join(MODES[mode]):<30} {len(lat):>6} {sum(tally.errors.values()):>6} "
              f"{throughput:>8.1f} {percentile(lat, 50):>8.1f} {percentile(lat, 95):>8.1f} "
              f"{percentile(lat, 99):>8.1f} {batch if batch is None else f'{batch:.1f}':>10}")
        if tally.errors:
            print(f"{'':<10} errors: {tally.errors}")
    on, off = (len(tallies[m].latencies) / tallies[m].seconds if tallies[m].seconds else 0 for m in MODES)
    ratio = on / off if off else float("nan")
    print()
    print(f"batching / batch-1 throughput: {ratio:.2f}x")
    short = [m for m, t in tallies.items() if len(t.latencies) + sum(t.errors.values()) < args.requests]
    if short:
        print(f"time limit reached: {', '.join(short)} sent fewer than {args.requests} requests")
    if any(t.errors for t in tallies.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
