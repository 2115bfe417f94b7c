"""Issue 15: 8 concurrent streaming clients against Lepton's generation server on the int4 ONNX
graph (``create_generate_app(engine=OrtEngine(OrtDecoder(int4)))``) and against llama.cpp's
OpenAI-compatible server (``python -m llama_cpp.server``, llama-cpp-python's ``[server]`` extra,
installed in the peers venv only) on the 4-bit GGUF of the same fine-tuned model, in one run.

Both servers run as separate processes pinned to the same core (``--cores``, one thread each);
the clients (this process, httpx) too. Both servers stay up, and the modes alternate per round
(order reversed every round) so drift hits both alike. Every request: ``/v1/completions``,
streamed, greedy (temperature 0), exactly ``--max-new-tokens`` tokens (Lepton: ``ignore_eos``;
llama.cpp: ``min_tokens`` = max_tokens, which masks the end-of-sequence token until then), on
the same prompt: a Multi30k test-2016 English sentence in the fine-tuned model's chat prompt
(system + "Translate English to German: ..."), sent as text (the chat template's special tokens
are parsed by both servers; the token ids are compared once and reported).

    taskset -c 1 env OMP_NUM_THREADS=1 benchmarks/peers/.venv/bin/python benchmarks/serve_generate_peers.py \
        --model DIR --int4 DIR/ort-int4 --gguf model-q4_0.gguf

Reports aggregate generated tokens/s, TTFT p50/p95, time per token p50, for ``--concurrency``
clients (8) and for 1 client (sequential, for scale). Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = Path(os.environ.get("LEPTON_DATA", ROOT.parent / "shared" / "data"))
SYSTEM = "You translate English into German. Reply with the German translation only."
TEMPLATE = "Translate English to German: {source}"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve_lepton(args: argparse.Namespace) -> None:
    """Child process: Lepton's generation server on the ONNX graph."""
    sys.path.insert(0, str(ROOT / "src"))
    import uvicorn
    from transformers import AutoTokenizer

    from lepton.runtimes.ort_decoder_loop import OrtDecoder
    from lepton.serve.generation.app import GenerateSettings, create_generate_app
    from lepton.serve.generation.ort_engine import OrtEngine

    tok = AutoTokenizer.from_pretrained(args.int4)
    engine = OrtEngine(OrtDecoder(args.int4, threads=1), max_context=args.max_context)
    app = create_generate_app(None, tok, GenerateSettings(max_batch=args.max_batch, max_queue=256,
                                                          max_new_tokens=512, max_prompt_tokens=512),
                              model_name="lepton-ort-int4", engine=engine)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def prompts(tok: Any, n: int) -> list[str]:
    with gzip.open(DATA / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for line, _ in zip(f, range(n))]
    return [tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": TEMPLATE.format(source=s)}],
                                    add_generation_prompt=True, tokenize=False) for s in lines]


async def one_request(client: Any, url: str, body: dict) -> dict[str, float]:
    start = time.perf_counter()
    first = None
    chunks, usage, finish = 0, None, None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            if chunk.get("choices"):
                c = chunk["choices"][0]
                if c.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
                finish = c.get("finish_reason") or finish
    end = time.perf_counter()
    first = first or end
    tokens = usage if usage is not None else (body["max_tokens"] if finish == "length" else chunks)
    return {"ttft": first - start, "total": end - start, "tokens": tokens, "chunks": chunks, "finish": finish,
            "tpot": (end - first) / max(1, tokens - 1)}


async def run_clients(url: str, bodies: list[dict], concurrency: int) -> dict[str, Any]:
    import httpx

    queue = list(bodies)
    results: list[dict] = []
    async with httpx.AsyncClient(timeout=1200) as client:
        async def worker() -> None:
            while queue:
                results.append(await one_request(client, url, queue.pop(0)))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    return {"requests": len(results), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": 1000 * statistics.median(ttft),
            "ttft_p95_ms": 1000 * ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))],
            "tpot_p50_ms": 1000 * statistics.median(r["tpot"] for r in results),
            "finish": sorted({str(r["finish"]) for r in results}), "chunks": sum(r["chunks"] for r in results)}


