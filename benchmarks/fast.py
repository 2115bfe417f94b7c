"""Issue 27's measurement: the fast SST-2 recipe trained at full size, against the full-training
baseline, the main job's INT8 of that baseline and Optimum's default INT8 of it, in one
interleaved harness run on all 872 SST-2 dev sentences.

    python benchmarks/fast.py [--run runs/sst2-minilm-fast] [--out runs/fast-bench]
        [--skip-run] [--optimum-python /tmp/optimum-venv/bin/python] [--rounds 3] [--threads N]

1. ``lepton run examples/sst2-minilm-fast.yaml`` (unless ``--skip-run``), keeping its work folder:
   stage 0 (finetune, the whole SST-2 train split less the carved validation tenth that keep-best
   chooses on) is the baseline; the run's other variants are the fast model's neighbours.
   Two more neighbours are built from the run's recovered 3-layer model with the same finishing
   stages but another vocabulary choice: ``no-trim`` (export, static INT8) and ``trim-all`` (every
   piece the training data uses, ``min_count: 1``), so the table shows what the trimming costs.
2. The main job's INT8 of that baseline: the stages of ``examples/sst2-minilm.yaml`` after its
   finetune (export with the transformer optimizer, dynamic INT8 per channel).
3. Optimum's stock dynamic INT8 of the same baseline, made in its own environment
   (``benchmarks/optimum_peer.py``; left out, and the table says so, when that environment is missing).
4. ``lepton.compare`` on all of dev: accuracy with 95% CIs and paired tests against the baseline,
   batch-1 latency on real inputs, batch-32 throughput, size; the issue's targets checked on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import lepton
from common import save_results, stage
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.evaluation.environment import describe, fingerprint
from lepton.pipeline.api import compare
from lepton.pipeline.artifact import load_bundle, save_artifact
from lepton.pipeline.recipe import EvaluateConfig
from lepton.pipeline.report import print_table, to_markdown
from lepton.runtimes.bundle import RunContext
from quantization import optimum_peer, wrap_onnx

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "sst2-minilm-fast.yaml"
log = logging.getLogger("benchmark")

# Stage folders of the run's work directory measured beside the final model (its neighbours).
NEIGHBOURS = {"recover-torch": "stage-4-distill"}
STATIC = {"kind": "quantize", "method": "static_int8", "calibration": "minmax", "calibration_items": 128,
          "per_channel": True}
TRIM = [{"kind": "trim_vocab", "splits": ["train"], "min_count": 10, "keep_characters": "seen"},
        {"kind": "quantize_embeddings"}]
EXPORT = {"kind": "export", "optimize": True, "atol": 1e-3, "parity_items": 64}
# Neighbours: the recipe's finishing stages on another of the run's snapshots, or another vocabulary
# choice on the recovered model; each shows what one step of the recipe buys or costs.
FINISHES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "no-trim": ("stage-4-distill", [EXPORT, STATIC]),  # recovered, full vocabulary (fp32 tables)
    "trim-all": ("stage-4-distill", [{**TRIM[0], "min_count": 1}, TRIM[1], EXPORT, STATIC]),
    "no-recover": ("stage-3-prune", [*TRIM, EXPORT, STATIC]),  # pruned, not recovered
    "no-prune": ("stage-2-distill", [*TRIM, EXPORT, STATIC]),  # 3 distilled layers, whole FFN
}


def build_finishes(work: Path, out: Path) -> dict[str, float]:
    """The ``FINISHES`` variants from the run's snapshots, on the recipe's own splits (the same
    carve, so trimming counts the same training rows); seconds each."""
    from lepton.pipeline.api import load_splits
    from lepton.pipeline.recipe import load_recipe

    splits = load_splits(load_recipe(RECIPE))
    seconds = {}
    for name, (source, stages) in FINISHES.items():
        if (out / name / "lepton.json").is_file():
            continue
        ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=out, work_dir=out / "work" / name,
                         progress=False)
        t0, bundle = time.perf_counter(), load_bundle(work / source / "snapshot")
        for i, settings in enumerate(stages):
            bundle = stage(bundle, ctx, f"{name}-{i}-{settings['kind']}", **settings)
        save_artifact(bundle, out / name)
        seconds[f"neighbour {name}"] = time.perf_counter() - t0
    return seconds


def targets(report: Any) -> list[str]:
    """The issue's targets on this run's figures (b1 = batch 1 on real inputs, p50)."""
    cards = {c.name: c for c in report.variants}
    base = cards[report.baseline]
    acc = {n: c.quality.metrics["accuracy"].value for n, c in cards.items()}
    b1 = {n: c.efficiency.latency_ms["b1_real"].p50 for n, c in cards.items()}
    size = {n: c.efficiency.size_mb for n, c in cards.items()}
    delta = cards["fast"].comparison
    drop = 100 * (acc[base.name] - acc["fast"])
    significant = bool(delta and delta.significant)
    lines = [
        f"accuracy: fast {100 * acc['fast']:.2f} vs baseline {100 * acc[base.name]:.2f} ({-drop:+.2f} points"
        + (f", paired 95% CI [{100 * delta.ci95_low:+.2f}, {100 * delta.ci95_high:+.2f}], McNemar p "
           f"{delta.p_mcnemar:.3f}" if delta and delta.p_mcnemar is not None else "")
        + f", {'significant' if significant else 'not significant'}); target within 1 point and not "
        f"significant: {'met' if drop <= 1.0 and not significant else 'NOT met'}",
        f"speed: {b1[base.name] / b1['fast']:.2f}x faster than PyTorch fp32 eager at b1 "
        f"({b1['fast']:.2f} vs {b1[base.name]:.2f} ms); target >= 10x: "
        f"{'met' if b1[base.name] / b1['fast'] >= 10 else 'NOT met'}",
        f"size: {size[base.name] / size['fast']:.2f}x smaller ({size['fast']:.2f} vs {size[base.name]:.1f} MB); "
        f"target >= 12x: {'met' if size[base.name] / size['fast'] >= 12 else 'NOT met'}",
    ]
    if "optimum-dyn-int8" in cards:
        ratio = b1["optimum-dyn-int8"] / b1["fast"]
        lines.append(f"vs Optimum's default INT8: {ratio:.2f}x faster at b1 (Optimum {b1['optimum-dyn-int8']:.2f} ms, "
                     f"accuracy {100 * acc['optimum-dyn-int8']:.2f}); target >= 1.5x: "
                     f"{'met' if ratio >= 1.5 else 'NOT met'}")
    else:
        lines.append("vs Optimum's default INT8: not measured (no Optimum environment; see benchmarks/optimum_peer.py)")
    return lines


def choosing_split_accuracy(models: list[Path]) -> dict[str, float]:
    """Accuracy of each model on the split that chose (the recipe's carved validation tenth of train):
    what selection saw, beside what dev scores."""
    from lepton import load
    from lepton.pipeline.api import load_splits
    from lepton.pipeline.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    val = load_splits(recipe)["validation"]
    names = recipe.task.labels or {}
    gold = [names.get(str(y), str(y)) for y in val.labels]
    out = {}
    for path in models:
        pred = [p["label"] for p in load(path).predict(list(val.texts), batch_size=64)]
        out[path.name] = sum(a == b for a, b in zip(pred, gold)) / len(gold)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/sst2-minilm-fast", help="the fast recipe's output folder")
    parser.add_argument("--out", default="runs/fast-bench")
    parser.add_argument("--skip-run", action="store_true", help="reuse the run already in --run")
    parser.add_argument("--optimum-python", default="/tmp/optimum-venv/bin/python")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-items", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS (a fresh process per variant)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run, out = Path(args.run), Path(args.out)
    env = fingerprint()
    log.info("machine: %s", describe(env))
    timings: dict[str, float] = {}
    if not args.skip_run:
        t0 = time.perf_counter()
        lepton.run(RECIPE, out_dir=run, keep_work=True, progress=False)
        timings["lepton run examples/sst2-minilm-fast.yaml (train, build, measure 9 variants)"] = \
            time.perf_counter() - t0
    work = run / "work"
    baseline = work / "stage-0-finetune" / "snapshot"
    if not (baseline / "lepton.json").is_file():
        raise SystemExit(f"{baseline}: no baseline snapshot; run without --skip-run (the run keeps its work folder)")

    # The main job's INT8 of the full-training baseline (examples/sst2-minilm.yaml's later stages).
    if not (out / "main-job-int8" / "lepton.json").is_file():
        columns = Columns(text="sentence", label="label")
        splits = {"train": load_split(DataSplitConfig(path="builtin:sst2/train", limit=4000, seed=0), columns,
                                      name="train"),
                  "dev": load_split(DataSplitConfig(path="builtin:sst2/dev"), columns, name="dev")}
        ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=out, work_dir=out / "work", progress=False)
        t0 = time.perf_counter()
        onnx = stage(load_bundle(baseline), ctx, "main-job-onnx", kind="export", optimize=True, atol=1e-3,
                     parity_items=64)
        save_artifact(stage(onnx, ctx, "main-job-int8", kind="quantize", method="dynamic_int8", per_channel=True),
                      out / "main-job-int8")
        timings["main job's export + dynamic INT8"] = time.perf_counter() - t0
    timings.update(build_finishes(work, out))
    if not (out / "optimum-dyn-int8" / "lepton.json").is_file():
        peer = optimum_peer(Path(args.optimum_python), baseline, out)
        if peer is not None:
            wrap_onnx(peer[0], load_bundle(out / "main-job-int8"), out / "optimum-dyn-int8", peer[1])

    # compare() names a variant after its folder: links give the run's snapshots readable names.
    named = {"finetune-full": baseline, **{n: work / f / "snapshot" for n, f in NEIGHBOURS.items()},
             "fast": run / "model"}
    (out / "names").mkdir(parents=True, exist_ok=True)
    for name, target in named.items():
        link = out / "names" / name
        link.unlink(missing_ok=True)
        link.symlink_to(target.resolve(), target_is_directory=True)
    models = [out / "names" / "finetune-full", out / "main-job-int8"]
    models += [out / "optimum-dyn-int8"] if (out / "optimum-dyn-int8" / "lepton.json").is_file() else []
    models += [out / "names" / n for n in NEIGHBOURS] + [out / n for n in FINISHES] + [out / "names" / "fast"]
    config = EvaluateConfig(latency_items=args.latency_items, rounds=args.rounds, robustness=False,
                            threads=args.threads, memory=args.memory, batch_sizes=[1, 32], fixed_length=128)
    report = compare(models, DataSplitConfig(path="builtin:sst2/dev"), text="sentence", label="label",
                     config=config)
    print_table(report)
    checks = targets(report)
    for line in checks:
        print(line)
    selection = json.loads((run / "report.json").read_text()).get("selection")
    chose = choosing_split_accuracy(models)
    text = (to_markdown(report) + "\n## Targets (this run)\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
            + f"\n## Selection\n\n{json.dumps(selection)}\n\n"
            + "Accuracy on the split that chose (the carved validation tenth of train) beside dev:\n\n"
            + "| variant | validation | dev |\n|---|---|---|\n"
            + "".join(f"| {c.name} | {100 * chose[c.name]:.2f} | {100 * c.quality.metrics['accuracy'].value:.2f} |\n"
                      for c in report.variants)
            + "\n## Wall time\n\n" + "\n".join(f"- {k}: {v:.0f} s" for k, v in timings.items()) + "\n")
    save_results(report, out, "fast", text)


if __name__ == "__main__":
    main()
