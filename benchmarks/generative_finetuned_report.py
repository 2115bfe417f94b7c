"""Issue 15: one table from the runs of the fine-tuned SmolLM2 benchmark (quality, single-stream
speed, 8 concurrent requests, fine-tuning and compression records) with the targets' verdicts.

    python benchmarks/generative_finetuned_report.py   # writes benchmarks/results/generative_finetuned.{md,json}
"""

from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict:
    p = R / name
    return json.loads(p.read_text()) if p.is_file() else {}


def fmt(x, spec: str, dash: str = "-") -> str:
    return dash if x is None else format(x, spec)


def main() -> None:
    q = load("generative_quality.json").get("results", {})
    rt_all = load("generative_runtimes_finetuned.json")
    rt = rt_all.get("results", {})
    sv = load("serve_generate_peers.json")
    ft = load("generative_finetuned_finetune.json")
    cp = load("generative_finetuned_compress.json")
    serve_med = sv.get("median", {})
    conc = sv.get("args", {}).get("concurrency", 8)
    serve_of = {"ort-int4": serve_med.get(f"lepton, {conc} clients"),
                "llamacpp-q4_0": serve_med.get(f"llamacpp, {conc} clients")}
    if sv and "Q4_K_M" in sv.get("args", {}).get("gguf_label", ""):
        serve_of = {"ort-int4": serve_of["ort-int4"], "llamacpp-q4_k_m": serve_of.pop("llamacpp-q4_0")}
    variants = list(dict.fromkeys([*rt.keys(), *q.keys()]))
    base_rt = rt.get("torch-fp32", {})
    rows = []
    for v in variants:
        e, s = q.get(v, {}), rt.get(v, {})
        if "skipped" in s:
            s = {}
        b, c = e.get("bleu"), e.get("chrf")
        pb = e.get("paired_vs_torch_fp32", {}).get("bleu")
        pc = e.get("paired_vs_torch_fp32", {}).get("chrf")
        sp = serve_of.get(v)
        rows.append("| " + " | ".join([
            v,
            f"{b['value']:.2f} [{b['ci95_low']:.2f}, {b['ci95_high']:.2f}]" if b else "not run",
            (f"{pb['delta']:+.2f} [{pb['ci95_low']:+.2f}, {pb['ci95_high']:+.2f}] p={pb['p_bootstrap']:.3f}"
             if pb else ("-" if v == "torch-fp32" and b else "n/a")),
            f"{c['value']:.2f} [{c['ci95_low']:.2f}, {c['ci95_high']:.2f}]" if c else "not run",
            (f"{pc['delta']:+.2f} [{pc['ci95_low']:+.2f}, {pc['ci95_high']:+.2f}]" if pc else "-"),
            fmt(s.get("ttft_s") and s["ttft_s"] * 1000, ".0f"),
            fmt(s.get("tpot_s") and s["tpot_s"] * 1000, ".1f"),
            fmt(s.get("tpot_s") and 1 / s["tpot_s"], ".1f"),
            (f"{base_rt['tpot_s'] / s['tpot_s']:.2f}x" if s.get("tpot_s") and base_rt.get("tpot_s") else "-"),
            (f"{sp['tokens_per_s']:.1f}" if sp else "-"),
            (f"{sp['ttft_p50_ms']:.0f} / {sp['ttft_p95_ms']:.0f}" if sp else "-"),
            fmt(s.get("peak_rss_mb"), ".0f"),
            fmt(s.get("size_bytes") and s["size_bytes"] / 1e6, ".1f"),
            (f"{base_rt['size_bytes'] / s['size_bytes']:.2f}x"
             if s.get("size_bytes") and base_rt.get("size_bytes") else "-"),
        ]) + " |")
    # verdicts
    verdicts = []

    def verdict(name: str, ok: bool | None, why: str) -> None:
        verdicts.append(f"- **{name}**: {'not measured' if ok is None else ('met' if ok else 'missed')} ({why})")

    for lv in [v for v in ("ort-int4", "ort-int4-compressed") if v in variants]:
        e = q.get(lv, {}).get("paired_vs_torch_fp32", {}).get("bleu")
        if e:
            ok = abs(e["delta"]) <= 1 and not e["significant"]
            verdict(f"{lv}: within 1 BLEU of the fp32 model, paired difference not significant", ok,
                    f"BLEU delta vs torch-fp32 {e['delta']:+.2f} [{e['ci95_low']:+.2f}, {e['ci95_high']:+.2f}], "
                    f"p={e['p_bootstrap']:.3f}")
        else:
            verdict(f"{lv}: within 1 BLEU of the fp32 model", None, "quality not run")
        s = rt.get(lv, {})
        if s.get("size_bytes") and base_rt.get("size_bytes"):
            r = base_rt["size_bytes"] / s["size_bytes"]
            verdict(f"{lv}: at least 3x smaller", r >= 3, f"{r:.2f}x ({s['size_bytes'] / 1e6:.1f} MB vs "
                                                          f"{base_rt['size_bytes'] / 1e6:.1f} MB fp32 safetensors)")
            r = base_rt["tpot_s"] / s["tpot_s"]
            verdict(f"{lv}: TPOT at least 2.5x better than PyTorch fp32", r >= 2.5,
                    f"{s['tpot_s'] * 1000:.1f} ms vs {base_rt['tpot_s'] * 1000:.1f} ms: {r:.2f}x")
            for peer in ("llamacpp-q4_0", "llamacpp-q4_k_m"):
                p = rt.get(peer, {})
                if p.get("tpot_s"):
                    r = p["tpot_s"] / s["tpot_s"]
                    verdict(f"{lv}: at least 0.8x {peer}'s tokens/s at batch 1", r >= 0.8,
                            f"{1 / s['tpot_s']:.1f} vs {1 / p['tpot_s']:.1f} tokens/s: {r:.2f}x")
        else:
            verdict(f"{lv}: size / TPOT / batch-1 targets", None, "speed run missing")
    lep = serve_med.get(f"lepton, {conc} clients")
    peer_key = next((k for k in serve_of if k.startswith("llamacpp")), None)
    peer = serve_of.get(peer_key) if peer_key else None
    if lep and peer:
        verdict(f"ort-int4 server ahead of llama.cpp's server ({peer_key}) under {conc} concurrent requests",
                lep["tokens_per_s"] > peer["tokens_per_s"],
                f"{lep['tokens_per_s']:.1f} vs {peer['tokens_per_s']:.1f} generated tokens/s "
                f"({lep['tokens_per_s'] / peer['tokens_per_s']:.2f}x); TTFT p50 {lep['ttft_p50_ms']:.0f} vs "
                f"{peer['ttft_p50_ms']:.0f} ms")
    else:
        verdict(f"ahead of llama.cpp under {conc} concurrent requests", None, "serving run missing")
    out = {"rows": rows, "verdicts": verdicts, "finetune": ft,
           "compress": {k: v for k, v in cp.items() if k != "recovery"}
           | ({"recovery": {k: v for k, v in cp["recovery"].items() if k != "history"}} if cp else {}),
           "runtimes_setup": rt_all.get("setup"), "versions": rt_all.get("versions"),
           "serve_versions": sv.get("versions")}
    header = ("| variant | BLEU [95% CI] | BLEU vs torch-fp32 [95% CI] | chrF [95% CI] | chrF vs torch-fp32 | "
              "TTFT ms (128-token prompt) | TPOT ms | tokens/s batch 1 | TPOT vs torch | tokens/s, 8 concurrent | "
              "TTFT p50 / p95 ms, 8 concurrent | peak RSS MB | size MB | smaller |")
    (R / "generative_finetuned_table.md").write_text("\n".join([header, "|" + "---|" * 14, *rows, "", *verdicts, ""]))
    (R / "generative_finetuned_table.json").write_text(json.dumps(out, indent=1, default=str))
    print("\n".join([header, *rows, "", *verdicts]))


if __name__ == "__main__":
    main()
