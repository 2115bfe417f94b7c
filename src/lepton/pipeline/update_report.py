"""What an update gained and forgot: every model of ``lepton update`` (the parent, naive
fine-tuning, the method's float model, the rebuilt artifact) scored with the harness on the new
dev set and on the original dev set, each paired against the parent and against naive; the
``update`` entry of report.json and its section in report.md."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lepton.data import DataSplitConfig, Split, load_split
from lepton.evaluation.harness import Variant, predict_logits, quality_of
from lepton.pipeline.artifact import load_bundle, read_manifest
from lepton.pipeline.recipe import EvaluateConfig, Recipe
from lepton.runtimes import for_bundle
from lepton.tasks import TaskConfig, TaskSpec, kind_of, label_ids

log = logging.getLogger("lepton")


def _variants(recipe: Recipe, parent: Path, out: Path, naive: Path | None, device: str) -> list[Variant]:
    """parent, naive (when run), the method's float model, the rebuilt artifact (when later
    stages changed it), all carrying the update's task (the parent predicts among its own rows)."""
    names = recipe.stage_names()
    folders: list[tuple[str, Path]] = [("parent", parent)]
    if naive is not None:
        folders.append(("naive", naive))
    if len(recipe.stages) > 1:
        folders.append((names[0], out / "work" / f"stage-0-{recipe.stages[0].kind}" / "snapshot"))
    folders.append((names[-1] if len(recipe.stages) > 1 else names[0], out / "model"))
    task: TaskSpec = load_bundle(out / "model", verify=False).task
    variants = []
    for name, folder in folders:
        bundle = load_bundle(folder, verify=False, device=device)
        bundle.task = task
        variants.append(Variant(name=name, stage_path=[r.name for r in bundle.history], bundle=bundle, folder=folder))
    return variants


def _paired(task: TaskSpec, gold: Any, base: list[Any], other: list[Any], config: EvaluateConfig,
            seed: int) -> dict[str, Any]:
    test = kind_of(task).paired(task, gold, base, other, resamples=config.bootstrap, seed=seed)
    return {"delta": test.delta, "ci95_low": test.ci95_low, "ci95_high": test.ci95_high,
            "p_bootstrap": test.p_bootstrap, "p_mcnemar": test.p_mcnemar, "significant": test.significant}


def score_set(variants: list[Variant], split: Split, config: EvaluateConfig, seed: int) -> dict[str, Any]:
    """Each variant's headline metric with its CI on ``split``, paired against parent and naive."""
    task = variants[0].bundle.task
    gold = label_ids(split, task)
    preds, rows = {}, []
    for v in variants:
        # The harness's prediction pass and quality (no calibration: the parent has fewer rows
        # than the update's labels when the update added a class).
        logits = predict_logits(for_bundle(v.bundle), v.encoded(split), v.bundle.tokenizer.pad_token_id or 0)
        preds[v.name] = kind_of(task).predictions(logits, v.encoded(split), task)
        quality = quality_of(task, gold, preds[v.name], resamples=config.bootstrap, seed=seed)
        m = quality.metrics[quality.headline]
        row: dict[str, Any] = {"variant": v.name, "metric": quality.headline, "value": m.value,
                               "ci95_low": m.ci95_low, "ci95_high": m.ci95_high}
        for base in ("parent", "naive"):
            if base in preds and base != v.name:
                row[f"vs_{base}"] = _paired(task, gold, preds[base], preds[v.name], config, seed)
        rows.append(row)
    return {"data": split.sources[0].rsplit(":", 1)[0] if split.sources else split.name,
            "n_examples": len(split), "rows": rows}


def verdict(new: dict[str, Any], old: dict[str, Any] | None, shipped: str) -> dict[str, Any]:
    """Gain (points on the new dev set), the share of naive's gain kept, forgetting (points lost
    on the original dev set, positive = forgot) and whether it is significant, for ``shipped``."""
    def row(table: dict[str, Any], name: str) -> dict[str, Any]:
        return next(r for r in table["rows"] if r["variant"] == name)

    me = row(new, shipped)
    gain = 100 * me["vs_parent"]["delta"]
    out: dict[str, Any] = {"variant": shipped, "gain_points": round(gain, 2),
                           "gain_significant": me["vs_parent"]["significant"]}
    naive = next((r for r in new["rows"] if r["variant"] == "naive"), None)
    if naive is not None and naive["variant"] != shipped:
        naive_gain = 100 * naive["vs_parent"]["delta"]
        out["naive_gain_points"] = round(naive_gain, 2)
        out["gain_kept_percent"] = round(100 * gain / naive_gain, 1) if naive_gain > 0 else None
    if old is not None:
        mine = row(old, shipped)["vs_parent"]
        out.update({"forgetting_points": round(-100 * mine["delta"], 2), "forgetting_significant": mine["significant"],
                    "forgetting_ci95_points": [round(-100 * mine["ci95_high"], 2), round(-100 * mine["ci95_low"], 2)]})
        if naive is not None and naive["variant"] != shipped:
            out["naive_forgetting_points"] = round(-100 * row(old, "naive")["vs_parent"]["delta"], 2)
    return out


