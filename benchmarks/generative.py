"""SmolLM2-135M (builtin, rebuilt from Q4_1) on Multi30k English->German, side by side in one run:
zero-shot (prompted), LoRA and full fine-tuning on a stated number of training pairs; BLEU and
chrF (sacrebleu) with bootstrap CIs and paired differences on test 2016 (1,000 sentences); the
prompt is selected on val. Plus perplexity / bits per byte of a domain text (Financial
PhraseBank sentences) before and after continued pretraining, and the generation speed scenarios.

    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/generative.py

Writes benchmarks/results/generative.{md,json}; each phase's figures are saved as they finish.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lepton.data import Columns, DataSplitConfig, load_split
from lepton.data.parallel import ParallelSplitConfig, PromptSpec, load_parallel
from lepton.evaluation.generation_efficiency import GenEfficiencyConfig, measure
from lepton.models.decoder import load_generative
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.finetune import FinetuneConfig
from lepton.stages.training_decoder import train_generative
from lepton.tasks import TaskSpec
from lepton.tasks.generate import generate
from lepton.tasks.generation_settings import GenerationSettings
from lepton.tasks.prompt_encoding import encode_causal, encode_documents, render_prompt
from lepton.tasks.scoring import document_losses
from lepton.tasks.text_metrics import lm_scores, paired_lm, text_scores

log = logging.getLogger("benchmark")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LEPTON_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results"
MODEL = "builtin:smollm2-135m"
SYSTEM = "You translate English into German. Reply with the German translation only."
# Candidates for the zero-shot prompt, chosen on val by BLEU (the chat template wraps each).
PROMPTS = {
    "plain": "Translate English to German: {source}",
    "instruct": "Translate this English sentence into German.\nEnglish: {source}\nGerman:",
}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
        extras = [f for f in ("avx512f", "avx512_vnni", "amx_tile") if f in flags]
        return f"{name} ({', '.join(extras) or 'no AVX-512'})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def pairs(split: str, template: str, limit: int | None = None, seed: int = 0):
    cfg = ParallelSplitConfig(source=str(DATA / "multi30k" / f"{split}.en.gz"),
                              target=str(DATA / "multi30k" / f"{split}.de.gz"), limit=limit,
                              seed=seed if limit else None)
    return load_parallel(cfg, PromptSpec(prompt_template=template), name=split)


def chat(tok, prompts):
    return [render_prompt(tok, p, chat=True, system=SYSTEM) for p in prompts]


def translate(model, tok, prompts, settings) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    out = generate(model, tok, chat(tok, prompts), settings, max_prompt_tokens=256)
    return out, time.perf_counter() - t0


def finetune(model_tok, train_split, dev_split, method: str, args, work: Path) -> tuple[Any, dict]:
    model, tok = model_tok
    enc = encode_causal(tok, chat(tok, train_split.prompts), train_split.targets, chat=True,
                        max_prompt_tokens=128, max_target_tokens=64)
    dev = encode_causal(tok, chat(tok, dev_split.prompts), dev_split.targets, chat=True,
                        max_prompt_tokens=128, max_target_tokens=64)
    lr = args.lr_lora if method == "lora" else args.lr_full
    cfg = FinetuneConfig(method=method, epochs=args.epochs, lr=lr, batch_size=args.batch_size,
                         checkpoint_every=50, warmup=0.06)
    bundle = ModelBundle(model=model, tokenizer=tok, task=TaskSpec(kind="generation"), source=MODEL)
    ctx = RunContext(splits={}, seed=0, device="cpu", out_dir=work / f"out-{method}",
                     work_dir=work / f"work-{method}", progress=False, stage_name=method)
    summary = train_generative(bundle, cfg, ctx, enc, dev_enc=dev)
    summary.pop("evals", None)
    return bundle.model, {**summary, "lr": lr, "epochs": args.epochs, "batch_size": args.batch_size}


def save(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{results['args']['name']}.json").write_text(json.dumps(results, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-pairs", type=int, default=300)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--test", type=int, default=None)  # None: all 1,000
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr-full", type=float, default=3e-5)
    parser.add_argument("--lr-lora", type=float, default=5e-4)
    parser.add_argument("--domain-train", type=int, default=300)
    parser.add_argument("--domain-eval", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--systems", default="zero-shot,lora,full",
                        help="which translation systems this process runs (comma-separated)")
    parser.add_argument("--parts", default="translation,domain,efficiency")
    parser.add_argument("--name", default="generative", help="results file name (NAME.json)")
    parser.add_argument("--tag", default="", help="appended to the system names in the results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="lepton-gen-bench-"))
    settings = GenerationSettings(max_new_tokens=40, batch_size=64, stop=["\n"])
    results: dict[str, Any] = {
        "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "pinning": os.environ.get("BENCH_PINNING", "see command line"), "model": MODEL,
        "args": vars(args), "generation": settings.model_dump(), "system_prompt": SYSTEM,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    base = load_generative(MODEL)
    parts = args.parts.split(",")
    if "translation" in parts:
        translation(base, args, settings, results, work)
    if "domain" in parts:
        results["domain"] = domain(base, args, work)
        save(results)
    if "efficiency" in parts:  # speed scenarios of the base model
        from lepton.models import resolve_model

        eff = measure(base[0], GenEfficiencyConfig(prompt_tokens=128, output_tokens=32, offline_batch=8,
                                                   memory_context=512, repeats=2),
                      folder=Path(resolve_model(MODEL)))
        results["efficiency"] = eff.model_dump()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save(results)


def translation(base, args, settings, results: dict, work: Path) -> None:
    # 1. the prompt, selected on val by the zero-shot model's BLEU
    val_scores = {}
    for name, template in PROMPTS.items():
        val = pairs("val", template, args.val, seed=1)
        hyp, _ = translate(*base, val.prompts, settings)
        val_scores[name] = text_scores(hyp, val.targets, resamples=200).metrics["bleu"].value
        log.info("val BLEU with prompt %s: %.2f", name, val_scores[name])
    chosen = max(val_scores, key=val_scores.get)
    template = PROMPTS[chosen]
    results["prompt_selection"] = {"val_sentences": args.val, "val_bleu": val_scores, "chosen": chosen,
                                   "template": template}
    test = pairs("test_2016_flickr", template, args.test)
    train = pairs("train", template, args.train_pairs, seed=0)
    dev = pairs("val", template, args.val, seed=1)
    results["test_sentences"], results["train_pairs"] = len(test), len(train)
    results["references"] = test.targets
    results["systems"] = {}
    for name in args.systems.split(","):
        model, extra = base[0], {}
        if name != "zero-shot":
            model, summary = finetune((copy.deepcopy(base[0]), base[1]), train, dev, name, args, work)
            extra = {"training": summary}
        hyp, seconds = translate(model, base[1], test.prompts, settings)
        scores = text_scores(hyp, test.targets, resamples=args.resamples)
        results["systems"][name + args.tag] = {**{k: v.model_dump() for k, v in scores.metrics.items()},
                                    "signatures": scores.signatures, "generate_seconds": round(seconds, 1),
                                    "hypotheses": hyp, **extra}
        log.info("%s: BLEU %.2f chrF %.2f", name, scores.metrics["bleu"].value, scores.metrics["chrf"].value)
        save(results)


def domain(base, args, work: Path) -> dict:
    cfg = DataSplitConfig(path=str(DATA / "financial_phrasebank" / "sentences_50agree.csv"))
    texts = list(load_split(cfg, Columns(text="sentence"), name="domain").texts)
    random.Random(0).shuffle(texts)
    # Held-out evaluation documents, separate dev documents for keep-best, then training documents.
    held, dev_texts = texts[:args.domain_eval], texts[args.domain_eval:args.domain_eval + 50]
    train_texts = texts[args.domain_eval + 50:args.domain_eval + 50 + args.domain_train]
    model, tok = copy.deepcopy(base[0]), base[1]
    before = document_losses(model, tok, held, max_length=128)
    enc, _ = encode_documents(tok, train_texts, max_length=128)
    dev_enc, _ = encode_documents(tok, dev_texts, max_length=128)
    cfg_t = FinetuneConfig(method="full", epochs=1, lr=args.lr_full, batch_size=args.batch_size,
                           checkpoint_every=50)
    bundle = ModelBundle(model=model, tokenizer=tok, task=TaskSpec(kind="language_modeling"), source=MODEL)
    ctx = RunContext(splits={}, seed=0, device="cpu", out_dir=work / "out-lm", work_dir=work / "work-lm",
                     progress=False, stage_name="pretrain")
    summary = train_generative(bundle, cfg_t, ctx, enc, dev_enc=dev_enc, label="pretrain")
    summary.pop("evals", None)
    after = document_losses(bundle.model, tok, held, max_length=128)
    return {"text": "Financial PhraseBank sentences (50% agreement), seeded shuffle",
            "train_documents": len(train_texts), "eval_documents": len(held),
            "dev_documents": len(dev_texts),
            "before": {k: v.model_dump() for k, v in lm_scores(before, resamples=args.resamples).items()},
            "after": {k: v.model_dump() for k, v in lm_scores(after, resamples=args.resamples).items()},
            "paired_after_minus_before": paired_lm(before, after, resamples=args.resamples),
            "training": summary}


if __name__ == "__main__":
    main()
