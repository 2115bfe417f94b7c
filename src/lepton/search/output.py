"""What a search leaves behind: the Pareto front, the best model within the budget, its recipe.

OUT/pareto.json   every trial (settings, figures, within the budget or not), the front, failures
OUT/pareto.md     the front as a table; OUT/pareto.html the same with every trial plotted
OUT/best/         the best model within the budget as a normal run folder: model/ (artifact with
                  scorecards and model card), report.md/.json/.html, recipe.yaml (a plain recipe
                  that reproduces it with ``lepton run``, no search)
"""

from __future__ import annotations

import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from lepton.core import atomic
from lepton.runtimes.saved import is_saved_model
from lepton.search.study import OBJECTIVES

log = logging.getLogger(__name__)


def rows_of(study: Any, max_drop: dict[str, float], objectives: list[str]) -> tuple[list[dict], list[dict]]:
    """Complete trials (with figures) and failed ones (with their reason), from the storage."""
    from optuna.trial import TrialState

    done, failed = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        a = t.user_attrs
        if t.state == TrialState.FAIL:
            if a.get("failure_kind") == "interrupted":
                continue  # cut short by Ctrl-C: not a result, and not counted
            failed.append({"trial": t.number, "settings": a.get("settings", t.params),
                           "kind": a.get("failure_kind", "error"),
                           "reason": a.get("failure", "no reason recorded (the worker stopped)")})
            continue
        if "metrics" not in a:
            continue
        drops = a["drop_points"]
        feasible = all(drops.get(m, float("inf")) <= limit for m, limit in max_drop.items())
        done.append({"trial": t.number, "settings": a.get("settings", t.params),
                     "values": dict(zip(objectives, t.values)), "within_budget": feasible,
                     "metrics": a["metrics"], "drop_points": drops, "paired": a["paired"],
                     "speedup_b1": a["speedup_b1"], "speedup_throughput": a.get("speedup_throughput"),
                     "size_mb": a["size_mb"], "size_ratio": a["size_ratio"], "runtime": a.get("runtime"),
                     "latency_ms": a["latency_ms"], "baseline_latency_ms": a["baseline_latency_ms"],
                     "model": a.get("model"), "same_as": a.get("same_as"), "seconds": a.get("seconds")})
    return done, failed


def _signed(row: dict[str, Any], name: str) -> float:
    """The objective as a number to minimize."""
    value = row["values"][name]
    return value if OBJECTIVES.get(name) == "minimize" else -value


def pareto_front(rows: list[dict[str, Any]], objectives: list[str]) -> list[dict[str, Any]]:
    """Non-dominated rows. Written out here: Optuna's own front helpers are private API."""
    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        sa, sb = [_signed(a, o) for o in objectives], [_signed(b, o) for o in objectives]
        return all(x <= y for x, y in zip(sa, sb)) and any(x < y for x, y in zip(sa, sb))

    unique = [r for r in rows if r["same_as"] is None]
    return [r for r in unique if not any(dominates(o, r) for o in unique if o is not r)]


def best_of(front: list[dict[str, Any]], objectives: list[str]) -> dict[str, Any] | None:
    """The fastest and smallest: cost objectives in the order given first, quality last."""
    order = [o for o in objectives if o in OBJECTIVES] + [o for o in objectives if o not in OBJECTIVES]
    return min(front, key=lambda r: tuple(_signed(r, o) for o in order)) if front else None


def summary(study: Any, space: Any, baseline: Any, objectives: list[str], max_drop: dict[str, float],
            trials_wanted: int) -> dict[str, Any]:
    rows, failed = rows_of(study, max_drop, objectives)
    front = pareto_front([r for r in rows if r["within_budget"]], objectives)
    best = best_of(front, objectives)
    return {
        "study": study.study_name, "recipe": space.source, "objectives": objectives,
        "directions": [OBJECTIVES.get(o, "maximize") for o in objectives], "max_drop_points": max_drop,
        "baseline": {"name": baseline.name, "metrics": baseline.metrics},
        "trials_wanted": trials_wanted, "trials_complete": len(rows), "trials_failed": len(failed),
        "best": best["trial"] if best else None,
        "front": sorted(front, key=lambda r: -r["speedup_b1"]), "trials": rows, "failures": failed,
    }


