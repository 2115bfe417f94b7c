"""Quantization-aware training on SST-2: does ``finetune`` with ``qat: true`` make ONNX Runtime
static INT8 lose less? Three arms from one fine-tuned MiniLM-L6, measured side by side in one run:

- A: the fine-tuned model -> export -> static INT8 (no further training);
- B: + 1 epoch of QAT fine-tuning (``qat: true``, low lr) -> export -> static INT8;
- C: + 1 epoch of plain fine-tuning (same lr, data, seed) -> export -> static INT8, so that
  "trained more" and "trained with fake quantization" can be told apart.

    python benchmarks/qat.py [--baseline runs/sst2-minilm-finetune/model] [--out runs/qat] [--lr 1e-5]
        [--limit N] [--skip-build] [--results benchmarks/results/qat.md]

The baseline is the main job's model (``lepton run examples/sst2-minilm-finetune.yaml``), trained first
when missing; the extra epoch uses the same 8,000-row seeded SST-2 sample. Every variant is made by
Lepton's own stages (``finetune``, ``export``, ``quantize``) and saved as a Lepton artifact.
``lepton.compare`` measures all of them on SST-2 dev (accuracy with 95% CIs; deltas paired against
arm A's INT8 model); the paired deltas the question needs (each arm's INT8 vs its own float model,
B vs C, B vs A) come from the same predictions through ``lepton.tasks.quality.paired_bootstrap``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

import lepton
from common import stage
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.evaluation.environment import describe, fingerprint, int8_fast
from lepton.evaluation.harness import predict_logits
from lepton.pipeline.api import compare
from lepton.pipeline.artifact import load_bundle, save_artifact
from lepton.pipeline.recipe import EvaluateConfig
from lepton.pipeline.report import print_table, to_markdown
from lepton.runtimes import for_bundle
from lepton.runtimes.bundle import RunContext
from lepton.tasks import encode, label_ids
from lepton.tasks.quality import paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]
# The built-in SST-2 (GLUE train and dev, shipped in the package): runs from a fresh clone.
SST2 = "builtin:sst2"
log = logging.getLogger("benchmark")


def build(baseline: Path, out: Path, splits: dict, lr: float) -> dict[str, float]:
    """Every arm's float and INT8 artifacts under ``out``; returns seconds per step."""
    ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=out, work_dir=out / "work", progress=False)
    extra = {"kind": "finetune", "epochs": 1, "lr": lr, "batch_size": 32}
    static = {"kind": "quantize", "method": "static_int8"}
    seconds: dict[str, float] = {}
    for arm, train in (("A", None), ("B-qat", {**extra, "qat": True}), ("C-plain", extra)):
        t0 = time.perf_counter()
        bundle = load_bundle(baseline)
        if train is not None:
            bundle = stage(bundle, ctx, f"{arm}-finetune", **train)
            save_artifact(bundle, out / f"{arm}-fp32")
            seconds[f"{arm}-finetune"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        onnx = stage(bundle, ctx, f"{arm}-export", kind="export")
        save_artifact(stage(onnx, ctx, f"{arm}-int8", **static), out / f"{arm}-int8")
        seconds[f"{arm}-export+int8"] = time.perf_counter() - t1
    return seconds


def paired(models: dict[str, Path], dev_cfg: DataSplitConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """Paired bootstrap deltas (b minus a) on dev for the pairs the question needs."""
    columns = Columns(text="sentence", label="label")
    correct: dict[str, np.ndarray] = {}
    for name, folder in models.items():
        bundle = load_bundle(folder, verify=False)
        split = load_split(dev_cfg, columns, name="eval")
        enc, gold = encode(split, bundle.task, bundle.tokenizer), np.asarray(label_ids(split, bundle.task))
        logits = predict_logits(for_bundle(bundle), enc, bundle.tokenizer.pad_token_id or 0, batch_size=32)
        correct[name] = np.stack(logits).argmax(axis=1) == gold
    pairs = [("sst2-minilm", "A-int8"), ("B-qat-fp32", "B-qat-int8"), ("C-plain-fp32", "C-plain-int8"),
             ("A-int8", "B-qat-int8"), ("A-int8", "C-plain-int8"), ("C-plain-int8", "B-qat-int8"),
             ("C-plain-fp32", "B-qat-fp32")]
    return [(a, b, paired_bootstrap(correct[a], correct[b], resamples=1000, seed=0)) for a, b in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="runs/sst2-minilm-finetune/model")
    parser.add_argument("--out", default="runs/qat")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate of the extra epoch (arms B and C)")
    parser.add_argument("--limit", type=int, default=None, help="first N dev sentences (default: all 872)")
    parser.add_argument("--train-limit", type=int, default=8000)
    parser.add_argument("--skip-build", action="store_true", help="reuse variants already in OUT")
    parser.add_argument("--results", default=None, help="also write the markdown here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    baseline, out = Path(args.baseline), Path(args.out)
    if not (baseline / "lepton.json").is_file():
        lepton.run(ROOT / "examples" / "sst2-minilm-finetune.yaml", out_dir=baseline.parent, progress=False)
    env = fingerprint()
    log.info("machine: %s; int8 fast here: %s", describe(env), int8_fast(env))
    columns = Columns(text="sentence", label="label")
    dev_cfg = DataSplitConfig(path=f"{SST2}/dev", limit=args.limit)
    splits = {"train": load_split(DataSplitConfig(path=f"{SST2}/train", limit=args.train_limit, seed=0),
                                  columns, name="train"),
              "dev": load_split(dev_cfg, columns, name="dev")}
    names = ["A-int8", "B-qat-fp32", "B-qat-int8", "C-plain-fp32", "C-plain-int8"]
    seconds = {}
    if not (args.skip_build and all((out / n / "lepton.json").is_file() for n in names)):
        seconds = build(baseline, out, splits, args.lr)
    models = {"sst2-minilm": baseline, **{n: out / n for n in names}}

    # Timing is not the question here: a short pass keeps the run about accuracy.
    config = EvaluateConfig(latency_items=20, rounds=1, robustness=False, memory=False, batch_sizes=[1],
                            fixed_length=None, threads=1)
    order = ["A-int8", "sst2-minilm", "B-qat-fp32", "B-qat-int8", "C-plain-fp32", "C-plain-int8"]
    report = compare([models[n] for n in order], dev_cfg, text="sentence", label="label", config=config)
    print_table(report)
    deltas = paired(models, dev_cfg)
    lines = ["| a | b | accuracy(b) - accuracy(a) | paired 95% CI | McNemar p | significant |",
             "|---|---|---|---|---|---|"]
    for a, b, d in deltas:
        lines.append(f"| {a} | {b} | {100 * d['delta']:+.2f} pts | [{100 * d['ci95_low']:+.2f}, "
                     f"{100 * d['ci95_high']:+.2f}] | {d['p_mcnemar']:.3f} | {'yes' if d['significant'] else 'no'} |")
    for line in lines:
        print(line)
    text = (to_markdown(report) + f"\n## Paired deltas on dev (n = {deltas[0][2]['n']}, 1000 bootstrap resamples)\n\n"
            + "\n".join(lines) + "\n")
    text += (f"\nArms B and C: 1 more epoch on the same {args.train_limit} SST-2 rows from the fine-tuned "
             f"model, lr {args.lr:g}, batch 32, seed 0; B with `qat: true` (default qat_settings).\n")
    if seconds:
        text += "\n## Build time\n\n" + "\n".join(f"- {k}: {v:.0f} s" for k, v in seconds.items()) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "qat.md").write_text(text)
    (out / "qat.json").write_text(json.dumps({"report": json.loads(report.model_dump_json()),
                                              "paired": [{"a": a, "b": b, **d} for a, b, d in deltas],
                                              "seconds": seconds}, indent=2, default=str))
    if args.results:
        Path(args.results).write_text(text)
    print(f"written: {out / 'qat.md'}")


if __name__ == "__main__":
    main()
