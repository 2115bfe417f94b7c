"""Issue 28's quality side for the base model: SmolLM2-135M's exported graph at 4 bits by each
weight-only algorithm Lepton offers (round to nearest, HQQ, AWQ through NNCF), scored by bits per
byte on held-out text against the fp32 graph, in one run.

    python benchmarks/int4_methods.py [--out runs/int4-methods] [--docs 200] [--calibration 128]

- Calibration (AWQ only): the first ``--calibration`` AG News training descriptions (the built-in
  10k-description subset under ``$LEPTON_DATA``), up to 256 tokens each.
- Held-out text, never calibrated on: AG News test descriptions (the calibration's domain) and
  Financial PhraseBank sentences (another domain), ``--docs`` of each after a seeded shuffle.
- Bits per byte with 95% bootstrap CIs per variant, and the paired difference against the fp32
  graph on the same documents (bootstrap over documents); size of the graph folder; the seconds
  each quantization took.

Writes ``OUT/int4_methods.{md,json}``; copy them to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from lepton.evaluation.environment import describe, fingerprint
from lepton.models import resolve_model
from lepton.models.decoder import load_generative
from lepton.runtimes.ort_decoder import OrtCausalLM
from lepton.stages.export.onnx_decoder import export_decoder
from lepton.stages.quantize.weight_only import quantize_onnx_weights
from lepton.tasks.scoring import document_losses
from lepton.tasks.text_metrics import lm_scores, paired_lm

DATA = Path(os.environ.get("LEPTON_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODEL = "builtin:smollm2-135m"
log = logging.getLogger("benchmark")


def texts(args: argparse.Namespace) -> dict[str, list[str]]:
    with open(DATA / "ag_news" / "train_subset_10k_description_only.tsv", newline="") as fh:
        calibration = [row[0] for row in csv.reader(fh, delimiter="\t") if row][: args.calibration]
    with open(DATA / "ag_news" / "test.csv", newline="") as fh:
        news = [row[2] for row in csv.reader(fh) if len(row) == 3]
    with open(DATA / "financial_phrasebank" / "sentences_50agree.csv", newline="", encoding="latin-1") as fh:
        reader = csv.DictReader(fh)
        column = next(c for c in (reader.fieldnames or []) if c.lower() in ("sentence", "text"))
        finance = [row[column] for row in reader]
    for group in (news, finance):
        random.Random(0).shuffle(group)
    return {"calibration": calibration, "ag_news_test": news[: args.docs], "financial_phrasebank": finance[: args.docs]}


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data")) / 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/int4-methods")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--variants", default="int4-rtn,int4-hqq,int4-awq",
                        help="comma-separated: int4-rtn, int4-hqq, int4-awq, int4-rtn-float-table, "
                             "int4-awq-float-table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = fingerprint()
    log.info("machine: %s", describe(env))
    data = texts(args)
    _, tokenizer = load_generative(MODEL)
    fp32 = out / "fp32"
    if not (fp32 / "model.onnx").is_file():
        export_decoder(resolve_model(MODEL), fp32, backend="torch", last_logits_only=True)
    calibration = [tokenizer(t)["input_ids"][:256] for t in data["calibration"]]
    settings = {"block_size": args.block_size, "bits": 4, "accuracy_level": 4}
    every: dict[str, dict[str, Any]] = {
        "int4-rtn": {"algorithm": "default", "embeddings": True},
        "int4-hqq": {"algorithm": "hqq", "embeddings": False},
        "int4-awq": {"algorithm": "awq", "embeddings": True, "calibration": calibration},
        # the same MatMuls with the embedding table left in float (HQQ's table always is)
        "int4-rtn-float-table": {"algorithm": "default", "embeddings": False},
        "int4-awq-float-table": {"algorithm": "awq", "embeddings": False, "calibration": calibration},
    }
    variants = {k: every[k] for k in args.variants.split(",")}
    built: dict[str, dict[str, Any]] = {"fp32": {"seconds": 0.0, "size_mb": folder_mb(fp32)}}
    for name, extra in variants.items():
        t0 = time.perf_counter()
        info = quantize_onnx_weights(fp32, out / name, **settings, **extra)
        built[name] = {"seconds": round(time.perf_counter() - t0, 1), "size_mb": folder_mb(out / name),
                       "ops": info["ops"], "calibration": info.get("calibration")}
        log.info("%s: %s", name, built[name])

    results: dict[str, Any] = {"machine": describe(env), "model": MODEL, "settings": settings,
                               "calibration_texts": len(calibration), "docs": args.docs, "variants": built,
                               "scores": {}}
    for corpus in ("ag_news_test", "financial_phrasebank"):
        losses = {}
        for name in built:
            t0 = time.perf_counter()
            losses[name] = document_losses(OrtCausalLM(out / name), tokenizer, data[corpus], max_length=128)
            log.info("%s on %s: %.0f s", name, corpus, time.perf_counter() - t0)
        rows = {}
        for name, loss in losses.items():
            scores = {k: v.model_dump() for k, v in lm_scores(loss, resamples=args.resamples).items()}
            paired = None if name == "fp32" else paired_lm(losses["fp32"], loss, resamples=args.resamples)
            rows[name] = {"scores": scores, "paired_vs_fp32": paired}
        results["scores"][corpus] = rows
        (out / "int4_methods.json").write_text(json.dumps(results, indent=2, default=str))
    write_markdown(results, out / "int4_methods.md")
    print(f"written: {out / 'int4_methods.md'}")


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = ["# SmolLM2-135M at 4 bits: round to nearest, HQQ, AWQ (bits per byte on held-out text)", "",
             f"Machine: {results['machine']}. Model `{results['model']}`; every variant is the same exported graph "
             f"quantized with `{json.dumps(results['settings'])}`; AWQ calibrated on "
             f"{results['calibration_texts']} AG News training descriptions (never scored). "
             f"{results['docs']} held-out documents per corpus, 128-token windows.", ""]
    for corpus, rows in results["scores"].items():
        lines += [f"## {corpus}", "", "| variant | bits per byte [95% CI] | vs fp32 [95% CI] | relative | p | size MB |"
                  " quantize s |", "|---|---|---|---|---|---|---|"]
        base = rows["fp32"]["scores"]["bits_per_byte"]["value"]
        for name, row in rows.items():
            bpb = row["scores"]["bits_per_byte"]
            paired = row["paired_vs_fp32"] or {}
            delta = paired.get("bits_per_byte") or {}
            d = (f"{delta['delta']:+.4f} [{delta['ci95_low']:+.4f}, {delta['ci95_high']:+.4f}]"
                 if delta else "-")
            rel = f"{100 * (bpb['value'] / base - 1):+.2f}%" if name != "fp32" else "-"
            p = f"{delta['p_bootstrap']:.3f}" if delta and delta.get("p_bootstrap") is not None else "-"
            v = results["variants"][name]
            lines.append(f"| {name} | {bpb['value']:.4f} [{bpb['ci95_low']:.4f}, {bpb['ci95_high']:.4f}] | {d} | "
                         f"{rel} | {p} | {v['size_mb']} | {v['seconds']} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