def prune_trial_models(out_dir: Path, keep: set[int]) -> None:
    """Models of trials off the front can never become the best: free their disk space."""
    import shutil

    trials = out_dir / "trials"
    for folder in trials.glob("*/model") if trials.is_dir() else []:
        number = folder.parent.name
        if number.isdigit() and int(number) not in keep:
            shutil.rmtree(folder.parent, ignore_errors=True)


def write_front(out_dir: Path, data: dict[str, Any], *, plot: bool = True) -> None:
    """``plot=False`` after each trial: the plot (about a second) is drawn once, at the end."""
    atomic.write_text(out_dir / "pareto.json", json.dumps(data, indent=2, default=str))
    atomic.write_text(out_dir / "pareto.md", to_markdown(data))
    if plot:
        atomic.write_text(out_dir / "pareto.html", to_html(data))


def _settings(s: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (list, dict)) else f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={show(v)}" for k, v in s.items())


def to_markdown(data: dict[str, Any]) -> str:
    base = data["baseline"]
    budget = ", ".join(f"{m} at most {p} points below the baseline" for m, p in data["max_drop_points"].items())
    lines = [f"# Search {data['study']}: the Pareto front", "",
             f"{data['trials_complete']} trials complete, {data['trials_failed']} failed "
             f"(of {data['trials_wanted']} asked). Objectives: {', '.join(data['objectives'])}. "
             f"Budget: {budget}. "
             f"Baseline {base['name']}: " + ", ".join(f"{m} {v:.4f}" for m, v in base["metrics"].items()
                                                       if m in data["max_drop_points"] or m in data["objectives"]),
             "", "Speed-ups and size ratios are against the baseline, timed interleaved with it in the "
             "same process.", "",
             "| trial | settings | change (points) | paired test | speed-up b1 | size MB (x smaller) | best |",
             "|---|---|---|---|---|---|---|"]
    for r in data["front"]:
        drop = ", ".join(f"{m} {-d + 0.0:+.2f}" for m, d in r["drop_points"].items())
        lines.append(f"| {r['trial']} | {_settings(r['settings'])} | {drop} | {r['paired']['verdict']} | "
                     f"{r['speedup_b1']:.2f}x | {r['size_mb']:.1f} ({r['size_ratio']:.2f}x) | "
                     f"{'yes' if r['trial'] == data['best'] else ''} |")
    if not data["front"]:
        lines.append("| - | no trial within the budget yet | | | | | |")
    if data["failures"]:
        lines += ["", "## Failed trials", "", "| trial | kind | reason |", "|---|---|---|"]
        lines += [f"| {f['trial']} | {f['kind']} | {f['reason'].replace('|', '/')} |" for f in data["failures"]]
    return "\n".join(lines) + "\n"


def _plot_svg(data: dict[str, Any]) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "<p>(plot needs matplotlib: pip install 'lepton[report]')</p>"
    metric = next(iter(data["max_drop_points"]), None) or data["objectives"][0]
    front = {r["trial"] for r in data["front"]}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in data["trials"]:
        on = r["trial"] in front
        ax.scatter(r["speedup_b1"], r["metrics"].get(metric, float("nan")),
                   s=60 if on else 25, c="#d62728" if r["trial"] == data["best"] else "#1f77b4" if on else "#bbbbbb",
                   marker="*" if r["trial"] == data["best"] else "o", zorder=3 if on else 2)
        if on:
            ax.annotate(str(r["trial"]), (r["speedup_b1"], r["metrics"].get(metric)), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    base = data["baseline"]["metrics"].get(metric)
    if base is not None:
        ax.scatter([1.0], [base], marker="s", c="black", zorder=4, label=f"baseline {data['baseline']['name']}")
        limit = data["max_drop_points"].get(metric)
        if limit is not None:
            ax.axhline(base - limit / 100, ls="--", c="grey", lw=1, label=f"budget: -{limit} points")
    ax.set_xlabel("speed-up at batch 1 vs the baseline (interleaved timing)")
    ax.set_ylabel(metric)
    ax.set_title("every trial (grey), the front within the budget (blue), the best (red star)")
    ax.legend(loc="lower left", fontsize=8)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]


def to_html(data: dict[str, Any]) -> str:
    md = to_markdown(data)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(str(data['study']))}: Pareto front</title></head><body>"
            f"{_plot_svg(data)}<pre style='white-space: pre-wrap'>{html.escape(md)}</pre></body></html>")


