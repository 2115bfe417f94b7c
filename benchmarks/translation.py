"""Issue 24: the translation model Lepton trains (examples/multi30k-transformer.yaml) and its
variants, side by side with CTranslate2 int8 on the same weights, on Multi30k test 2016.

    taskset -c 0 env OMP_NUM_THREADS=1 LEPTON_DATA=../shared/data python benchmarks/translation.py \\
        --model RUN/work/stage-0-train/snapshot --run RUN [--limit N] [--no-peer]

``--model``: the trained fp32 model (a Lepton artifact folder); ``--student``: the distilled
student, fp32 (examples/multi30k-transformer-student.yaml's distill stage), measured the same
way with its own ONNX int8 and CTranslate2 int8. ``--run``: the training run's folder, whose
``run.log`` gives the training curve (dev BLEU against wall time). The variants are built
here with Lepton's own stages (``lepton.run`` on the model: export; export then int8; export then
4-bit; PyTorch dynamic int8) into ``--work``, then every variant and the peer translate the same
sentences with the same decoding (beam search, 4 beams, at most 80 new tokens) on one thread:
BLEU and chrF with 95% CIs, the paired difference against the PyTorch fp32 model (bootstrap), time
per sentence at batch 1 (each sentence alone, median and mean), sentences per second at batch 32
(sentences sorted by length, as both runtimes batch), the size of the weights.

The peer runs in its own environment (``bash benchmarks/peers/ct2_setup.sh``; the converter needs
Lepton's ``<pad>`` layout, see ``benchmarks/peers/ct2_translate.py``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("LEPTON_DATA", HERE.parent.parent / "shared" / "data")) / "multi30k"
BUILDS = {  # variant -> the stages that make it from the trained model
    "onnx-fp32": [{"kind": "export", "parity_items": 16}],
    "onnx-int8": [{"kind": "export", "parity_items": 16}, {"kind": "quantize", "method": "dynamic_int8"}],
    "onnx-int4": [{"kind": "export", "parity_items": 16},
                  {"kind": "quantize", "method": "weight_only", "bits": 4, "group_size": 32}],
    "torch-int8": [{"kind": "quantize", "method": "dynamic_int8"}],
}


def read(path: Path, limit: int | None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return lines[:limit] if limit else lines


def build(model: Path, name: str, stages: list[dict], work: Path) -> Path:
    """The variant's artifact (built once; reused when its folder exists)."""
    import lepton
    from lepton.pipeline.recipe import parse_recipe

    out = work / name
    if (out / "model" / "lepton.json").is_file():
        return out / "model"
    pairs = {"path": str(DATA / "val.en.gz"), "target": str(DATA / "val.de.gz"), "limit": 16}
    recipe = {"schema_version": 1, "model": str(model),
              "task": {"kind": "generation", "max_length": 100, "max_target_length": 100,
                       "generation": {"strategy": "beam", "num_beams": 4, "max_new_tokens": 80, "batch_size": 32}},
              "data": {"train": pairs, "dev": pairs}, "stages": stages,
              "evaluate": {"batch_sizes": [1], "rounds": 1, "memory": False, "bootstrap": 100},
              "output": {"dir": str(out)}}
    report = lepton.run(parse_recipe(recipe, env={}), progress=False, force=True)
    (work / f"{name}.stages.json").write_text(json.dumps(report.stages, indent=1, default=str))
    return out / "model"


def measure(name: str, folder: Path, sources: list[str], threads: int) -> dict[str, Any]:
    import torch

    import lepton
    from lepton.tasks.generate import generate
    from lepton.tasks.generation_settings import GenerationSettings

    torch.set_num_threads(threads)
    loaded = lepton.load(folder)
    bundle = loaded.bundle
    model, tok = bundle.model, bundle.tokenizer
    one = GenerationSettings(strategy="beam", num_beams=4, max_new_tokens=80, batch_size=1)
    many = one.model_copy(update={"batch_size": 32})
    generate(model, tok, sources[:5], one, max_prompt_tokens=100)  # warm-up
    per_sentence = []
    for s in sources:
        t0 = time.perf_counter()
        generate(model, tok, [s], one, max_prompt_tokens=100)
        per_sentence.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    hyps = generate(model, tok, sources, many, max_prompt_tokens=100)
    batch_s = time.perf_counter() - t0
    from lepton.runtimes import for_bundle

    size = for_bundle(bundle).size_bytes()
    return {"variant": name, "runtime": bundle.runtime, "hypotheses": hyps,
            "b1_ms_p50": 1000 * statistics.median(per_sentence), "b1_ms_mean": 1000 * statistics.mean(per_sentence),
            "b32_sent_per_s": len(sources) / batch_s, "size_bytes": size}


