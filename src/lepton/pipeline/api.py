"""The Python API: ``run`` a recipe, ``evaluate`` a saved model. The CLI is a thin layer on this."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton.core import __version__, atomic, distributed, outdir
from lepton.core.errors import DataError, LeptonError, RecipeError, StageError, StorageError
from lepton.data import DataSplitConfig, Split, carve, load_split
from lepton.evaluation.scorecard import Report
from lepton.pipeline.artifact import load_bundle, now_iso, read_manifest, save_artifact
from lepton.pipeline.recipe import EvaluateConfig, Recipe, TaskConfig, load_recipe
from lepton.runtimes.bundle import ModelBundle, RunContext, StageRecord
from lepton.runtimes.saved import is_saved_model
from lepton.tasks import TaskSpec, build_task

log = logging.getLogger("lepton")


def resolve_device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device: cuda was asked for but no CUDA device is available")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def load_splits(recipe: Recipe) -> dict[str, Split]:
    splits = {}
    for name in ("train", "dev", "test", "validation"):
        cfg = getattr(recipe.data, name)
        if cfg is None:
            continue
        columns = recipe.task.columns()
        if name == recipe.evaluate.split and recipe.evaluate.slices:  # slice columns: lepton.evaluation.slices
            columns = dataclasses.replace(columns, extra=tuple(recipe.evaluate.slices))
        split = load_split(cfg, columns, name=name, kind=recipe.task.split_kind)
        if split.skipped:
            log.warning("data.%s: skipped %d bad rows (first: %s)", name, len(split.skipped), split.skipped[0])
        log.info("data.%s: %d examples from %s", name, len(split), cfg.path)
        if name == "train":
            _warn_one_class(split, cfg.path)
        splits[name] = split
    if recipe.data.selection() == "validation" and "validation" not in splits and "train" in splits:
        before = len(splits["train"])
        splits["train"], splits["validation"] = carve(splits["train"], recipe.data.validation_fraction,
                                                      recipe.seed, "validation",
                                                      whole_texts=recipe.data.validation_carve == "whole_texts")
        if recipe.data.validation_carve == "whole_texts":
            log.info("data.validation: whole texts only; %d rows contained in them left data.train as well",
                     before - len(splits["train"]) - len(splits["validation"]))
        log.info("data.validation: %d examples carved from data.train (seed %d; %d left to train on); the "
                 "stages choose on it", len(splits["validation"]), recipe.seed, len(splits["train"]))
    fairness = recipe.evaluate.fairness
    if fairness.counterfactual and (fairness.terms or fairness.groups):  # a bad term file fails before training
        from lepton.evaluation.fairness import load_lexicon, selected_groups

        selected_groups(load_lexicon(fairness.terms), fairness.groups)
    return splits


def _warn_one_class(split: Split, path: str) -> None:
    """Training data whose labels are all one class teaches the model nothing but that class."""
    if not split.labels:
        return
    seen: set[str] = set()
    for label in split.labels:
        seen.update(map(str, label) if isinstance(label, (list, tuple)) else [str(label)])
        if len(seen) > 1:
            return
    log.warning("data.train (%s): every example has the label %r; the model can only learn to "
                "predict that one class", path, next(iter(seen)))


def saved_lepton_model(location: str, task: TaskSpec, device: str) -> ModelBundle | None:
    """A saved PyTorch Lepton model at ``location`` with this task's labels, loaded whole (pruned
    layer sizes and extra task heads included); None for anything else (a new head is made).
    When the task has labels the model never saw, ``task`` is reordered to continue the model's
    (its labels first) and the classifier grows a row per new label (``lepton.tasks.new_labels``)."""
    from lepton.tasks.new_labels import extend_labels, grow_head

    folder = Path(location)
    if not is_saved_model(folder):
        return None
    saved = load_bundle(folder, device=device)
    if not saved.runtime_info.trainable or saved.task.kind != task.kind:
        return None
    if saved.task.labels != task.labels:
        if saved.heads or not extend_labels(saved.task, task):
            return None
        grow_head(saved.model, task, saved.task.num_labels)
    return saved


def _stage_names(recipe: Recipe) -> list[str]:
    return recipe.stage_names()


def _prepare_work(work: Path, recipe: Recipe, resume: bool) -> bool:
    """Make the work folder; on resume, check it belongs to this same recipe. Returns resume."""
    marker = work / "recipe.json"
    current = json.dumps(recipe.resolved_dict(), sort_keys=True)
    if resume and marker.is_file():
        try:
            saved = marker.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise StorageError(f"{marker}: cannot read the interrupted run's recipe "
                               f"({atomic.describe(err)}); use --force to start over") from None
        if saved != current:
            raise RecipeError(f"{marker}: the recipe changed since the interrupted run; "
                              "use --force to start over")
        log.info("resuming the interrupted run in %s", work)
    else:
        if resume:
            log.info("--resume: no interrupted run in %s, starting from the beginning", work)
        elif work.exists():
            log.info("found an earlier unfinished run in %s; starting over (use --resume to continue it)", work)
        shutil.rmtree(work, ignore_errors=True)
        resume = False
    with atomic.io_errors(work, "create the work folder"):
        work.mkdir(parents=True, exist_ok=True)
    atomic.write_text(marker, current)
    return resume


def run(recipe: Recipe | str | os.PathLike[str], *, overrides: Sequence[str] = (),
        out_dir: str | os.PathLike[str] | None = None, resume: bool = False, force: bool = False,
        progress: bool = True, keep_work: bool = False) -> Report | None:
    """Run a recipe: load data and model, apply every stage, evaluate, save the artifact and report.

    Started as one of several processes (``torchrun``, ``lepton run --nproc``), the training
    stages train data-parallel. The other ranks run the stages up to the last training stage
    (every stage before it too: pruning and layer dropping are deterministic, so all ranks hold
    the same model) and then return None; rank 0 alone evaluates, writes every file and returns
    the report. Their own side files (adapters, teacher caches) go to ``work/rank-N``.

    The output folder must be new, empty, or a previous Lepton run's (``lepton.core.outdir``): an
    interrupted one continues with ``resume``, any is started over with ``force``.
    ``keep_work``: leave ``OUT/work`` (each stage's snapshot) for the caller (``lepton update``).
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise RecipeError("overrides apply to a recipe file; change the Recipe object instead")
    if recipe.trust_remote_code:
        log.warning("trust_remote_code: true: Python code shipped in the model folder %s will run "
                    "in this process; only use it with a model source you trust", recipe.model_source())
    given = out_dir if out_dir is not None else recipe.output.dir
    out = Path(given).expanduser()
    device = distributed.setup(resolve_device(recipe.device))  # joins the process group, if launched in one
    main = distributed.is_main()
    if main:
        check_output_apart_from_data(recipe, out)
    # Rank 0 alone checks and claims the folder; the others write only below work/rank-N.
    claimed = outdir.claim(given, resume=resume, force=force) if main else None
    file_log = _open_run_log(out, main, claimed)
    try:
        if main:
            resume = _prepare_work(out / "work", recipe, claimed.resume)
        resume = distributed.broadcast_object(resume)  # also waits until rank 0 has made work/ ready
        if distributed.world_size() > 1:
            log.info("data-parallel: %d processes (%s)", distributed.world_size(), distributed.backend())
        return _Run(recipe, out, device, resume=resume, progress=progress, keep_work=keep_work).execute()
    except OSError as err:  # an I/O failure no narrower handler named: one line with path and cause
        raise StorageError(f"{getattr(err, 'filename', None) or out}: {atomic.describe(err)}") from err
    finally:
        logging.getLogger("lepton").removeHandler(file_log)
        file_log.close()
        if claimed is not None:
            claimed.release()
        distributed.teardown()


def _data_paths(node: Any, where: str) -> list[tuple[str, Path]]:
    """(recipe key, path) of every data split the recipe names, wherever it sits (data:, a
    multitask task's data, a distillation transfer set ...); built-in sets have no path."""
    from pydantic import BaseModel

    found: list[tuple[str, Path]] = []
    if isinstance(node, DataSplitConfig):
        if node.path and not node.path.startswith("builtin:"):
            found.append((where, Path(node.path).expanduser()))
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            found += _data_paths(getattr(node, name), f"{where}.{name}" if where else name)
    elif isinstance(node, dict):
        for key, value in node.items():
            found += _data_paths(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += _data_paths(value, f"{where}.{i}")
    return found


def check_output_apart_from_data(recipe: Recipe, out: Path) -> None:
    """Refuse an output folder inside a data folder (a later run would read the run's files as
    data, e.g. a folder-format set takes it for a class) or one that holds the data (``--force``
    would delete it)."""
    target = Path(os.path.realpath(out))
    model = Path(recipe.model_source()).expanduser()
    if not recipe.model_source().startswith("builtin:") and model.is_dir():
        source = Path(os.path.realpath(model))
        if target == source or source in target.parents:
            raise RecipeError(f"output folder {out} lies inside the model folder {recipe.model}: the run's files "
                              "would mix with the model's; choose an -o outside it")
    for key, path in _data_paths(recipe, ""):
        data = Path(os.path.realpath(path))
        if target == data or data in target.parents:
            raise RecipeError(f"output folder {out} lies inside the data of {key} ({path}): a later run would "
                              "read the run's files as data; choose an -o outside the data")
        if target in data.parents:
            raise RecipeError(f"output folder {out} holds the data of {key} ({path}): replacing the run "
                              "would delete it; choose an -o that does not contain the data")


def _open_run_log(out: Path, main: bool, claimed: Any) -> logging.Handler:
    """OUT/run.log (rank 0; the other ranks log nowhere extra), attached to the "lepton" logger."""
    try:
        with atomic.io_errors(out / "run.log", "open the run log"):
            file_log = logging.FileHandler(out / "run.log", encoding="utf-8") if main else logging.NullHandler()
    except BaseException:
        if claimed is not None:
            claimed.release()
        raise
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lepton").addHandler(file_log)
    return file_log


def starting_model(recipe: Recipe, task: TaskSpec, device: str, *, work: Path | None = None,
                   train: Any = None) -> ModelBundle:
    """The model the first stage gets: a saved Lepton model for this task whole, else the
    recipe's model with a new task head. ``model: {new: ...}`` is built first (its tokenizer
    trained on ``train``'s texts and targets) into ``work/new-model``."""
    import torch

    from lepton.models import load_tokenizer, resolve_model
    from lepton.tasks.loading import load_for_task

    source = recipe.model_source()
    if isinstance(recipe.model, str):
        location = resolve_model(recipe.model)
    else:
        location = str(_new_model(recipe, work, train))
    torch.manual_seed(recipe.seed)  # the new task head's initial weights
    saved = saved_lepton_model(location, task, device)
    if saved is not None:  # a Lepton artifact for this task: its structure and heads carry on
        bundle = ModelBundle(model=saved.model, tokenizer=saved.tokenizer, task=task, source=source,
                             heads=saved.heads, main_task=saved.main_task)
    else:
        tokenizer = load_tokenizer(location, trust_remote_code=recipe.trust_remote_code)
        model = load_for_task(location, task, trust_remote_code=recipe.trust_remote_code).to(device)
        bundle = ModelBundle(model=model, tokenizer=tokenizer, task=task, source=source)
    _fit_max_length(bundle, source)
    log.info("model %s on %s: %d labels %s", source, device, task.num_labels, task.labels)
    return bundle


def _new_model(recipe: Recipe, work: Path | None, train: Any) -> Path:
    from lepton.models.new_model import build_new_model

    if work is None or train is None:
        raise RecipeError("model.new: building a model needs a run (its output folder and data.train)")
    texts = list(train.texts) + [str(t) for t in (train.labels or []) if isinstance(t, str)]
    folder = work / "new-model"
    if distributed.is_main():
        build_new_model(recipe.model, texts, folder, seed=recipe.seed)  # type: ignore[arg-type]
    distributed.barrier()
    return folder


def _fit_max_length(bundle: ModelBundle, source: str) -> None:
    """Inputs are cut at what the model's position table holds: task.max_length 128 on a model
    with 64 positions would train on short inputs and fail on the first long one."""
    from lepton.models.structure import input_limit

    limit = input_limit(bundle.model)
    if limit is not None and bundle.task.max_length > limit:
        log.warning("task.max_length %d is more than %s accepts (%d positions): inputs are cut at %d tokens",
                    bundle.task.max_length, source, limit, limit)
        bundle.task.max_length = limit


class _Run:
    """One process's part of ``run`` once the output folder is claimed: the stages in order (each
    snapshot and its quality kept for --resume), then, on rank 0, evaluation and the outputs."""

    def __init__(self, recipe: Recipe, out: Path, device: str, *, resume: bool, progress: bool,
                 keep_work: bool = False) -> None:
        from lepton.stages.training import TrainSettings

        self.recipe, self.out, self.work, self.device = recipe, out, out / "work", device
        self.resume, self.progress, self.keep_work = resume, progress, keep_work
        self.main, self.world = distributed.is_main(), distributed.world_size()
        self.splits = load_splits(recipe)
        self.task = build_task(recipe.task, self.splits.get("train"))
        self.eval_split = self.splits[recipe.evaluate.split]
        self.bundle = starting_model(recipe, self.task, device, work=self.work, train=self.splits.get("train"))
        self.variants: list[Any] = []  # lepton.evaluation.harness.Variant
        self.qualities: dict[str, Any] = {}
        self.names = _stage_names(recipe)
        self.snapshots: dict[str, Path] = {}  # finished stages, for stages that name one (distill's teacher)
        self.last_training = max((i for i, s in enumerate(recipe.stages) if isinstance(s, TrainSettings)),
                                 default=-1)

    def execute(self) -> Report | None:
        if self.recipe.evaluate.baseline and self.main:
            folder = self.work / "pretrained" / "snapshot"
            if not (self.resume and is_saved_model(folder)):
                save_artifact(self.bundle, folder, recipe=self.recipe.resolved_dict())
            self._remember("pretrained", [], self.bundle, folder)
        if self._training_done(-1):
            return None
        for i, (stage, name) in enumerate(zip(self.recipe.stages, self.names)):
            if not self._stage(i, stage, name):
                return None
        return self._evaluate_and_save()

    def _training_done(self, i: int) -> bool:
        """After the last training stage the other ranks have done their part and return."""
        if self.world > 1 and i == self.last_training:
            distributed.barrier()
        return not self.main and i >= self.last_training

    def _stage(self, i: int, stage: Any, name: str) -> bool:
        """Run (or, resuming, reuse) stage ``i``; False when this rank's part is done."""
        stage_dir = self.work / f"stage-{i}-{stage.kind}"
        snapshot = stage_dir / "snapshot"
        # A stage that leaves training hooks (masks the next finetune must keep) is re-run
        # rather than restored: the hooks live in memory, not in the snapshot.
        reuse = self.resume and is_saved_model(snapshot) and not (stage_dir / "hooks").exists()
        if i <= self.last_training:
            # Rank 0's answer; also a barrier: the snapshots it wrote (a teacher) are in place.
            reuse = distributed.broadcast_object(reuse)
        if reuse:
            self.bundle = load_bundle(snapshot, device=self.device)
            log.info("stage %d (%s): done in the interrupted run, reusing its result", i, name)
            if self.main:
                self._remember(name, [r.name for r in self.bundle.history], self.bundle, snapshot)
            self.snapshots[name] = snapshot
            return not self._training_done(i)
        self._apply(i, stage, name, stage_dir)
        if self._training_done(i):
            return False
        self.snapshots[name] = snapshot
        if not self.bundle.train_hooks:
            self.resume = False  # later stages start fresh; a finetune after hooks may resume
        if not self.main:
            return True
        if self.bundle.train_hooks:
            stage_dir.mkdir(parents=True, exist_ok=True)  # a stage that never trained made none
            atomic.write_text(stage_dir / "hooks", str(len(self.bundle.train_hooks)))
        save_artifact(self.bundle, snapshot, recipe=self.recipe.resolved_dict())
        self._remember(name, [r.name for r in self.bundle.history], self.bundle, snapshot)
        return True

    def _apply(self, i: int, stage: Any, name: str, stage_dir: Path) -> None:
        from lepton.stages import handler_for

        side = self.out if self.main else self.work / f"rank-{distributed.rank()}"
        ctx = RunContext(splits=self.splits, seed=self.recipe.seed, device=self.device, out_dir=side,
                         work_dir=self.work, resume=self.resume, progress=self.progress,
                         stage_dir=stage_dir, stage_index=i, stage_name=name,
                         snapshots=dict(self.snapshots), columns=self.recipe.task.columns(),
                         select=self.recipe.data.selection())
        log.info("stage %d (%s) starts", i, name)
        started, t0 = now_iso(), time.perf_counter()
        self.bundle = handler_for(stage, self.bundle.family, f"stages.{i}")(self.bundle, stage, ctx)
        record = StageRecord(index=i, kind=stage.kind, name=name,
                             settings=stage.model_dump(mode="json"), started=started,
                             seconds=round(time.perf_counter() - t0, 2), summary=ctx.stage_summary)
        self.bundle.history.append(record)
        log.info("stage %d (%s) done in %.1f s", i, name, record.seconds)

    def _remember(self, name: str, path: list[str], b: ModelBundle, folder: Path) -> None:
        """Quality now (the live model changes in later stages), cached for --resume."""
        from lepton.evaluation.harness import Variant, measure_quality

        cache = folder.parent / "quality.json"
        v = Variant(name=name, stage_path=path, bundle=b, folder=folder)
        if self.resume and cache.is_file():
            self.qualities[name] = _cached_quality(cache, v)
        else:
            log.info("evaluate %s: quality on %d %s examples", name, len(self.eval_split), self.eval_split.name)
            q, r, c = measure_quality(v, self.eval_split, self.recipe.evaluate, self.recipe.seed)
            self.qualities[name] = (q, r, c)
            atomic.write_text(cache, json.dumps({
                "predictions": v.predictions, "quality": q.model_dump(mode="json"),
                "robustness": r.model_dump(mode="json") if r else None,
                "calibration": c.model_dump(mode="json") if c else None}))
        self.variants.append(v)

    def _evaluate_and_save(self) -> Report:
        """Rank 0: every variant measured side by side; the model, report and recipe written."""
        from lepton.evaluation.environment import fingerprint
        from lepton.evaluation.harness import evaluate_variants
        from lepton.pipeline.lineage import REHEARSAL, lineage, rehearsal_sample
        from lepton.pipeline.model_card import model_card  # model card (README.md)
        from lepton.pipeline.report import write_report

        recipe, out, bundle = self.recipe, self.out, self.bundle
        # Timing needs every variant as it was, not the live model later stages changed in place.
        for v in self.variants:
            v.bundle = load_bundle(v.folder, verify=False, device=self.device)
        baseline_stages = [n for s, n in zip(recipe.stages, self.names) if s.is_baseline]
        baseline = next((v.name for v in self.variants if v.name in baseline_stages),
                        self.variants[0].name if self.variants else None)
        try:
            cards = evaluate_variants(self.variants, self.eval_split, recipe.evaluate, seed=recipe.seed,
                                      baseline=baseline, qualities=self.qualities, memory=recipe.evaluate.memory)
        except (LeptonError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - a measuring failure must not cost the trained stages
            import traceback

            details = self.work / "evaluate-error.txt"
            atomic.write_text(details, "".join(traceback.format_exception(err)))
            raise StageError(f"evaluate: measuring the variants failed ({type(err).__name__}: {err}); the trained "
                             f"stages are kept in {self.work} (the traceback is in {details}): "
                             "lepton run ... --resume measures again without retraining") from err
        report = Report(lepton_version=__version__, created=now_iso(), recipe=recipe.resolved_dict(),
                        baseline=baseline, variants=cards, environment=fingerprint(recipe.seed),
                        stages=[r.model_dump() for r in bundle.history], selection=self._selection())
        manifest_like = {"history": [r.model_dump() for r in bundle.history], "source_model": recipe.model_source(),
                         "recipe": recipe.resolved_dict(), "main_task": bundle.main_task,
                         "heads": {n: {"task": h.task.model_dump()} for n, h in bundle.heads.items()}}
        rehearsal = rehearsal_sample(recipe, self.splits.get("train"))
        save_artifact(bundle, out / "model", recipe=recipe.resolved_dict(),
                      scorecards=[c.model_dump(mode="json") for c in cards],
                      model_card=model_card(report, manifest_like),
                      environment=report.environment.model_dump(mode="json"),
                      extra_files={**({REHEARSAL: rehearsal} if rehearsal else {}), **self._drift_reference()},
                      lineage=lineage(recipe, bundle.history))
        write_report(report, out)
        # Written with the results, not at the start: a failing run must not leave a finished
        # run's folder describing a recipe its model and report do not come from.
        atomic.write_text(out / "recipe.yaml", recipe.to_yaml())
        if not self.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)  # checkpoints are only for resuming
        log.info("wrote %s and %s", out / "model", out / "report.md")
        return report


    def _selection(self) -> dict[str, Any] | None:
        return selection_of(self.recipe, self.splits) if self.recipe.stages else None

    def _drift_reference(self) -> dict[str, bytes]:
        """``data/drift_reference.json``: the evaluation set as the final model sees it, what
        ``lepton drift`` and the monitor compare new data with (lepton.evaluation.drift)."""
        from lepton.evaluation.drift import reference_files

        final = self.variants[-1].bundle if self.variants else self.bundle
        return reference_files(final, self.eval_split)


def selection_of(recipe: Recipe, splits: dict[str, Split]) -> dict[str, Any]:
    """Which split chose (keep-best, a search's ranking ...) and which scored, for the report."""
    data, scored = recipe.data, recipe.evaluate.split
    chose = data.selection() if data.selection() in splits else scored
    return {"chose_on": chose, "chose_examples": len(splits[chose]),
            "carved_from_train": chose == "validation" and data.validation is None,
            "scored_on": scored, "scored_examples": len(splits[scored])}


def _cached_quality(cache: Path, v: Any) -> tuple[Any, Any, Any]:
    """The interrupted run's quality of variant ``v`` (its predictions filled in)."""
    from lepton.evaluation.scorecard import Calibration, Robustness
    from lepton.tasks.quality import Quality

    try:
        saved = atomic.loads_json(cache.read_text(encoding="utf-8"))
        v.predictions = saved["predictions"]
        return (Quality.model_validate(saved["quality"]),
                Robustness.model_validate(saved["robustness"]) if saved["robustness"] else None,
                Calibration.model_validate(saved["calibration"]) if saved["calibration"] else None)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StorageError(f"{cache}: the interrupted run's cached result is damaged "
                           f"({atomic.describe(err)}); use --force to start over") from None


def _variant_name(path: Path, taken: set[str]) -> str:
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def _data_config(data: DataSplitConfig | dict[str, Any] | str) -> DataSplitConfig:
    if isinstance(data, DataSplitConfig):
        return data
    if isinstance(data, (str, os.PathLike)):
        data = {"path": str(data)}
    try:
        return DataSplitConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise RecipeError(f"data.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def compare(models: Sequence[str | os.PathLike[str]], data: DataSplitConfig | dict[str, Any] | str | None = None,
            *, text: Any = None, text_pair: Any = None, label: Any = None,
            config: EvaluateConfig | None = None, seed: int = 0, task: str | None = None,
            public_key: str | os.PathLike[str] | None = None) -> Report:
    """Measure saved Lepton models side by side with the run harness; the first is the baseline.

    ``data`` defaults to the evaluation split of the first model's recipe. Columns default to
    those of the recipe the first model was trained with. ``task``: which task of multi-task
    models to measure (default: the main one); its data and columns default to that task's.
    ``public_key``: refuse any model whose manifest that key's holder did not sign.
    """
    from lepton.evaluation.environment import fingerprint
    from lepton.evaluation.harness import evaluate_variants
    from lepton.pipeline.recipe import task_recipe

    if not models:
        raise RecipeError("compare: give at least one model folder")
    paths = [Path(m) for m in models]
    manifests = [read_manifest(p, public_key=public_key) for p in paths]  # verifies every checksum first
    recipe0 = manifests[0].get("recipe") or {}
    task0, data0 = task_recipe(recipe0, task)
    if data is None:
        data = _recipe_eval_data(paths[0], recipe0, data0, task)
    data_cfg = _data_config(data)
    config = config or EvaluateConfig(**{k: v for k, v in (recipe0.get("evaluate") or {}).items()
                                         if k in EvaluateConfig.model_fields and k != "split"})
    variants = _compare_variants(paths, task)
    spec: TaskSpec = variants[0].bundle.task
    task_cfg = _compare_task_config(task0 or {"kind": spec.kind}, text=text, text_pair=text_pair, label=label)
    split = _eval_split(data_cfg, task_cfg, config, spec.split_kind)
    if split.labels is None:
        raise StageError(f"{data_cfg.path}: evaluation needs labelled data")
    cards = evaluate_variants(variants, split, config, seed=seed, baseline=variants[0].name,
                              memory=config.memory)
    env = fingerprint(seed)
    _warn_other_machines(paths, manifests, env)
    return Report(lepton_version=__version__, created=now_iso(), recipe=recipe0,
                  baseline=variants[0].name, variants=cards, environment=env,
                  stages=[r.model_dump() for r in variants[-1].bundle.history])


def _eval_split(data_cfg: DataSplitConfig, task_cfg: TaskConfig, config: EvaluateConfig, kind: str) -> Split:
    """The data to measure on, with the slice columns of ``evaluate.slices`` where it has them: a
    recipe's slice columns need not exist in other data a saved model is evaluated on."""
    if config.slices:
        try:
            return load_split(data_cfg, dataclasses.replace(task_cfg.columns(), extra=tuple(config.slices)),
                              name="eval", kind=kind)
        except DataError as err:
            log.warning("evaluate.slices: measuring without slice columns (%s)", err)
    return load_split(data_cfg, task_cfg.columns(), name="eval", kind=kind)


def _recipe_eval_data(path: Path, recipe: dict[str, Any], data: dict[str, Any], task: str | None) -> Any:
    """The evaluation split of the (first) model's recipe, for ``compare`` without ``data``."""
    split_name = (recipe.get("evaluate") or {}).get("split", "dev")
    chosen = data.get(split_name) or (data.get("dev") if task is not None else None)
    if chosen is None:
        raise RecipeError(f"{path}: its recipe has no data.{split_name}; pass --data")
    return chosen


def _compare_variants(paths: list[Path], task: str | None) -> list[Any]:
    """One harness Variant per model folder (``task``'s head of a multi-task model); the models
    must solve the same kind of task with the same labels."""
    from lepton.evaluation.harness import Variant
    from lepton.runtimes.heads import head_bundle

    taken: set[str] = set()
    variants = []
    for path in paths:
        try:
            bundle = head_bundle(load_bundle(path, verify=False), task)
        except LeptonError as err:
            raise RecipeError(f"{path}: {err}") from None
        variants.append(Variant(name=_variant_name(path, taken), stage_path=[r.name for r in bundle.history],
                                bundle=bundle, folder=path))
    kinds = {v.bundle.task.kind for v in variants}
    if len(kinds) > 1:
        raise RecipeError(f"compare: the models solve different tasks ({', '.join(sorted(kinds))})")
    spec: TaskSpec = variants[0].bundle.task
    for v in variants[1:]:
        if v.bundle.task.labels != spec.labels:
            raise RecipeError(f"compare: {v.name} has labels {v.bundle.task.labels}, "
                              f"{variants[0].name} has {spec.labels}")
    return variants


def _compare_task_config(trained: dict[str, Any], *, text: Any, text_pair: Any, label: Any) -> TaskConfig:
    """The task config the models were trained with, with the columns the caller named instead."""
    overrides = {k: v for k, v in (("text", text), ("text_pair", text_pair), ("label", label)) if v is not None}
    try:
        return TaskConfig.model_validate({**trained, **overrides})
    except ValidationError as err:
        raise RecipeError(f"task: {err.errors()[0]['msg']}") from None


def _warn_other_machines(paths: list[Path], manifests: list[dict[str, Any]], env: Any) -> None:
    """Log each model that was built on another machine than the one measuring it now."""
    from lepton.evaluation.environment import Environment, same_machine

    for path, manifest in zip(paths, manifests):
        then = manifest.get("environment")
        if then:
            diffs = same_machine(Environment.model_validate(then), env)
            if diffs:
                log.warning("%s was built on a different machine (%s); all figures here are "
                            "measured now, on this one", path, "; ".join(diffs))


def evaluate(model: str | os.PathLike[str], data: DataSplitConfig | dict[str, Any] | str | None = None, *,
             text: Any = None, text_pair: Any = None, label: Any = None,
             config: EvaluateConfig | None = None, seed: int = 0, task: str | None = None,
             public_key: str | os.PathLike[str] | None = None) -> Report:
    """Evaluate one saved Lepton model with the same harness as ``run`` (see ``compare``)."""
    return compare([model], data, text=text, text_pair=text_pair, label=label, config=config, seed=seed,
                   task=task, public_key=public_key)


__all__ = ["run", "evaluate", "compare", "LeptonError"]
