"""Structural compression on SST-2, side by side: pruning and layer dropping, each recovered by
fine-tuning, measured against the fine-tuned MiniLM-L6 in one interleaved harness run.

    python benchmarks/compression.py [--baseline runs/sst2-minilm-finetune/model] [--out runs/compression]

The baseline is the main job's model (``lepton run examples/sst2-minilm-finetune.yaml``); it is trained
first when missing. Every variant starts from it, applies its stages, then fine-tunes on the same
8,000 SST-2 rows (2 epochs, lr 1e-4). ``lepton.compare`` then measures all of them on SST-2 dev
(quality with CIs and paired tests, interleaved latency/throughput), and the table is printed and
written to ``OUT/compression.md``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import yaml

import lepton
from common import save_results
from lepton.pipeline.recipe import parse_recipe
from lepton.pipeline.report import print_table, to_markdown

ROOT = Path(__file__).resolve().parents[1]
RECOVER = {"kind": "finetune", "name": "recover", "epochs": 2, "lr": 1.0e-4, "batch_size": 32}
VARIANTS = {
    "heads50-ffn50": [
        {"kind": "prune", "name": "prune-heads", "method": "heads", "sparsity": 0.5, "scope": "global"},
        {"kind": "prune", "name": "prune-ffn", "method": "ffn", "sparsity": 0.5, "scope": "layer"},
    ],
    "drop-6to3": [{"kind": "drop_layers", "strategy": "bottom", "layers": 3}],
    # What else was tried for 6 -> 3 layers: keep alternate layers and distill from the baseline
    # (soft labels + hidden states) instead of plain recovery fine-tuning.
    "drop-6to3-distill": [
        {"kind": "drop_layers", "strategy": "alternate", "layers": 3},
        {"kind": "distill", "name": "recover", "teacher": "{baseline}", "epochs": 2, "lr": 1.0e-4,
         "batch_size": 32, "temperature": 2.0, "alpha_task": 0.5, "alpha_kd": 0.5, "alpha_hidden": 1.0},
    ],
    # The same, plus a transfer set: 24,000 more SST-2 training sentences (a different seeded
    # sample, labels unused) that the student learns from through the teacher's outputs only.
    "drop-6to3-distill-transfer": [
        {"kind": "drop_layers", "strategy": "alternate", "layers": 3},
        {"kind": "distill", "name": "recover", "teacher": "{baseline}", "epochs": 2, "lr": 1.0e-4,
         "batch_size": 32, "temperature": 2.0, "alpha_task": 0.5, "alpha_kd": 0.5, "alpha_hidden": 1.0,
         "transfer": {"path": "builtin:sst2/train",
                      "limit": 24000, "seed": 1}},
    ],
    # The same 3-layer student as above, recovered by plain fine-tuning: the fair no-distillation
    # reference for how much of the gap distillation closes (issue 5).
    "drop-6to3-alt": [{"kind": "drop_layers", "strategy": "alternate", "layers": 3}],
    # LoRA against full fine-tuning (issue 5): from the pretrained model, same data and epochs.
    "lora-r8": [{"model": "builtin:minilm-l6"},
                {"kind": "finetune", "method": "lora", "epochs": 2, "lr": 5.0e-4, "batch_size": 32,
                 "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]}}],
    # LoRA on every Linear of the encoder (query, key, value, attention output, FFN in and out) at
    # a LoRA-sized learning rate: 1.5% of the parameters trainable.
    "lora-r8-all": [{"model": "builtin:minilm-l6"},
                    {"kind": "finetune", "method": "lora", "epochs": 3, "lr": 1.0e-3, "batch_size": 32,
                     "lora": {"r": 8, "alpha": 16, "dropout": 0.1,
                              "target_modules": ["query", "key", "value", "dense"]}}],
    # Full fine-tuning for as many epochs as the LoRA variants get (the baseline has 2).
    "full-3ep": [{"model": "builtin:minilm-l6"},
                 {"kind": "finetune", "epochs": 3, "lr": 5.0e-5, "batch_size": 32}],
    "magnitude50": [{"kind": "prune", "method": "magnitude", "sparsity": 0.5, "scope": "global"}],
    "magnitude80": [{"kind": "prune", "method": "magnitude", "sparsity": 0.8, "scope": "global"}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="runs/sst2-minilm-finetune/model")
    parser.add_argument("--out", default="runs/compression")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--skip-training", action="store_true", help="reuse variants already in OUT")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more saved models to measure in the same run (e.g. runs/imdb-domain-pretrain/model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    baseline = Path(args.baseline)
    if not (baseline / "lepton.json").is_file():
        lepton.run(ROOT / "examples" / "sst2-minilm-finetune.yaml", out_dir=baseline.parent, progress=False)
    base_recipe = yaml.safe_load((ROOT / "examples" / "sst2-minilm-finetune.yaml").read_text())
    out = Path(args.out)
    models, seconds = [baseline], {}
    for name, stages in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        folder = out / name
        if not (args.skip_training and (folder / "model" / "lepton.json").is_file()):
            start_from = next((st["model"] for st in stages if "kind" not in st), str(baseline))
            stages = [st for st in stages if "kind" in st]
            own_recovery = any(st["kind"] in ("distill", "finetune") for st in stages)
            stages = [{k: (str(baseline) if v == "{baseline}" else v) for k, v in st.items()} for st in stages]
            recipe = {**base_recipe, "name": name, "model": start_from,
                      "stages": stages if own_recovery else [*stages, RECOVER],
                      "output": {"dir": str(folder)},
                      # only the artifact is needed here; compare() below does the full measurement
                      "evaluate": {"batch_sizes": [1], "latency_items": 5, "robustness": False,
                                   "memory": False, "rounds": 1, "bootstrap": 100}}
            start = time.perf_counter()
            lepton.run(parse_recipe(recipe, source=name), progress=False)
            seconds[name] = time.perf_counter() - start
        models.append(folder / "model")

    models += [Path(m) for m in args.extra]
    report = lepton.compare(models)
    print_table(report)
    text = to_markdown(report)
    if seconds:
        text += "\n## Training time per variant\n\n" + "\n".join(
            f"- {k}: {v:.0f} s (stages + recovery fine-tuning)" for k, v in seconds.items()) + "\n"
    save_results(report, out, "compression", text)


if __name__ == "__main__":
    main()
