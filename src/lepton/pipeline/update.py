"""``lepton update``: a saved model trained further on new labelled data, the recipe's later stages
re-applied, and what the update gained and forgot measured against the parent and naive
fine-tuning.

The update is an ordinary run (``lepton.pipeline.api.run``) of a recipe made from the parent's:
its model is the parent folder, its data the new data, its stages the ``update`` stage followed
by the parent recipe's stages after its last training stage (prune, distill, export, quantize
...). The task continues the parent's labels (new ones appended, ``task.labels`` as a map that
also accepts the new data's spellings, ``label_map`` for the rest). Then, unless the method is
naive or ``naive=False``, the same update runs with method naive on the same seed, and every
model is scored on the new dev set (the gain) and on the original dev set (forgetting), paired
against the parent and against naive (``lepton.pipeline.update_report``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lepton.core.errors import ArtifactError, RecipeError
from lepton.data import DataSplitConfig, load_split
from lepton.evaluation.scorecard import Report
from lepton.pipeline.artifact import read_manifest
from lepton.pipeline.recipe import Recipe, apply_override, interpolate, parse_recipe, read_yaml
from lepton.stages import declared
from lepton.tasks import TaskConfig, TaskSpec

log = logging.getLogger("lepton")

METHODS = ("naive", "replay", "l2sp", "lora")
# Settings of the parent's training stage an update keeps (its own defaults otherwise).
_CARRIED = ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "weight_decay", "warmup", "max_grad_norm",
            "group_by_length", "eval_every", "metric", "keep_best", "early_stopping", "checkpoint_every")


def check_parent(model: str | os.PathLike[str]) -> dict[str, Any]:
    """The parent's manifest, every file verified; an exported or quantized model is refused
    (training needs the float PyTorch model it was made from)."""
    folder = Path(model)
    manifest = read_manifest(folder)
    history = manifest.get("history") or []
    changed = [r.get("name") or r.get("kind") for r in history
               if declared(r.get("kind"), "quantizes") or declared(r.get("kind"), "produces_runtime")]
    if changed or manifest.get("format") != "safetensors":
        what = f"made by {', '.join(map(str, changed))}" if changed else f"format {manifest.get('format')}"
        raise ArtifactError(f"{folder}: an exported or quantized model ({what}) cannot be trained further; update "
                            "its float parent instead (the same recipe run without its export/quantize "
                            "stages, or the finetune-only recipe) and re-apply the recipe: lepton update "
                            "FLOAT_MODEL --data NEW --recipe RECIPE")
    if not manifest.get("recipe"):
        raise ArtifactError(f"{folder}: its manifest holds no recipe; pass --recipe RECIPE")
    return manifest


def check_naive(model: str | os.PathLike[str], parent: Path) -> Path:
    """``model``, verified, when it is a naive update of ``parent`` (its lineage names the parent's
    manifest); anything else is refused: a naive run of another parent compares nothing."""
    from lepton.pipeline.lineage import parent_of

    folder = Path(model)
    manifest = read_manifest(folder)
    mine = (manifest.get("lineage") or {}).get("parent") or {}
    expected = parent_of(str(parent)) or {}
    if not mine or mine.get("manifest_file_sha256") != expected.get("manifest_file_sha256"):
        raise ArtifactError(f"--naive-model {folder}: not an update of {parent} (its lineage names "
                            f"{mine.get('path') or 'no parent'}); give the naive update of the same parent")
    if not any((r.get("settings") or {}).get("method") == "naive" for r in manifest.get("history") or []):
        raise ArtifactError(f"--naive-model {folder}: not made by lepton update --method naive")
    return folder


def parent_recipe(manifest: dict[str, Any], recipe: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The recipe tree the update follows: ``recipe`` (a file) or the one in the parent's manifest."""
    if recipe is None:
        return dict(manifest["recipe"])
    tree = read_yaml(recipe)
    if not isinstance(tree, dict):
        raise RecipeError(f"{recipe}: a recipe is a YAML mapping at the top level")
    try:
        return dict(interpolate(tree, os.environ))
    except RecipeError as err:
        raise RecipeError(f"{recipe}: {err}") from None


