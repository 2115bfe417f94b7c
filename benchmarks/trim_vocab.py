"""Vocabulary trimming and 8-bit embeddings on SST-2, side by side in one harness run: the
fine-tuned MiniLM-L6 (PyTorch FP32, the baseline), its ONNX Runtime dynamic INT8 artifact without
and with ``trim_vocab`` + ``quantize_embeddings`` (and with trimming alone), the same on PyTorch
(dynamic INT8), and the full-stack recipe's compressed model quantized to static INT8 without and
with them.

    python benchmarks/trim_vocab.py --baseline runs/sst2-minilm-finetune/model --out runs/trim_vocab
        [--full-stack runs/trim_vocab/full-stack-torch/model] [--threads 1] [--skip-build]

The full-stack model is the PyTorch model of ``examples/sst2-minilm-full-stack.yaml`` just before
its export: without ``--full-stack`` this script runs that recipe's stages after the fine-tune
(drop_layers, distill, prune, recover; the fine-tune is ``--baseline`` itself, also the teacher),
which takes about 10 minutes on one core. Every variant is made by Lepton's stages from those two
PyTorch models and saved as an artifact; ``lepton.compare`` then measures all of them on SST-2 dev
(accuracy with 95% CIs and paired tests against the baseline, batch-1 latency on real inputs and
padded to 128 tokens, batch-32 throughput, size on disk). The table and the issue's targets,
checked on these figures, go to ``OUT/trim_vocab.md`` and ``OUT/trim_vocab.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import yaml

import lepton
from common import save_results, stage
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.evaluation.environment import describe, fingerprint
from lepton.pipeline.api import compare
from lepton.pipeline.artifact import load_bundle, save_artifact
from lepton.pipeline.recipe import EvaluateConfig, parse_recipe
from lepton.pipeline.report import print_table, to_markdown
from lepton.runtimes.bundle import RunContext

ROOT = Path(__file__).resolve().parents[1]
# The built-in SST-2 (GLUE train and dev, shipped in the package): runs from a fresh clone.
SST2 = "builtin:sst2"
log = logging.getLogger("benchmark")

# As examples/sst2-minilm-small.yaml: the pieces of the training sample, its characters, specials.
TRIM = {"kind": "trim_vocab", "splits": ["train"], "keep_characters": "seen"}
SMALL = [TRIM, {"kind": "quantize_embeddings"}]
EXPORT = {"kind": "export", "optimize": True, "atol": 1e-3}
DYNAMIC = {"kind": "quantize", "method": "dynamic_int8", "per_channel": True}
STATIC = {"kind": "quantize", "method": "static_int8", "calibration": "minmax", "calibration_items": 128,
          "per_channel": True}
# name -> (starting model, stages); "fp32" is --baseline, "full" the full-stack PyTorch model
VARIANTS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "ort-dyn-int8": ("fp32", [EXPORT, DYNAMIC]),
    # per-row 8-bit tables alone / trimming alone (ORT then quantizes the tables per tensor)
    "ort-dyn-int8-emb8": ("fp32", [SMALL[1], EXPORT, DYNAMIC]),
    "ort-dyn-int8-trim": ("fp32", [TRIM, EXPORT, DYNAMIC]),
    "ort-dyn-int8-small": ("fp32", [*SMALL, EXPORT, DYNAMIC]),
    # every single-character piece kept (keep_characters: all, the stage's default)
    "ort-dyn-int8-small-allchars": ("fp32", [{**TRIM, "keep_characters": "all"}, SMALL[1], EXPORT, DYNAMIC]),
    "pytorch-dyn-int8-small": ("fp32", [*SMALL, {"kind": "quantize", "method": "dynamic_int8"}]),
    "full-stack-static-int8": ("full", [EXPORT, STATIC]),
    "full-stack-static-int8-small": ("full", [*SMALL, EXPORT, STATIC]),
    "full-stack-dyn-int8-small": ("full", [*SMALL, EXPORT, DYNAMIC]),
}


def full_stack_torch(baseline: Path, out: Path) -> Path:
    """Run the full-stack recipe's compression stages on ``baseline`` (its fine-tune), up to its
    export; returns the saved PyTorch model."""
    tree = yaml.safe_load((ROOT / "examples" / "sst2-minilm-full-stack.yaml").read_text())
    kept = [s for s in tree["stages"][1:] if s["kind"] not in ("export", "quantize")]
    for s in kept:
        if s.get("teacher") == "finetune":
            s["teacher"] = str(baseline)
    tree.update(model=str(baseline), stages=kept, output={"dir": str(out)},
                evaluate={"batch_sizes": [32], "latency_items": 5, "rounds": 1, "robustness": False,
                          "memory": False, "throughput_batches": 1, "fixed_length": None})
    recipe = parse_recipe(tree, source="examples/sst2-minilm-full-stack.yaml (compression stages)")
    lepton.run(recipe, out_dir=out, progress=False)
    return out / "model"


def targets(report: Any) -> list[str]:
    """The issue's targets, checked on this run's figures."""
    cards = {c.name: c for c in report.variants}
    base = cards[report.baseline]
    lines = []
    for name, goal in (("ort-dyn-int8-small", 6.0), ("ort-dyn-int8-small-allchars", 6.0),
                       ("pytorch-dyn-int8-small", 6.0), ("full-stack-static-int8-small", 12.0),
                       ("full-stack-dyn-int8-small", 12.0)):
        card = cards.get(name)
        if card is None or card.comparison is None:
            continue
        c = card.comparison
        ratio = base.efficiency.size_mb / card.efficiency.size_mb
        within = -c.delta * 100 <= 1.0 and not (c.significant and c.delta < 0)
        met = "met" if ratio >= goal else "NOT met"
        lines.append(f"{name}: {card.efficiency.size_mb:.2f} MB, {ratio:.2f}x smaller than the baseline "
                     f"({base.efficiency.size_mb:.1f} MB; target >= {goal:g}x: {met}); "
                     f"accuracy {100 * c.delta:+.2f} points [{100 * c.ci95_low:+.2f}, {100 * c.ci95_high:+.2f}], "
                     f"McNemar p {c.p_mcnemar if c.p_mcnemar is None else round(c.p_mcnemar, 3)} "
                     f"({c.verdict}; within 1 point and not significantly worse: {'yes' if within else 'NO'})")
    return lines


def stage_notes(out: Path, names: list[str]) -> list[str]:
    """What trim_vocab and quantize_embeddings reported while making each variant."""
    lines = []
    for name in names:
        manifest = lepton.load(out / name).manifest
        for record in manifest.get("history", []):
            s = record.get("summary", {})
            if record["kind"] == "trim_vocab" and "changed" in s:
                ch = s["changed"]
                lines.append(f"{name}: trim_vocab kept {s['vocab_after']} of {s['vocab_before']} pieces "
                             f"({s['kept']['from_data']} from data.train, {s['kept'].get('characters', 0)} "
                             f"single characters, specials); {100 * ch['share_changed']:.2f}% of dev tokens "
                             f"({ch['tokens_changed']} of {ch['tokens']}) in words split differently, "
                             f"{ch['words_now_unknown']} words newly [UNK]")
            if record["kind"] == "quantize_embeddings":
                errs = ", ".join(f"{k.split('.')[-1]} {v['max_abs_error']:.2e}" for k, v in s["tables"].items())
                lines.append(f"{name}: quantize_embeddings max |table error| {errs}; max |logit change| "
                             f"{s['vs_input']['max_abs_diff']:.3g} on {s['vs_input']['compared']} dev inputs")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="runs/sst2-minilm-finetune/model")
    parser.add_argument("--out", default="runs/trim_vocab")
    parser.add_argument("--full-stack", default=None, help="the full-stack PyTorch model (made when absent)")
    parser.add_argument("--latency-items", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads while timing")
    parser.add_argument("--skip-build", action="store_true", help="reuse variants already in OUT")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    baseline, out = Path(args.baseline), Path(args.out)
    log.info("machine: %s", describe(fingerprint()))
    full = Path(args.full_stack) if args.full_stack else out / "full-stack-torch" / "model"
    if not (full / "lepton.json").is_file():
        log.info("making the full-stack PyTorch model in %s", full.parent)
        full = full_stack_torch(baseline, full.parent)
    columns = Columns(text="sentence", label="label")
    dev_cfg = DataSplitConfig(path=f"{SST2}/dev")
    # The recipe's own training sample: the pieces trim_vocab keeps are those the model trained on.
    splits = {"train": load_split(DataSplitConfig(path=f"{SST2}/train", limit=8000, seed=0), columns,
                                  name="train"),
              "dev": load_split(dev_cfg, columns, name="dev")}
    seconds: dict[str, float] = {}
    for name, (source, stages) in VARIANTS.items():
        if args.skip_build and (out / name / "lepton.json").is_file():
            continue
        ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=out, work_dir=out / "work" / name,
                         progress=False, columns=columns)
        bundle = load_bundle(baseline if source == "fp32" else full)  # fresh: stages change it in place
        t0 = time.perf_counter()
        for i, settings in enumerate(stages):
            ctx.stage_index = i
            bundle = stage(bundle, ctx, f"{settings['kind']}", **settings)
        seconds[name] = time.perf_counter() - t0
        save_artifact(bundle, out / name)
    models = [baseline, full] + [out / n for n in VARIANTS]
    config = EvaluateConfig(latency_items=args.latency_items, rounds=args.rounds, robustness=False,
                            threads=args.threads, memory=False, batch_sizes=[1, 32], fixed_length=128)
    report = compare(models, dev_cfg, text="sentence", label="label", config=config)
    print_table(report)
    checks = targets(report)
    notes = stage_notes(out, list(VARIANTS))
    for line in checks + notes:
        print(line)
    text = (to_markdown(report) + "\n## Targets (this run)\n\n" + "\n".join(f"- {c}" for c in checks)
            + "\n\n## What the stages reported\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    if seconds:
        text += "\n## Build time per variant\n\n" + "\n".join(f"- {k}: {v:.1f} s" for k, v in seconds.items()) + "\n"
    save_results(report, out, "trim_vocab", text)


if __name__ == "__main__":
    main()
