"""The search on SST-2 with MiniLM-L6, and its best model side by side with the hand-written recipe
and the peer's default INT8, all measured in one interleaved harness run.

    python benchmarks/search.py [--trials 40] [--train-limit 8000] [--epochs 0] [--out runs/search-bench]
        [--optimum-python /tmp/optimum-venv/bin/python]

1. ``lepton search examples/sst2-minilm-search.yaml`` with the given trials (``--epochs N``: every
   training stage at N epochs, ``--train-limit``: the train sample; 0 keeps the recipe's).
2. The full-stack example (examples/sst2-minilm-full-stack.yaml, with the same data and epochs), built
   in the search's workspace: its fine-tuned model, layer dropping and distillation come from the
   search's cache, so all models share one baseline.
3. Lepton's ONNX Runtime dynamic INT8 of the baseline, and Optimum's stock dynamic INT8 of the same
   baseline (benchmarks/optimum_peer.py in its own environment; left out, and said so, without one).
4. ``lepton.compare`` measures baseline, peer, Lepton INT8, full stack and the search's best on the
   whole SST-2 dev set in one interleaved run; the table and the issue's targets go to
   ``benchmarks/results/search.md`` (and .json), the search's front to ``search_front.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import yaml

import lepton
from common import save_results
from lepton.evaluation.environment import describe, fingerprint
from lepton.pipeline.recipe import EvaluateConfig
from lepton.pipeline.report import print_table, to_markdown

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("finetune", "distill", "pretrain")
log = logging.getLogger("benchmark")


def overrides_for(tree: dict, args: argparse.Namespace) -> list[str]:
    out = [f"data.train.limit={args.train_limit}"] if args.train_limit else []
    if args.epochs:
        out += [f"stages.{i}.epochs={args.epochs}" for i, s in enumerate(tree["stages"]) if s["kind"] in TRAINING]
    return out


def build(stages_space, out: Path, folder: Path) -> Path:
    """A plain recipe's model, built in the search's workspace (shared prefixes from its cache)."""
    from lepton.pipeline.artifact import save_artifact
    from lepton.search.prefix import Workspace, run_stages

    recipe = stages_space.plain_recipe({})
    ws = Workspace.open(recipe, out)
    work = out / "trials" / f"build-{folder.name}"
    bundle = run_stages(ws, recipe, work, shareable=len(recipe.stages)).bundle
    saved = save_artifact(bundle, folder, recipe=recipe.resolved_dict())  # before the work folder goes:
    shutil.rmtree(work, ignore_errors=True)  # an ONNX model still lives there until saved
    return saved


def targets(report, best: str, trials: int, wall_s: float, peer: str | None) -> list[str]:
    cards = {c.name: c for c in report.variants}
    b = cards[best]
    c = b.comparison
    lines = [f"- found in {trials} trials (target: at most 40), search wall time {wall_s / 60:.1f} min",
             f"- accuracy change {c.delta * 100:+.2f} points vs the fine-tuned baseline, 95% CI "
             f"[{c.ci95_low * 100:+.2f}, {c.ci95_high * 100:+.2f}], {c.verdict} (target: within 1.0 point, "
             f"not significant): "
             f"{'met' if -c.delta * 100 <= 1.0 and not (c.significant and c.delta < 0) else 'MISSED'}",
             f"- {c.speedup_b1:.2f}x faster than the baseline at batch 1, {c.smaller:.2f}x smaller"]
    if peer and peer in cards:
        ratio = cards[peer].efficiency.latency_ms["b1_real"].p50 / b.efficiency.latency_ms["b1_real"].p50
        lines.append(f"- {ratio:.2f}x faster at batch 1 than Optimum's default INT8 of the same baseline "
                     f"(target: at least 1.5x): {'met' if ratio >= 1.5 else 'MISSED'}")
    else:
        lines.append("- Optimum's default INT8: not measured in this run (no Optimum environment)")
    return lines


def main() -> None:
    from lepton.search import load_space, search

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "examples" / "sst2-minilm-search.yaml"))
    p.add_argument("--full-stack", default=str(ROOT / "examples" / "sst2-minilm-full-stack.yaml"))
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--timeout", default=None)
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points below the baseline")
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--latency-items", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="runs/search-bench")
    p.add_argument("--optimum-python", default="/tmp/optimum-venv/bin/python")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="search", help="results file names: NAME.md, NAME.json, NAME_front.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)

    tree = yaml.safe_load(Path(args.recipe).read_text())
    space = load_space(args.recipe, tuple(overrides_for(tree, args)))
    started = time.perf_counter()
    result = search(space, out_dir=out, trials=args.trials, timeout=args.timeout, progress=False,
                    max_drop={"accuracy": args.max_drop})
    wall = time.perf_counter() - started
    data = result.summary
    if result.best_dir is None:
        raise SystemExit(f"no trial within the budget in {data['trials_complete']} trials; see {out}/pareto.md")

    compare_dir = out / "compare"
    full_tree = yaml.safe_load(Path(args.full_stack).read_text())
    full = load_space(args.full_stack, tuple(overrides_for(full_tree, args)))
    full_stack = build(full, out, compare_dir / "full-stack")
    plain = space.plain_tree({})
    base_stages = plain["stages"][:1]
    int8 = load_space_from({**plain, "stages": [*base_stages, {"kind": "export", "optimize": True, "name": "export"},
                                                  {"kind": "quantize", "method": "dynamic_int8", "name": "quantize"}]})
    lepton_int8 = build(int8, out, compare_dir / "lepton-ort-dyn-int8")
    base_folder = _baseline_folder(out, space)
    named = compare_dir / "finetune-baseline"  # lepton.compare names a model by its folder
    if not (named / "lepton.json").is_file():
        shutil.copytree(base_folder, named, dirs_exist_ok=True)
    models = [named]
    peer_name = None
    from quantization import optimum_peer, wrap_onnx

    peer = optimum_peer(Path(args.optimum_python), base_folder, compare_dir)
    if peer is not None:
        fp32 = build(load_space_from({**plain, "stages": [*base_stages, {"kind": "export", "optimize": True,
                                                                              "name": "export"}]}),
                     out, compare_dir / "lepton-ort-fp32")
        from lepton.pipeline.artifact import load_bundle

        models.append(wrap_onnx(peer[0], load_bundle(fp32), compare_dir / "optimum-dyn-int8", peer[1]))
        peer_name = "optimum-dyn-int8"
    best_name = f"search-best-trial-{data['best']}"
    shutil.copytree(result.best_dir / "model", compare_dir / best_name, dirs_exist_ok=True)
    models += [lepton_int8, full_stack, compare_dir / best_name]
    # Robustness (4 perturbed passes over dev per model) is left out to save CPU time; quality,
    # paired tests and interleaved timing are the full standard.
    config = EvaluateConfig(batch_sizes=[1, 32], latency_items=args.latency_items, rounds=args.rounds,
                            memory=False, robustness=False)
    report = lepton.compare(models, config=config)
    print_table(report)
    best_card = report.variants[-1].name
    lines = ["# Search on SST-2 with all-MiniLM-L6-v2: the best model within 1 point, side by side",
             "", f"Machine: {describe(fingerprint())}", "",
             f"Search: {args.recipe} with "
             f"{' '.join('--set ' + o for o in overrides_for(tree, args)) or 'no overrides'}; "
             f"{data['trials_complete']} trials complete, {data['trials_failed']} failed, "
             f"{len(data['front'])} on the front within the budget; wall time {wall / 60:.1f} min "
             f"(baseline training included).", "", "## Targets", "",
             *targets(report, best_card, data["trials_complete"] + data["trials_failed"], wall, peer_name), "",
             "## One interleaved run (lepton.compare, all of SST-2 dev)", "", to_markdown(report), "",
             "## The search's front", "", (out / "pareto.md").read_text()]
    results = Path(args.results)
    save_results(report, results, args.name, "\n".join(lines) + "\n")
    (results / f"{args.name}_front.json").write_text(json.dumps(data, indent=2, default=str))


def load_space_from(tree: dict):
    from lepton.search import parse_space

    return parse_space(tree, source="benchmarks/search.py")


def _baseline_folder(out: Path, space) -> Path:
    from lepton.search.prefix import Workspace

    recipe = space.plain_recipe({})
    ws = Workspace.open(recipe, out)
    found = ws.cached(ws.prefix_key(recipe, 1))
    if found is None:
        raise SystemExit("the baseline is not in the search's cache")
    return found


if __name__ == "__main__":
    main()