def plain_recipe_text(space: Any, settings: dict[str, Any], trial: int, out_dir: Path) -> str:
    tree = space.plain_tree(settings)
    tree.setdefault("output", {})["dir"] = str(out_dir / "reproduced")
    header = (f"# Found by lepton search ({space.source}, trial {trial}): the settings below, with no\n"
              f"# search space left, reproduce the best model from scratch: lepton run <this file>\n")
    return header + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def _intact(model: Path) -> bool:
    """A saved model whose files match their checksums; a damaged one is reported and not used."""
    from lepton.core.errors import LeptonError
    from lepton.pipeline.artifact import read_manifest

    if not is_saved_model(model):
        return False
    try:
        read_manifest(model, verify=True)
    except LeptonError as err:
        log.warning("%s is damaged (%s): not used, built again", model, err)
        return False
    return True


def _written(dest: Path, marker: dict[str, Any]) -> bool:
    """OUT/best holds this trial's model already, intact."""
    try:
        done = json.loads((dest / "trial.json").read_text(encoding="utf-8")) == marker
    except (OSError, ValueError):  # missing, or damaged: written again
        return False
    return done and _intact(dest / "model")


def write_best(worker: Any, row: dict[str, Any], out_dir: Path) -> Path:
    """OUT/best: the best trial's model measured with the full standard against the baseline."""
    from lepton import __version__
    from lepton.evaluation.environment import fingerprint
    from lepton.evaluation.harness import Variant, evaluate_variants
    from lepton.evaluation.scorecard import Report
    from lepton.pipeline.api import selection_of
    from lepton.pipeline.artifact import load_bundle, now_iso, save_artifact
    from lepton.pipeline.model_card import model_card
    from lepton.pipeline.report import write_report
    from lepton.search.prefix import run_stages

    dest = out_dir / "best"
    marker = {"trial": row["trial"], "max_drop": worker.max_drop}
    if _written(dest, marker):
        return dest  # written already, by this worker or another
    space, ws = worker.space, worker.ws
    recipe = space.plain_recipe(row["settings"])
    model = Path(row["model"]) if row.get("model") else None
    if model is not None and not _intact(model):
        model = None
    if model is not None:
        bundle = load_bundle(model, device=ws.device)
    else:  # measured by a worker on another machine (or damaged): build it again from its plain recipe
        log.info("best trial %d: its model is not in this folder, building it from its recipe", row["trial"])
        bundle = run_stages(ws, recipe, out_dir / "trials" / "rebuild",
                            shareable=worker.shareable(row["settings"])).bundle
    base = worker.baseline.variant
    variants = [Variant(name=base.name, stage_path=base.stage_path,
                        bundle=load_bundle(base.folder, device=ws.device), folder=base.folder),
                Variant(name=f"trial-{row['trial']}", stage_path=[r.name for r in bundle.history],
                        bundle=bundle, folder=model)]
    split = ws.splits[recipe.evaluate.split]
    cards = evaluate_variants(variants, split, recipe.evaluate, seed=recipe.seed, baseline=base.name,
                              memory=recipe.evaluate.memory and model is not None)
    report = Report(lepton_version=__version__, created=now_iso(), recipe=recipe.resolved_dict(),
                    baseline=base.name, variants=cards, environment=fingerprint(recipe.seed),
                    stages=[r.model_dump() for r in bundle.history], selection=selection_of(recipe, ws.splits))
    manifest_like = {"history": [r.model_dump() for r in bundle.history], "source_model": recipe.model_source(),
                     "recipe": recipe.resolved_dict(), "main_task": bundle.main_task,
                     "heads": {n: {"task": h.task.model_dump()} for n, h in bundle.heads.items()}}

    def fill(tmp: Path) -> None:
        save_artifact(bundle, tmp / "model", recipe=recipe.resolved_dict(),
                      scorecards=[c.model_dump(mode="json") for c in cards],
                      model_card=model_card(report, manifest_like),
                      environment=report.environment.model_dump(mode="json"))
        write_report(report, tmp)
        (tmp / "recipe.yaml").write_text(plain_recipe_text(space, row["settings"], row["trial"], out_dir))
        (tmp / "trial.json").write_text(json.dumps(marker))

    atomic.write_folder(dest, fill)
    return dest