def peer(model: Path, limit: int | None, threads: int, out: Path) -> dict[str, Any] | None:
    python = HERE / "peers" / ".ct2-venv" / "bin" / "python"
    if not python.is_file():
        print("CTranslate2 peer skipped: run bash benchmarks/peers/ct2_setup.sh first", file=sys.stderr)
        return None
    cmd = [str(python), str(HERE / "peers" / "ct2_translate.py"), str(model), str(DATA / "test_2016_flickr.en.gz"),
           str(DATA / "test_2016_flickr.de.gz"), str(out), "--quantization", "int8", "--beam", "4",
           "--max-len", "80", "--batch-sizes", "1,32", "--threads", str(threads), "--rounds", "1",
           "--ct2-dir", str(out.with_suffix(""))]
    if limit:
        cmd += ["--limit", str(limit)]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def curve(run: Path | None) -> list[dict[str, Any]]:
    """Dev BLEU against wall time since the training stage started (evaluations included), from
    the run's log: the last start of stage 0, then each evaluation line after it."""
    import re
    from datetime import datetime

    if run is None or not (run / "run.log").is_file():
        return []
    stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")
    evals = re.compile(r"step (\d+) dev bleu ([\d.]+) \(loss ([\d.]+)\)")
    start, points = None, []
    for line in (run / "run.log").read_text(encoding="utf-8").splitlines():
        when = stamp.match(line)
        if when is None:
            continue
        t = datetime.strptime(when.group(1), "%Y-%m-%d %H:%M:%S")
        if "stage 0 (" in line and line.endswith("starts"):
            start, points = t, []
        elif start is not None and (m := evals.search(line)):
            points.append({"step": int(m.group(1)), "minutes": round((t - start).total_seconds() / 60, 1),
                           "dev_bleu": float(m.group(2)), "dev_loss": float(m.group(3))})
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--student", type=Path, help="the distilled student, fp32 (a Lepton artifact folder)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lepton-translation-bench"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "translation")
    args = ap.parse_args()
    from lepton.evaluation.environment import fingerprint
    from lepton.tasks.text_metrics import paired_text, text_scores

    sources = read(DATA / "test_2016_flickr.en.gz", args.limit)
    refs = read(DATA / "test_2016_flickr.de.gz", args.limit)
    args.work.mkdir(parents=True, exist_ok=True)
    folders = {"torch-fp32": args.model} | {n: build(args.model, n, s, args.work) for n, s in BUILDS.items()}
    if args.student is not None:
        folders["student-torch-fp32"] = args.student
        folders["student-onnx-int8"] = build(args.student, "student-onnx-int8", BUILDS["onnx-int8"], args.work)
    rows = [measure(n, f, sources, args.threads) for n, f in folders.items()]
    peers = {"ctranslate2-int8": args.model, "student-ctranslate2-int8": args.student}
    for name, model in peers.items():
        ct2 = None if args.no_peer or model is None else peer(model, args.limit, args.threads,
                                                               args.work / f"{name}.json")
        if ct2 is not None:
            rows.append({"variant": name, "runtime": f"ctranslate2 {ct2['versions']['ctranslate2']}",
                         "hypotheses": ct2["hypotheses"], **_peer_times(ct2)})
    base = rows[0]["hypotheses"]
    for r in rows:
        scores = text_scores(r["hypotheses"], refs, resamples=1000, seed=0).metrics
        r["bleu"], r["chrf"] = scores["bleu"].model_dump(), scores["chrf"].model_dump()
        r["vs_torch_fp32"] = paired_text(refs, base, r["hypotheses"], resamples=1000, seed=0)["bleu"]
    env = fingerprint(0)
    record = {"cpu": env.cpu_model, "cpu_flags": env.cpu_flags, "threads": args.threads, "sentences": len(sources),
              "decoding": "beam search, 4 beams, at most 80 new tokens", "variants": rows, "curve": curve(args.run)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    args.out.with_suffix(".md").write_text(table(record))
    print(table(record))


def _peer_times(ct2: dict[str, Any]) -> dict[str, Any]:
    b1 = ct2["batch1_latency_ms"]
    return {"b1_ms_p50": b1["p50_ms"], "b1_ms_mean": b1["mean_ms"],
            "b32_sent_per_s": ct2["sentences_per_s"]["32"], "size_bytes": ct2["model_bin_bytes"]}


def table(record: dict[str, Any]) -> str:
    lines = [f"Multi30k test 2016 ({record['sentences']} sentences), {record['decoding']}; CPU: {record['cpu']} "
             f"({', '.join(f for f, on in record['cpu_flags'].items() if on)}), "
             f"{record['threads']} thread(s).", "",
             "| variant | runtime | BLEU [95% CI] | chrF | Δ BLEU vs PyTorch fp32 [95% CI], p "
             "| ms/sentence b1 (p50, mean) | sentences/s b32 | size MB |", "|---|---|---|---|---|---|---|---|"]
    for r in record["variants"]:
        b, c, d = r["bleu"], r["chrf"], r["vs_torch_fp32"]
        lines.append(f"| {r['variant']} | {r['runtime']} "
                     f"| {b['value']:.2f} [{b['ci95_low']:.2f}, {b['ci95_high']:.2f}] | {c['value']:.2f} "
                     f"| {d['delta']:+.2f} [{d['ci95_low']:+.2f}, {d['ci95_high']:+.2f}], "
                     f"{d['p_bootstrap']:.3f} | {r['b1_ms_p50']:.1f}, {r['b1_ms_mean']:.1f} "
                     f"| {r['b32_sent_per_s']:.1f} | {r['size_bytes'] / 1e6:.1f} |")
    if record["curve"]:
        lines += ["", "Training curve (dev: 400 sentences of val, greedy; minutes of wall time since the stage "
                  "started, evaluations included):", "",
                  "| step | minutes | dev BLEU | dev loss |", "|---|---|---|---|"]
        lines += [f"| {e['step']} | {e['minutes']} | {e['dev_bleu']} | {e['dev_loss']} |" for e in record["curve"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
