"""The Python API: ``run`` a recipe, ``evaluate`` a saved model. The CLI is a thin layer on this."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton import __version__
from lepton.artifact import load_bundle, now_iso, read_manifest, save_artifact
from lepton.bundle import ModelBundle, RunContext, StageRecord
from lepton.data import Columns, DataSplitConfig, Split, load_split
from lepton.errors import LeptonError, RecipeError, StageError
from lepton.evaluation.scorecard import Report, Scorecard
from lepton.recipe import EvaluateConfig, Recipe, TaskConfig, load_recipe
from lepton.tasks import TaskSpec, build_task, encode

log = logging.getLogger("lepton")


def _device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device: cuda was asked for but no CUDA device is available")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _columns(task: TaskConfig) -> Columns:
    text, pair, label = task.resolved_columns()
    return Columns(text=text, text_pair=pair, label=label)


def load_splits(recipe: Recipe) -> dict[str, Split]:
    kind = "tokens" if recipe.task.kind == "token_classification" else "sequence"
    splits = {}
    for name in ("train", "dev", "test"):
        cfg = getattr(recipe.data, name)
        if cfg is None:
            continue
        split = load_split(cfg, _columns(recipe.task), name=name, kind=kind)
        if split.skipped:
            log.warning("data.%s: skipped %d bad rows (first: %s)", name, len(split.skipped), split.skipped[0])
        log.info("data.%s: %d examples from %s", name, len(split), cfg.path)
        splits[name] = split
    return splits


def _stage_names(recipe: Recipe) -> list[str]:
    names, seen = [], set()
    for i, stage in enumerate(recipe.stages):
        name = stage.name or stage.kind
        if name in seen:
            name = f"{name}-{i}"
        seen.add(name)
        names.append(name)
    return names


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _prepare_work(work: Path, recipe: Recipe, resume: bool) -> bool:
    """Make the work folder; on resume, check it belongs to this same recipe. Returns resume."""
    marker = work / "recipe.json"
    current = json.dumps(recipe.resolved_dict(), sort_keys=True)
    if resume and marker.is_file():
        if marker.read_text() != current:
            raise RecipeError(f"{marker}: the recipe changed since the interrupted run; "
                              "run without --resume to start over")
        log.info("resuming the interrupted run in %s", work)
    else:
        if resume:
            log.info("--resume: no interrupted run in %s, starting from the beginning", work)
        elif work.exists():
            log.info("found an earlier unfinished run in %s; starting over (use --resume to continue it)", work)
        shutil.rmtree(work, ignore_errors=True)
        resume = False
    work.mkdir(parents=True, exist_ok=True)
    _write_atomic(marker, current)
    return resume


def run(recipe: Recipe | str | os.PathLike[str], *, overrides: Sequence[str] = (),
        out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
        progress: bool = True) -> Report:
    """Run a recipe: load data and model, apply every stage, evaluate, save the artifact and report."""
    import torch

    from lepton.evaluation.environment import fingerprint
    from lepton.evaluation.harness import evaluate_bundle
    from lepton.models import load_for_task, load_tokenizer, resolve_model
    from lepton.report import write_report
    from lepton.stages import handler_for

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise RecipeError("overrides apply to a recipe file; change the Recipe object instead")
    out = Path(out_dir if out_dir is not None else recipe.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    resume = _prepare_work(work, recipe, resume)
    file_log = logging.FileHandler(out / "run.log", encoding="utf-8")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lepton").addHandler(file_log)
    try:
        device = _device(recipe.device)
        _write_atomic(out / "recipe.yaml", recipe.to_yaml())
        splits = load_splits(recipe)
        task = build_task(recipe.task, splits.get("train"))
        eval_split = splits[recipe.evaluate.split]
        location = resolve_model(recipe.model)
        tokenizer = load_tokenizer(location, trust_remote_code=recipe.trust_remote_code)
        torch.manual_seed(recipe.seed)  # the new task head's initial weights
        model = load_for_task(location, kind=task.kind, labels=task.labels,
                              trust_remote_code=recipe.trust_remote_code).to(device)
        bundle = ModelBundle(model=model, tokenizer=tokenizer, task=task, source=recipe.model)
        eval_enc = encode(eval_split, task, tokenizer)
        log.info("model %s on %s: %d labels %s", recipe.model, device, task.num_labels, task.labels)

        def score(b: ModelBundle, name: str, path: list[str]) -> Scorecard:
            return evaluate_bundle(b, eval_split, eval_enc, recipe.evaluate, name=name,
                                   stage_path=path, seed=recipe.seed)

        cards: list[Scorecard] = []
        if recipe.evaluate.baseline:
            cached = work / "scorecard-pretrained.json"
            if resume and cached.is_file():
                card = Scorecard.model_validate_json(cached.read_text())
            else:
                card = score(bundle, "pretrained", [])
                _write_atomic(cached, card.model_dump_json())
            cards.append(card)

        names = _stage_names(recipe)
        for i, (stage, name) in enumerate(zip(recipe.stages, names)):
            stage_dir = work / f"stage-{i}-{stage.kind}"
            snapshot, card_file = stage_dir / "snapshot", stage_dir / "scorecard.json"
            if resume and (snapshot / "lepton.json").is_file() and card_file.is_file():
                bundle = load_bundle(snapshot, device=device)
                cards.append(Scorecard.model_validate_json(card_file.read_text()))
                log.info("stage %d (%s): done in the interrupted run, reusing its result", i, name)
                continue
            ctx = RunContext(splits=splits, seed=recipe.seed, device=device, out_dir=out,
                             work_dir=work, resume=resume, progress=progress, stage_dir=stage_dir,
                             stage_index=i)
            log.info("stage %d (%s) starts", i, name)
            started, t0 = now_iso(), time.perf_counter()
            bundle = handler_for(stage)(bundle, stage, ctx)
            record = StageRecord(index=i, kind=stage.kind, name=name,
                                 settings=stage.model_dump(mode="json"), started=started,
                                 seconds=round(time.perf_counter() - t0, 2), summary=ctx.stage_summary)
            bundle.history.append(record)
            log.info("stage %d (%s) done in %.1f s", i, name, record.seconds)
            card = score(bundle, name, [r.name for r in bundle.history])
            save_artifact(bundle, snapshot, recipe=recipe.resolved_dict())
            _write_atomic(card_file, card.model_dump_json())
            cards.append(card)
            resume = False  # later stages start fresh

        baseline = next((c.name for c in cards if c.stage_path and c.stage_path[-1] in
                         [n for s, n in zip(recipe.stages, names) if s.kind == "finetune"]), None)
        report = Report(lepton_version=__version__, created=now_iso(), recipe=recipe.resolved_dict(),
                        baseline=baseline or (cards[0].name if cards else None), variants=cards,
                        environment=fingerprint(recipe.seed),
                        stages=[r.model_dump() for r in bundle.history])
        save_artifact(bundle, out / "model", recipe=recipe.resolved_dict(),
                      scorecards=[c.model_dump(mode="json") for c in cards])
        write_report(report, out)
        shutil.rmtree(work, ignore_errors=True)  # checkpoints are only for resuming
        log.info("wrote %s and %s", out / "model", out / "report.md")
        return report
    finally:
        logging.getLogger("lepton").removeHandler(file_log)
        file_log.close()


def evaluate(model: str | os.PathLike[str], data: DataSplitConfig | dict[str, Any] | str, *,
             text: Any = None, text_pair: Any = None, label: Any = None,
             config: EvaluateConfig | None = None, seed: int = 0) -> Report:
    """Evaluate a saved Lepton model on a data file with the same harness as ``run``.

    Columns default to those of the recipe the model was trained with.
    """
    from lepton.evaluation.environment import fingerprint
    from lepton.evaluation.harness import evaluate_bundle

    manifest = read_manifest(model)
    bundle = load_bundle(model)
    spec: TaskSpec = bundle.task
    if isinstance(data, str):
        data = {"path": data}
    if isinstance(data, dict):
        try:
            data = DataSplitConfig.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            raise RecipeError(f"data.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    trained = (manifest.get("recipe") or {}).get("task") or {"kind": spec.kind}
    task_cfg = TaskConfig.model_validate({**trained, **{k: v for k, v in
                                          (("text", text), ("text_pair", text_pair), ("label", label))
                                          if v is not None}})
    split = load_split(data, _columns(task_cfg), name="eval",
                       kind="tokens" if spec.kind == "token_classification" else "sequence")
    if split.labels is None:
        raise StageError(f"{data.path}: evaluation needs labelled data")
    enc = encode(split, spec, bundle.tokenizer)
    card = evaluate_bundle(bundle, split, enc, config or EvaluateConfig(), name=Path(model).name,
                           stage_path=[r.name for r in bundle.history], seed=seed)
    return Report(lepton_version=__version__, created=now_iso(), recipe=manifest.get("recipe") or {},
                  baseline=card.name, variants=[card], environment=fingerprint(seed),
                  stages=[r.model_dump() for r in bundle.history])


__all__ = ["run", "evaluate", "LeptonError"]
