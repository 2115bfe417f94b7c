"""Issue 15: translation quality of every runtime variant of the fine-tuned SmolLM2 on Multi30k
test 2016 (1,000 sentences), side by side: greedy, at most 40 new tokens, cut at the first line
break, the same chat prompt token ids for every runtime (the HF tokenizer's).

- torch-fp32: ``lepton.tasks.generate.generate`` (transformers ``generate``, batches of 64);
- ort-*: ``lepton.runtimes.ort_decoder_loop.generate`` in left-padded batches (``--batch``), on the
  folders ``benchmarks/generative_runtimes.py`` builds (same cache, same files as the speed run);
- ort-int4-compressed: the same, on the int4 graph of the compressed model (``--compressed``);
- llamacpp-*: llama-cpp-python on the GGUF converted from the same folder, one prompt at a time,
  the prompt's token ids fed directly, greedy (top_k 1), stopped at EOS or at a line break;
- genai-int4: ONNX Runtime GenAI's generator on its builder's int4 graph, one prompt at a time.

Each variant runs in its own invocation (``run VARIANT``; llama.cpp and GenAI need the peers
venv's Python) and saves its hypotheses to the cache; ``report`` scores them all: BLEU and chrF
(sacrebleu, through lepton.tasks.text_metrics) with percentile-bootstrap CIs and paired
bootstrap differences against torch-fp32 on the same sentences.

    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/generative_quality.py run torch-fp32 --model DIR
    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src benchmarks/peers/.venv/bin/python \\
        benchmarks/generative_quality.py run llamacpp-q4_0 --model DIR
    PYTHONPATH=src python benchmarks/generative_quality.py report --model DIR
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))
DATA = Path(os.environ.get("LEPTON_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("LEPTON_CACHE", Path.home() / ".cache" / "lepton")) / "generative-bench"
SYSTEM = "You translate English into German. Reply with the German translation only."
TEMPLATE = "Translate English to German: {source}"
MAX_NEW, STOP = 40, "\n"


def test_pairs(limit: int | None) -> tuple[list[str], list[str]]:
    def lines(name: str) -> list[str]:
        with gzip.open(DATA / "multi30k" / name, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    src, ref = lines("test_2016_flickr.en.gz"), lines("test_2016_flickr.de.gz")
    return src[:limit], ref[:limit]


def chat_prompts(tok, sources: list[str]) -> list[str]:
    from lepton.tasks.prompt_encoding import render_prompt
    return [render_prompt(tok, TEMPLATE.format(source=s), chat=True, system=SYSTEM) for s in sources]


def hyp_file(model_dir: Path, variant: str, limit: int | None) -> Path:
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
    return CACHE / "quality" / key / f"{variant}-{limit or 'all'}.json"


def variant_path(variant: str, model_dir: Path, compressed: Path | None) -> Path:
    import generative_runtimes as gr
    if variant == "ort-int4-compressed":
        if compressed is None:
            raise SystemExit("ort-int4-compressed needs --compressed FOLDER (the compressed HF folder)")
        variant, model_dir = "ort-int4", compressed
    work = Path(gr.CACHE / "variants") / hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
    work.mkdir(parents=True, exist_ok=True)
    return gr.build(variant, model_dir, work, gr.find_converter())


def run_variant(args) -> None:
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    model_dir = Path(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    sources, refs = test_pairs(args.limit)
    prompts = chat_prompts(tok, sources)
    cfg_eos = json.loads((model_dir / "config.json").read_text()).get("eos_token_id")
    eos = {tok.eos_token_id} | set([cfg_eos] if isinstance(cfg_eos, int) else (cfg_eos or []))
    v = args.variant
    t_build = time.perf_counter()
    path = (model_dir if v == "torch-fp32"
            else variant_path(v, model_dir, Path(args.compressed) if args.compressed else None))
    build_s = time.perf_counter() - t_build
    parity = None
    if v in ("ort-fp32", "ort-int4-compressed"):
        # The fp32 export against PyTorch on real prompts (raises on a greedy mismatch).
        from transformers import AutoModelForCausalLM

        from lepton.stages.export.onnx_decoder import check_parity
        src = Path(args.compressed) if v == "ort-int4-compressed" else model_dir
        ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        parity = check_parity(ref, tok, path.parent / "ort-fp32" if v == "ort-int4-compressed" else path,
                              prompts[:8], max_new_tokens=16)
        del ref
    t0 = time.perf_counter()
    if v == "torch-fp32":
        from transformers import AutoModelForCausalLM

        from lepton.tasks.generate import generate
        from lepton.tasks.generation_settings import GenerationSettings
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        hyps = generate(model, tok, prompts, GenerationSettings(max_new_tokens=MAX_NEW, batch_size=64, stop=[STOP]),
                        max_prompt_tokens=256)
    elif v.startswith("ort"):
        from lepton.runtimes.ort_decoder_loop import OrtDecoder, SamplingSettings, generate
        decoder = OrtDecoder(path, threads=1)
        settings = SamplingSettings(max_new_tokens=MAX_NEW, stop=(STOP,))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        hyps = [""] * len(prompts)
        for s in range(0, len(order), args.batch):
            rows = order[s:s + args.batch]
            out = generate(decoder, tok, [prompts[i] for i in rows], settings, add_special_tokens=False)
            for i, g in zip(rows, out):
                hyps[i] = g.text.strip()
    elif v.startswith("llamacpp"):
        import llama_cpp
        llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=1, n_threads_batch=1, verbose=False)
        eos |= {llm.token_eos()}
        hyps = []
        for p in prompts:
            ids = tok(p, add_special_tokens=False)["input_ids"]
            llm.reset()
            new: list[int] = []
            for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
                if int(t) in eos:
                    break
                new.append(int(t))
                if STOP in tok.decode(new, skip_special_tokens=True) or len(new) >= MAX_NEW:
                    break
            text = tok.decode(new, skip_special_tokens=True)
            hyps.append(text.split(STOP)[0].strip())
    elif v == "genai-int4":
        import generative_runtimes as gr
        runner = gr.GenaiRunner(path, 1)
        gr.EOS.update(eos)
        hyps = []
        for p in prompts:
            ids = tok(p, add_special_tokens=False)["input_ids"]
            new = []
            og = runner.og
            params = og.GeneratorParams(runner.model)
            params.set_search_options(do_sample=False, max_length=len(ids) + MAX_NEW)
            gen = og.Generator(runner.model, params)
            gen.append_tokens([ids])
            while len(new) < MAX_NEW and not gen.is_done():
                gen.generate_next_token()
                t = int(gen.get_next_tokens()[0])
                if t in eos:
                    break
                new.append(t)
                if STOP in tok.decode(new, skip_special_tokens=True):
                    break
            hyps.append(tok.decode(new, skip_special_tokens=True).split(STOP)[0].strip())
    else:
        raise SystemExit(f"unknown variant {v}")
    seconds = time.perf_counter() - t0
    out = hyp_file(model_dir, v, args.limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"variant": v, "path": str(path), "hypotheses": hyps, "generate_s": round(seconds, 1),
                               "build_s": round(build_s, 1), "parity_fp32_export": parity,
                               "batch": args.batch if v.startswith("ort") else (64 if v == "torch-fp32" else 1),
                               "sentences": len(hyps),
                               "affinity": sorted(os.sched_getaffinity(0)),
                               "omp": os.environ.get("OMP_NUM_THREADS"), "finished": time.strftime("%H:%M:%S")},
                              ensure_ascii=False))
    print(f"{v}: {len(hyps)} sentences in {seconds:.0f} s -> {out}", flush=True)


def report(args) -> None:
    from lepton.tasks.text_metrics import paired_text, text_scores

    model_dir = Path(args.model)
    _, refs = test_pairs(args.limit)
    runs = {}
    for v in args.variants.split(","):
        f = hyp_file(model_dir, v, args.limit)
        if f.is_file():
            runs[v] = json.loads(f.read_text())
    if "torch-fp32" not in runs:
        raise SystemExit("torch-fp32 has not run yet")
    base = runs["torch-fp32"]["hypotheses"]
    results = {}
    for v, r in runs.items():
        s = text_scores(r["hypotheses"], refs, resamples=args.resamples)
        entry = {k: m.model_dump() for k, m in s.metrics.items()}
        entry.update(signatures=s.signatures, generate_s=r["generate_s"], batch=r["batch"],
                     identical_to_torch=sum(a == b for a, b in zip(base, r["hypotheses"])) / len(base))
        if v != "torch-fp32":
            entry["paired_vs_torch_fp32"] = paired_text(refs, base, r["hypotheses"], resamples=args.resamples)
        if args.vs_ort_fp32 and v not in ("torch-fp32", "ort-fp32") and "ort-fp32" in runs:
            entry["paired_vs_ort_fp32"] = paired_text(refs, runs["ort-fp32"]["hypotheses"], r["hypotheses"],
                                                      resamples=args.resamples)
        entry["first_hypotheses"] = r["hypotheses"][:3]
        results[v] = entry
        print(f"{v}: BLEU {entry['bleu']['value']:.2f} chrF {entry['chrf']['value']:.2f}", flush=True)
    lines = ["# Translation quality of each runtime variant (fine-tuned SmolLM2-135M, Multi30k test 2016)", "",
             f"Model: `{model_dir}`; {len(refs)} sentences; greedy, at most {MAX_NEW} new tokens, cut at the first "
             "line break; the same chat prompt token ids in every runtime. CIs: percentile bootstrap over sentences "
             f"({args.resamples} resamples; BLEU recomputed from summed n-gram statistics); deltas: paired bootstrap "
             "on the same sentences, variant minus torch-fp32. Every process pinned to core 1 (`taskset -c 1`), "
             "OMP_NUM_THREADS=1, one intra-op thread.", "",
             "| variant | BLEU [95% CI] | chrF [95% CI] | BLEU delta vs torch [95% CI] | p | chrF delta [95% CI] | p "
             "| same text as torch | generation wall s (batch) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, e in results.items():
        b, c = e["bleu"], e["chrf"]
        if "paired_vs_torch_fp32" in e:
            pb, pc = e["paired_vs_torch_fp32"]["bleu"], e["paired_vs_torch_fp32"]["chrf"]
            delta = (f"{pb['delta']:+.2f} [{pb['ci95_low']:+.2f}, {pb['ci95_high']:+.2f}] | {pb['p_bootstrap']:.3f} | "
                     f"{pc['delta']:+.2f} [{pc['ci95_low']:+.2f}, {pc['ci95_high']:+.2f}] | {pc['p_bootstrap']:.3f}")
        else:
            delta = "- | - | - | -"
        lines.append(f"| {v} | {b['value']:.2f} [{b['ci95_low']:.2f}, {b['ci95_high']:.2f}] | {c['value']:.2f} "
                     f"[{c['ci95_low']:.2f}, {c['ci95_high']:.2f}] | {delta} | {e['identical_to_torch'] * 100:.0f}% "
                     f"| {e['generate_s']:.0f} ({e['batch']}) |")
    sig = next(iter(results.values()))["signatures"]
    lines += ["", f"sacrebleu: BLEU `{sig['bleu']}`, chrF `{sig['chrf']}`.", ""]
    missing = [v for v in args.variants.split(",") if v not in runs]
    if missing:
        lines += [f"Not run: {', '.join(missing)}.", ""]
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"model": str(model_dir), "sentences": len(refs),
                                                    "results": results,
                                                    "runs": {v: {k: x for k, x in r.items() if k != "hypotheses"}
                                                             for v, r in runs.items()},
                                                    "hypotheses": {v: r["hypotheses"] for v, r in runs.items()}},
                                                   indent=1, ensure_ascii=False))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("variant")
    r.add_argument("--model", required=True)
    r.add_argument("--compressed")
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--limit", type=int)
    p = sub.add_parser("report")
    p.add_argument("--model", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--vs-ort-fp32", action="store_true")
    p.add_argument("--variants", default="torch-fp32,ort-fp32,ort-int8-dynamic,ort-int8-weight,ort-int4,"
                                         "ort-int4-compressed,llamacpp-q8_0,llamacpp-q4_0,llamacpp-q4_k_m,genai-int4")
    p.add_argument("--out", default=str(HERE / "results" / "generative_quality"))
    args = ap.parse_args()
    (run_variant if args.cmd == "run" else report)(args)


if __name__ == "__main__":
    main()