def measure_update(recipe: Recipe, parent: Path, out: Path, naive: Path | None,
                   old: tuple[DataSplitConfig, TaskConfig] | None) -> dict[str, Any]:
    """The ``update`` entry of report.json: both tables and the verdict."""
    device = "cpu" if recipe.device == "auto" else recipe.device
    variants = _variants(recipe, parent, out, naive, device)
    config = EvaluateConfig(**{**recipe.evaluate.model_dump(), "robustness": False})
    assert recipe.data.dev is not None  # an update needs --dev
    new_split = load_split(recipe.data.dev, recipe.task.columns(), name="new-dev", kind=recipe.task.split_kind)
    log.info("update: scoring %d models on the new dev set (%d examples)", len(variants), len(new_split))
    new = score_set(variants, new_split, config, recipe.seed)
    old_table = None
    if old is not None:
        old_split = load_split(old[0], old[1].columns(), name="old-dev", kind=recipe.task.split_kind)
        log.info("update: scoring %d models on the original dev set (%d examples)", len(variants), len(old_split))
        old_table = score_set(variants, old_split, config, recipe.seed)
    manifest = read_manifest(parent, verify=False)
    return {"method": recipe.stages[0].method, "parent": {"path": str(parent),  # type: ignore[attr-defined]
                                                          "manifest_sha256": manifest.get("manifest_sha256")},
            "new": new, "old": old_table, "verdict": verdict(new, old_table, variants[-1].name)}


def _cell(row: dict[str, Any], base: str) -> str:
    test = row.get(f"vs_{base}")
    if test is None:
        return "-"
    star = "*" if test["significant"] else ""
    return (f"{100 * test['delta']:+.2f}{star} [{100 * test['ci95_low']:+.2f}, {100 * test['ci95_high']:+.2f}], "
            f"p={test['p_bootstrap']:.3f}")


def _table(title: str, table: dict[str, Any]) -> list[str]:
    metric = table["rows"][0]["metric"]
    lines = [f"### {title}: `{table['data']}` ({table['n_examples']} examples)", "",
             f"| model | {metric} [95% CI] | Δ vs parent, points [95% CI] | Δ vs naive, points [95% CI] |",
             "|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(f"| {r['variant']} | {r['value']:.4f} [{r['ci95_low']:.4f}, {r['ci95_high']:.4f}] | "
                     f"{_cell(r, 'parent')} | {_cell(r, 'naive')} |")
    return [*lines, ""]


def to_markdown(update: dict[str, Any]) -> list[str]:
    """The update section of report.md: the gain table, the forgetting table, the verdict."""
    v = update["verdict"]
    lines = ["## Update", "", f"Method `{update['method']}` on the parent `{update['parent']['path']}` "
             f"(manifest sha256 {str(update['parent']['manifest_sha256'])[:12]}…). Paired tests against the "
             "parent and against naive fine-tuning on the same seed; * marks a 95% CI that excludes 0.", ""]
    lines += _table("New data (the gain)", update["new"])
    if update.get("old") is not None:
        lines += _table("Original data (forgetting)", update["old"])
    text = f"**Verdict** for `{v['variant']}`: gain {v['gain_points']:+.2f} points on the new data"
    if v.get("gain_kept_percent") is not None:
        text += f" ({v['gain_kept_percent']:.0f}% of naive fine-tuning's {v['naive_gain_points']:+.2f})"
    if "forgetting_points" in v:
        sig = "significant" if v["forgetting_significant"] else "not significant"
        text += f"; forgetting {v['forgetting_points']:.2f} points on the original data ({sig})"
        if "naive_forgetting_points" in v:
            text += f", naive forgot {v['naive_forgetting_points']:.2f}"
    else:
        text += "; forgetting not measured (no original dev set)"
    return [*lines, text + ".", ""]
