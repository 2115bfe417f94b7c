"""Does llama.cpp load and run the GGUF files Lepton writes (``lepton gguf``)? SmolLM2-135M
(builtin) written at f32, q8_0 and q4_0; each loaded by llama.cpp (llama-cpp-python, the peers'
environment: ``bash benchmarks/peers/setup.sh``), its tokenization compared with the Hugging Face
tokenizer's, and its greedy continuation of real prompts compared token for token with PyTorch's.

    benchmarks/peers/.venv/bin/python benchmarks/gguf_llamacpp.py [--out runs/gguf-llamacpp]

Writes ``OUT/gguf_llamacpp.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lepton.evaluation.environment import describe, fingerprint
from lepton.models.decoder import load_generative
from lepton.models.gguf_export import write_gguf

MODEL = "builtin:smollm2-135m"
PROMPTS = ["The capital of France is", "Translate to German: A man is riding a bicycle.",
           "Once upon a time, in a small village,", "The three primary colours are",
           "def fibonacci(n):", "Water boils at a temperature of", "The best way to learn a language is",
           "In 1969, astronauts"]
NEW_TOKENS = 24


def main() -> None:
    import llama_cpp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gguf-llamacpp")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_generative(MODEL)
    want = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        want[prompt] = (ids[0].tolist(), gen[0, ids.shape[1]:].tolist())
    results = {"machine": describe(fingerprint()), "model": MODEL, "llama_cpp_python": llama_cpp.__version__,
               "new_tokens": NEW_TOKENS, "types": {}}
    for dtype in ("f32", "q8_0", "q4_0"):
        path = out / f"smollm2-{dtype}.gguf"
        info = write_gguf(model, tokenizer, path, dtype=dtype)
        t0 = time.perf_counter()
        llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, verbose=False, logits_all=False)
        load_s = time.perf_counter() - t0
        rows = []
        for prompt, (ids, torch_tokens) in want.items():
            cpp_ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
            llm.reset()
            tokens = []
            for token in llm.generate(cpp_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
                tokens.append(int(token))
                if len(tokens) == NEW_TOKENS or token == llm.token_eos():
                    break
            same = next((i for i, (a, b) in enumerate(zip(tokens, torch_tokens)) if a != b),
                        min(len(tokens), len(torch_tokens)))
            rows.append({"prompt": prompt, "same_tokenization": cpp_ids == ids, "identical": tokens == torch_tokens,
                         "shared_prefix_tokens": same, "llama_cpp": llm.detokenize(tokens).decode(errors="replace")})
        results["types"][dtype] = {"size_mb": info["size_mb"], "load_s": round(load_s, 2), "rows": rows,
                                   "same_tokenization": sum(r["same_tokenization"] for r in rows),
                                   "identical": sum(r["identical"] for r in rows),
                                   "mean_shared_prefix": round(sum(r["shared_prefix_tokens"] for r in rows)
                                                               / len(rows), 2)}
        print(dtype, {k: v for k, v in results["types"][dtype].items() if k != "rows"})
    (out / "gguf_llamacpp.json").write_text(json.dumps(results, indent=2))
    lines = ["# GGUF written by Lepton, run by llama.cpp", "",
             f"Machine: {results['machine']}. `{MODEL}` written with `lepton gguf`; llama-cpp-python "
             f"{results['llama_cpp_python']}; greedy, {NEW_TOKENS} new tokens, {len(PROMPTS)} prompts; "
             "PyTorch fp32 greedy as the reference.", "",
             "| type | size MB | llama.cpp loads | same tokenization | identical continuation | "
             "mean shared prefix (tokens) |", "|---|---|---|---|---|---|"]
    for dtype, r in results["types"].items():
        lines.append(f"| {dtype} | {r['size_mb']} | yes ({r['load_s']} s) | {r['same_tokenization']}/{len(PROMPTS)} | "
                     f"{r['identical']}/{len(PROMPTS)} | {r['mean_shared_prefix']} |")
    lines += ["", "First continuation per type:", ""]
    for dtype, r in results["types"].items():
        lines.append(f"- {dtype}: {r['rows'][0]['prompt']!r} -> {r['rows'][0]['llama_cpp']!r}")
    (out / "gguf_llamacpp.md").write_text("\n".join(lines) + "\n")
    print(f"written: {out / 'gguf_llamacpp.md'}")


if __name__ == "__main__":
    main()