def wait_ready(url: str, proc: subprocess.Popen, path: str, timeout: float = 300) -> None:
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server at {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="the fine-tuned HF folder (tokenizer, prompts)")
    ap.add_argument("--int4", help="Lepton's int4 ONNX folder")
    ap.add_argument("--gguf", help="the 4-bit GGUF file for llama.cpp")
    ap.add_argument("--gguf-label", default="llama.cpp server (Q4_0)")
    ap.add_argument("--cores", default="1")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sequential", action="store_true", help="also 1 client, one request after another")
    ap.add_argument("--lepton-python", default=os.environ.get("LEPTON_PYTHON", "python"))
    ap.add_argument("--peers-python", default=sys.executable)
    ap.add_argument("--out", default=str(HERE / "results" / "serve_generate_peers"))
    ap.add_argument("--serve-lepton", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_lepton:
        return serve_lepton(args)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    texts = prompts(tok, args.requests)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    lp, cp = free_port(), free_port()
    lepton = subprocess.Popen(["taskset", "-c", args.cores, args.lepton_python, __file__, "--serve-lepton", "--int4",
                               args.int4, "--port", str(lp), "--max-context", str(args.max_context), "--max-batch",
                               str(args.max_batch)], env=env)
    llama = subprocess.Popen(["taskset", "-c", args.cores, args.peers_python, "-m", "llama_cpp.server", "--model",
                              args.gguf, "--host", "127.0.0.1", "--port", str(cp), "--n_threads", "1",
                              "--n_threads_batch", "1", "--n_ctx", str(args.max_context), "--n_batch", "512",
                              "--verbose", "False",
                              # its default (True) makes each new request cancel the one streaming:
                              # concurrent clients would get cut-off replies; False queues them
                              "--interrupt_requests", "False"], env=env)
    servers = {"lepton": f"http://127.0.0.1:{lp}", "llamacpp": f"http://127.0.0.1:{cp}"}
    try:
        wait_ready(servers["lepton"], lepton, "/readyz")
        wait_ready(servers["llamacpp"], llama, "/v1/models")
        # The same prompt tokens on both sides? llama.cpp tokenizes the text itself.
        import httpx
        same = []
        for t in texts[:4]:
            r = httpx.post(servers["llamacpp"] + "/extras/tokenize", json={"input": t}, timeout=30)
            ids_llama = r.json().get("tokens") if r.status_code == 200 else None
            same.append(ids_llama == tok(t, add_special_tokens=False)["input_ids"] if ids_llama is not None else None)
        bodies = {
            "lepton": [{"prompt": t, "max_tokens": args.max_new_tokens, "temperature": 0, "ignore_eos": True,
                        "stream": True, "stream_options": {"include_usage": True}} for t in texts],
            "llamacpp": [{"prompt": t, "max_tokens": args.max_new_tokens, "temperature": 0, "top_k": 1,
                          "repeat_penalty": 1.0, "min_tokens": args.max_new_tokens, "stream": True} for t in texts],
        }
        for name, url in servers.items():  # warm-up
            asyncio.run(run_clients(url, bodies[name][:2], 2))
        modes = {}
        for name in servers:
            modes[f"{name}, {args.concurrency} clients"] = (name, args.concurrency)
            if args.sequential:
                modes[f"{name}, 1 client"] = (name, 1)
        rows: dict[str, list] = {m: [] for m in modes}
        for rnd in range(args.rounds):
            order = list(modes) if rnd % 2 == 0 else list(reversed(modes))
            for mode in order:
                name, c = modes[mode]
                r = asyncio.run(run_clients(servers[name], bodies[name], c))
                rows[mode].append(r)
                print(f"round {rnd + 1} {mode}: {r['tokens_per_s']:.1f} tokens/s, TTFT p50 {r['ttft_p50_ms']:.0f} ms "
                      f"p95 {r['ttft_p95_ms']:.0f} ms ({r['tokens']} tokens, {r['wall_s']:.1f} s, {r['finish']})",
                      flush=True)
    finally:
        for p in (lepton, llama):
            p.terminate()
        for p in (lepton, llama):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    import importlib.metadata as md
    versions = {}
    for pkg in ("llama_cpp_python", "onnxruntime", "fastapi", "uvicorn", "sse-starlette", "starlette-context"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    med = {m: {k: statistics.median(r[k] for r in rs)
               for k in ("tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms")}
           for m, rs in rows.items()}
    lines = ["# 8 concurrent streaming clients: Lepton's server (ORT int4) vs llama.cpp's server (4-bit GGUF)", "",
             f"- Model: fine-tuned SmolLM2-135M (`{args.model}`); Lepton: `{args.int4}` (OrtEngine, max_batch "
             f"{args.max_batch}); llama.cpp: `{args.gguf}` ({args.gguf_label}, llama_cpp.server, n_threads 1)",
             f"- CPU: {cpu}; both servers and the clients pinned with `taskset -c {args.cores}`, one thread each "
             "(OMP_NUM_THREADS=1, ORT intra-op 1, llama.cpp n_threads 1)",
             f"- Workload per mode: {args.requests} requests (Multi30k test-2016 sentences in the chat prompt), "
             f"streamed /v1/completions, greedy, exactly {args.max_new_tokens} new tokens; {args.rounds} rounds, "
             "order reversed each round; median of the rounds shown",
             "- Prompt token ids identical between llama.cpp's tokenizer and the HF tokenizer "
             f"(first 4 prompts): {same}",
             f"- Versions: {json.dumps(versions)}", "",
             "| mode | tokens/s | TTFT p50 ms | TTFT p95 ms | time/token p50 ms | all rounds tokens/s |",
             "|---|---:|---:|---:|---:|---|"]
    for m, v in med.items():
        every = ", ".join(f"{r['tokens_per_s']:.1f}" for r in rows[m])
        lines.append(f"| {m} | {v['tokens_per_s']:.1f} | {v['ttft_p50_ms']:.0f} | {v['ttft_p95_ms']:.0f} | "
                     f"{v['tpot_p50_ms']:.1f} | {every} |")
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "cpu": cpu, "versions": versions,
                                                    "same_prompt_ids": same, "rounds": rows, "median": med}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
