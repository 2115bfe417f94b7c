"""Issue 25 on the main job's models: why each variant decides (attribution faithfulness, agreement
with the baseline's reasons) and whom its errors fall on (slices, counterfactual identity swaps),
for PyTorch FP32, ONNX INT8 and a search-style small model, measured side by side in one run.

    python benchmarks/why_whom.py [--out runs/why-whom] [--train-limit 8000]

Steps, one process, one machine:

1. The main job's stages (examples/sst2-minilm.yaml: fine-tune MiniLM on a seeded SST-2 train
   sample, export, dynamic INT8), its work folder kept for the fine-tuned PyTorch snapshot.
2. The search's best kind of model (docs/search.md: 4 of 6 layers, half the FFN neurons pruned,
   recovered by distillation from the fine-tuned model, exported, dynamic INT8), built from that
   snapshot with one epoch of recovery, as the search trained it.
3. ``lepton.compare`` of the three on SST-2 dev with the evaluation at its default settings
   (attributions, slices and counterfactual fairness on), the PyTorch model the baseline; its wall
   time and the seconds the three added parts took.

Writes ``benchmarks/results/why_whom.md`` and ``.json``. Training and the runs' own evaluations use
cheap settings: only step 3's measurements are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHEAP = {"batch_sizes": [1], "latency_items": 5, "rounds": 1, "warmup": 0, "throughput_batches": 1,
         "memory": False, "robustness": False, "bootstrap": 100,
         "explain": {"enabled": False}, "fairness": {"counterfactual": False}, "slice_quality": False}
TASK = {"kind": "sequence_classification", "text": "sentence", "label": "label",
        "labels": {"0": "negative", "1": "positive"}, "max_length": 128}


def main_job(train_limit: int, out: Path) -> dict[str, Any]:
    return {"schema_version": 1, "name": "sst2-minilm", "model": "builtin:minilm-l6", "task": TASK,
            "data": {"train": {"path": "builtin:sst2/train", "limit": train_limit, "seed": 0},
                     "dev": {"path": "builtin:sst2/dev"}},
            "stages": [{"kind": "finetune", "name": "pytorch-fp32", "epochs": 2, "lr": 5e-5, "batch_size": 32},
                       {"kind": "export", "name": "onnx-fp32", "optimize": True},
                       {"kind": "quantize", "name": "onnx-int8", "method": "dynamic_int8", "per_channel": True}],
            "evaluate": CHEAP, "output": {"dir": str(out)}, "seed": 0}


def small_model(teacher: Path, train_limit: int, out: Path) -> dict[str, Any]:
    return {"schema_version": 1, "name": "sst2-minilm-search-best", "model": str(teacher), "task": TASK,
            "data": {"train": {"path": "builtin:sst2/train", "limit": train_limit, "seed": 0},
                     "dev": {"path": "builtin:sst2/dev"}},
            "stages": [{"kind": "drop_layers", "strategy": "alternate", "layers": 2},
                       {"kind": "prune", "name": "prune-ffn", "method": "ffn", "sparsity": 0.5, "scope": "layer",
                        "importance": "gradient", "batches": 8},
                       {"kind": "distill", "name": "recover", "teacher": str(teacher), "epochs": 1, "lr": 1e-4,
                        "batch_size": 32, "temperature": 2.0, "alpha_task": 0.5, "alpha_kd": 0.5,
                        "alpha_hidden": 1.0},
                       {"kind": "export", "optimize": True},
                       {"kind": "quantize", "name": "search-best-int8", "method": "dynamic_int8",
                        "per_channel": True}],
            "evaluate": CHEAP, "output": {"dir": str(out)}, "seed": 0}


def build(out: Path, train_limit: int) -> tuple[Path, Path, Path]:
    from lepton.pipeline import api
    from lepton.pipeline.recipe import parse_recipe

    main_out, small_out = out / "main", out / "small"
    if not (main_out / "model" / "lepton.json").is_file():
        api.run(parse_recipe(main_job(train_limit, main_out)), force=True, keep_work=True, progress=False)
    fp32 = next((main_out / "work").glob("stage-0-*")) / "snapshot"
    if not (small_out / "model" / "lepton.json").is_file():
        api.run(parse_recipe(small_model(fp32, train_limit, small_out)), force=True, progress=False)
    return fp32, main_out / "model", small_out / "model"


def _m(metric: Any) -> str:
    return "-" if metric is None else f"{metric.value:.3f} [{metric.ci95_low:.3f}, {metric.ci95_high:.3f}]"


def _d(delta: Any) -> str:
    if delta is None:
        return "-"
    return f"{delta.delta:+.3f} [{delta.ci95_low:+.3f}, {delta.ci95_high:+.3f}]{' *' if delta.significant else ''}"


def tables(report: Any, names: dict[str, str]) -> list[str]:
    lines = ["## Why: attributions (occlusion, the baseline's predicted class)", "",
             "| variant | comprehensiveness | random | sufficiency | random | top-20% overlap with FP32 | "
             "Spearman with FP32 | s |", "|---|---|---|---|---|---|---|---|"]
    for card in report.variants:
        e = card.explanation
        if e is None:
            continue
        f, a = e.faithfulness, e.agreement
        lines.append(f"| {names[card.name]} | {_m(f.comprehensiveness)} | {_m(f.random_comprehensiveness)} | "
                     f"{_m(f.sufficiency)} | {_m(f.random_sufficiency)} | {_m(a.top_k_overlap) if a else '-'} | "
                     f"{_m(a.spearman) if a else '-'} | {e.seconds:.1f} |")
    lines += ["", "## Whom: counterfactual identity swaps", "",
              "| variant | group | rewritten | flip rate | Δ flips vs FP32 | prob. shift | Δ shift vs FP32 |",
              "|---|---|---|---|---|---|---|"]
    for card in report.variants:
        for g in (card.fairness.groups if card.fairness else []):
            lines.append(f"| {names[card.name]} | {g.group} | {g.n_rewritten} | {_m(g.flip_rate)} | "
                         f"{_d(g.flip_delta)} | {_m(g.prob_shift)} | {_d(g.shift_delta)} |")
    lines += ["", "## Whom: slices (accuracy, Δ against FP32 paired on the slice)", "",
              "| variant | slice | n | accuracy [95% CI] | Δ vs FP32 |", "|---|---|---|---|---|"]
    for card in report.variants:
        for r in (card.slices.rows if card.slices else []):
            delta = "-" if r.delta is None else (f"{100 * r.delta:+.2f} [{100 * r.delta_ci95_low:+.2f}, "
                                                 f"{100 * r.delta_ci95_high:+.2f}]{' *' if r.significant else ''}")
            lines.append(f"| {names[card.name]} | {r.by}={r.slice} | {r.n} | {100 * r.value:.2f} "
                         f"[{100 * r.ci95_low:.2f}, {100 * r.ci95_high:.2f}] | {delta} |")
    lines += ["", "Verdicts (slices): " + "; ".join(f"{names[c.name]}: {c.slices.verdict}"
                                                     for c in report.variants if c.slices)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "why-whom"))
    parser.add_argument("--train-limit", type=int, default=8000)
    args = parser.parse_args()
    from lepton.evaluation.environment import describe, fingerprint
    from lepton.pipeline import api
    from lepton.pipeline.recipe import EvaluateConfig

    out = Path(args.out)
    fp32, int8, small = build(out, args.train_limit)
    names = {}
    t0 = time.perf_counter()
    report = api.compare([fp32, int8, small], config=EvaluateConfig(batch_sizes=[1, 32]))
    wall = time.perf_counter() - t0
    for card, label in zip(report.variants, ("PyTorch FP32", "ONNX INT8 (main job)", "search-style small INT8")):
        names[card.name] = label
    added = {names[c.name]: {"explain": c.explanation.seconds if c.explanation else 0.0,
                             "fairness": c.fairness.seconds if c.fairness else 0.0,
                             "slices": c.slices.seconds if c.slices else 0.0} for c in report.variants}
    total_added = sum(sum(v.values()) for v in added.values())
    machine = describe(fingerprint(0))
    lines = ["# Why and whom: the main job's models side by side", "",
             f"`python benchmarks/why_whom.py` on {machine}; one run. Baseline: the fine-tuned PyTorch FP32 model; "
             "SST-2 dev (872 sentences); `lepton.compare` at default evaluation settings. `*`: the paired 95% CI "
             "excludes 0.", "",
             "| variant | accuracy | size MB |", "|---|---|---|"]
    for card in report.variants:
        q = card.quality.metrics[card.quality.headline]
        lines.append(f"| {names[card.name]} | {100 * q.value:.2f} [{100 * q.ci95_low:.2f}, {100 * q.ci95_high:.2f}] "
                     f"| {card.efficiency.size_mb:.1f} |")
    lines += ["", f"Cost: the comparison took {wall:.0f} s; attributions, fairness and slices took {total_added:.0f} s "
              f"of it, {100 * total_added / max(wall - total_added, 1e-9):.1f}% on top of the rest of the evaluation "
              f"({wall - total_added:.0f} s). Per variant: " + "; ".join(
                  f"{k}: explain {v['explain']:.1f} s, fairness {v['fairness']:.1f} s, slices {v['slices']:.2f} s"
                  for k, v in added.items()) + ".", ""]
    lines += tables(report, names)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "why_whom.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "why_whom.json").write_text(json.dumps(
        {"machine": machine, "wall_s": wall, "added_s": added, "names": names,
         "report": report.model_dump(mode="json")}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