def later_stages(stages: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the last training stage, the stages after it) of a recipe's stage list."""
    trained = [i for i, s in enumerate(stages) if isinstance(s, dict) and declared(s.get("kind"), "trains")]
    if not trained:
        return None, [s for s in stages if isinstance(s, dict)]
    return stages[trained[-1]], list(stages[trained[-1] + 1:])


def label_plan(parent: TaskSpec, new_labels: set[str],
               label_map: Mapping[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """(task.labels map, labels to drop): the parent's labels first (their raw values, aliases and
    display names all accepted), then the new data's spellings mapped by ``label_map`` (a value
    of None or "" drops that label's rows), then labels never seen before, appended in order."""
    labels = dict(zip(parent.raw_labels, parent.labels))
    for raw, name in [*parent.aliases.items(), *((n, n) for n in parent.labels)]:
        labels.setdefault(raw, name)
    drop = []
    for raw, target in label_map.items():
        if not target:
            drop.append(raw)
            continue
        name = str(target)
        if raw in parent.raw_labels and labels[raw] != name:
            raise RecipeError(f"--label-map {raw}={name}: {raw!r} already means {labels[raw]!r} to the parent")
        else:
            labels[raw] = name
    for raw in sorted(new_labels - set(labels) - set(drop)):
        labels[raw] = raw
    return labels, drop


def _data(path: str, drop: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(path)}
    if drop:
        out["drop_labels"] = drop
    try:
        DataSplitConfig.model_validate(out)
    except ValueError as err:
        raise RecipeError(f"{what} {path}: {str(err).splitlines()[-1].strip()}") from None
    return out


def build_recipe(model: Path, manifest: dict[str, Any], base: dict[str, Any], *, data: str, dev: str | None,
                 method: str, label_map: Mapping[str, str | None], replay_data: str | None,
                 out: Path) -> dict[str, Any]:
    """The update's recipe tree (before ``--set`` overrides)."""
    if method not in METHODS:
        raise RecipeError(f"--method {method!r}: unknown (known: {', '.join(METHODS)})")
    if dev is None:
        raise RecipeError("--dev: give the new data's labelled dev set (the update selects on it and "
                          "measures its gain there)")
    spec = TaskSpec.model_validate(manifest["task"])
    task = {k: v for k, v in (base.get("task") or {"kind": spec.kind}).items() if k != "labels"}
    columns = TaskConfig.model_validate(task).columns()
    seen = load_split(DataSplitConfig.model_validate(_data(data, [], "--data")), columns, name="train",
                      kind=spec.split_kind)
    if seen.labels is None:
        raise RecipeError(f"--data {data}: no labels (an update learns from labelled data; the task reads "
                          f"labels from column {columns.label!r})")
    raw_seen = {x for item in seen.labels for x in (item if isinstance(item, list) else [item])}
    labels, drop = label_plan(spec, raw_seen, label_map)
    added = sorted(set(labels.values()) - set(spec.labels))
    if added:
        log.warning("update: %s new class(es) %s get new rows (the parent knows %s); if they are other spellings "
                    "of the parent's labels, map them instead: --label-map RAW=LABEL", len(added),
                    ", ".join(added), ", ".join(spec.labels))
    trained, later = later_stages(list(base.get("stages") or []))
    stage: dict[str, Any] = {k: v for k, v in (trained or {}).items() if k in _CARRIED}
    stage.update({"kind": "update", "name": f"update-{method}", "method": method})
    if replay_data is not None:
        stage["replay_data"] = replay_data
    output = {"dir": str(out), **{k: v for k, v in (base.get("output") or {}).items() if k == "rehearsal_items"}}
    return {"schema_version": 1, "name": f"{base.get('name') or model.name}-update", "model": str(model),
            "task": {**task, "labels": labels},
            "data": {"train": _data(data, drop, "--data"), "dev": _data(dev, drop, "--dev")},
            "stages": [stage, *later], "evaluate": {**(base.get("evaluate") or {}), "split": "dev"},
            "output": output, "seed": base.get("seed", 0), "device": base.get("device", "auto"),
            "smoke": bool(base.get("smoke", False))}


def _naive_recipe(tree: dict[str, Any], out: Path) -> dict[str, Any]:
    """The same update with method naive, trained only (the float model), cheaply measured."""
    stage = {k: v for k, v in tree["stages"][0].items() if k not in ("replay_data", "replay_items", "l2sp",
                                                                     "fisher", "fisher_items", "lora")}
    stage.update({"method": "naive", "name": "update-naive"})
    evaluate = {**tree["evaluate"], "memory": False, "robustness": False, "rounds": 1, "latency_items": 5,
                "warmup": 0, "throughput_batches": 1, "baseline": False}
    return {**tree, "stages": [stage], "evaluate": evaluate, "output": {"dir": str(out), "rehearsal_items": 0}}


def update(model: str | os.PathLike[str], data: str, dev: str | None = None, *,
           recipe: str | os.PathLike[str] | None = None, method: str = "naive",
           label_map: Mapping[str, str | None] | None = None, old_dev: str | None = None,
           replay_data: str | None = None, naive: bool = True, overrides: Sequence[str] = (),
           out_dir: str | os.PathLike[str] = "runs/update", force: bool = False,
           progress: bool = True, naive_model: str | os.PathLike[str] | None = None) -> Report:
    """Update the saved model ``model`` on ``data`` (selecting on ``dev``) by ``method``, re-apply
    the recipe's stages after training, write ``out_dir`` (model, report); returns the report,
    whose ``update`` entry holds the gain and forgetting tables (see the module docstring).
    ``naive_model``: a naive update of the same parent made before (``OUT/model`` of ``lepton update
    --method naive``), compared against instead of training naive again."""
    from lepton.pipeline.api import run
    from lepton.pipeline.report import write_report
    from lepton.pipeline.update_report import measure_update

    parent = Path(model)
    manifest = check_parent(parent)
    given_naive = check_naive(naive_model, parent) if naive_model is not None else None
    base = parent_recipe(manifest, recipe)
    out = Path(out_dir).expanduser()
    tree = build_recipe(parent, manifest, base, data=data, dev=dev, method=method, label_map=label_map or {},
                        replay_data=replay_data, out=out)
    for assignment in overrides:
        apply_override(tree, assignment)
    the_recipe = parse_recipe(tree, source="lepton update")
    report = run(the_recipe, out_dir=out, force=force, progress=progress, keep_work=True)
    assert report is not None  # one process
    try:
        naive_folder = given_naive
        if naive_folder is None and naive and the_recipe.stages[0].method != "naive":  # type: ignore[attr-defined]
            log.info("update: the same update with method naive, for comparison")
            naive_out = out / "work" / "naive"
            run(parse_recipe(_naive_recipe(the_recipe.resolved_dict(), naive_out), source="lepton update (naive)"),
                out_dir=naive_out, force=True, progress=progress)
            naive_folder = naive_out / "model"
        old = _old_dev(base, old_dev)
        report.update = measure_update(the_recipe, parent, out, naive_folder, old)
        write_report(report, out)
    finally:
        shutil.rmtree(out / "work", ignore_errors=True)
    return report


def _old_dev(base: dict[str, Any], old_dev: str | None) -> tuple[DataSplitConfig, TaskConfig] | None:
    """The original dev set (``--old-dev``, else the parent recipe's data.dev) and the task
    section whose columns read it; None when neither names one."""
    task = TaskConfig.model_validate({k: v for k, v in (base.get("task") or {}).items() if k != "labels"})
    chosen = {"path": old_dev} if old_dev is not None else (base.get("data") or {}).get("dev")
    if chosen is None:
        log.warning("update: the parent's recipe has no data.dev and no --old-dev was given: forgetting "
                    "is not measured")
        return None
    try:
        return DataSplitConfig.model_validate(chosen), task
    except ValueError as err:
        raise RecipeError(f"--old-dev: {str(err).splitlines()[-1].strip()}") from None


__all__ = ["update", "Recipe"]
