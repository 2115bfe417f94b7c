"""One search worker: the baseline once, then trials until the study has enough of them.

Each trial turns the sampled settings into a plain recipe, runs its stages (reusing cached
prefixes), and measures the result with the evaluation harness side by side with the baseline:
quality on the same examples with a paired test, and batch-1 latency timed interleaved with the
baseline in the same process, so that speed ratios hold on a noisy machine and across machines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton.core.errors import LeptonError, RecipeError, SearchError, StageError
from lepton.pipeline.recipe import Recipe
from lepton.search import study as st
from lepton.search.prefix import Workspace, run_stages
from lepton.search.space import ENABLED, SearchSpace

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "FAIL")


@dataclass
class Baseline:
    name: str
    variant: Any  # lepton.evaluation.harness.Variant, its predictions filled
    quality: tuple[Any, Any, Any]
    metrics: dict[str, float]
    headline: str
    keys: frozenset[str] = frozenset()  # its prefix keys in the cache: never evicted


def _finetune_prefix(space: SearchSpace, recipe: Recipe) -> int:
    """Stages up to and including the first baseline stage (finetune): the baseline every trial is
    measured against."""
    first = next((i for i, s in enumerate(recipe.stages) if s.is_baseline), None)
    if first is None:
        log.warning("the recipe has no finetune stage: the baseline is the starting model as it is")
        return 0
    for i in range(first + 1):
        if space.stage_params(i):
            raise RecipeError(f"{space.source}: stages.{i}: the stages up to the first finetune make "
                              f"the baseline every trial is compared with; they cannot be searched "
                              f"({', '.join(p.name for p in space.stage_params(i))})")
    return first + 1


def quality_metrics(ws: Workspace, recipe: Recipe) -> list[str] | None:
    """The metrics the evaluation will report for this task, known before any model is trained:
    the task kind scores the evaluation split's gold labels against themselves. None when the
    kind measures quality its own way (generating text) or the names cannot be had cheaply: the
    baseline's measurement tells them then."""
    from lepton.tasks import TaskKind, build_task, kind_of, label_ids

    try:
        kind = kind_of(recipe.task)
        if type(kind).measure_quality is not TaskKind.measure_quality:
            return None
        split = ws.splits[recipe.evaluate.split]
        task = build_task(recipe.task, ws.splits.get("train"))
        gold = label_ids(split, task)
        if gold is None:
            return None
        return list(kind.quality(task, gold, gold, resamples=1, seed=0).metrics)
    except Exception as err:  # noqa: BLE001 - only an early check: the baseline's measurement decides
        log.debug("metric names not known before the baseline: %s", err)
        return None


def ranking_split(ws: Workspace, recipe: Recipe) -> Any:
    """The split trials are ranked on: data.validation (given or carved from train) when the recipe
    chooses on it, so that ``best/`` is scored once on a split that chose nothing; else the
    evaluation split (the report says then that it both chose and scored)."""
    chooses = recipe.data.selection()
    return ws.splits[chooses] if chooses in ws.splits else ws.splits[recipe.evaluate.split]


def build_baseline(space: SearchSpace, ws: Workspace, recipe: Recipe, eval_config: Any) -> Baseline:
    from lepton.evaluation.harness import Variant, measure_quality
    from lepton.pipeline.artifact import load_bundle
    from lepton.search.prefix import save_into_cache

    k = _finetune_prefix(space, recipe)
    base_recipe = recipe.model_copy(update={"stages": recipe.stages[:k]})
    work = ws.out_dir / "trials" / f"baseline-{os.getpid()}"
    if k:
        run_stages(ws, base_recipe, work, shareable=k, cache_last=True)
    key = ws.prefix_key(base_recipe, k)
    folder = ws.cached(key) or save_into_cache(ws, ws.starting_bundle(base_recipe), key, base_recipe, 0)
    shutil.rmtree(work, ignore_errors=True)
    name = recipe.stage_names()[k - 1] if k else "pretrained"
    variant = Variant(name=name, stage_path=recipe.stage_names()[:k],
                      bundle=load_bundle(folder, verify=False, device=ws.device), folder=folder)
    split = ranking_split(ws, recipe)
    quality = measure_quality(variant, split, eval_config, recipe.seed)
    metrics = {m: v.value for m, v in quality[0].metrics.items()}
    log.info("baseline %s: %s %.4f on %d %s examples", name, quality[0].headline,
             metrics[quality[0].headline], len(split), split.name)
    return Baseline(name=name, variant=variant, quality=quality, metrics=metrics,
                    headline=quality[0].headline,
                    keys=frozenset(ws.prefix_key(base_recipe, j) for j in range(k + 1)))


def _kind_of_failure(err: BaseException) -> str:
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower():
        return "out_of_memory"
    if isinstance(err, StageError) and "parity" in str(err).lower():
        return "parity"
    if isinstance(err, LeptonError):
        return "stage_error"
    return "error"


@dataclass
class Worker:
    space: SearchSpace
    ws: Workspace
    baseline: Baseline
    objectives: list[str]
    max_drop: dict[str, float]
    eval_config: Any
    done_seconds: list[float] = field(default_factory=list)

    # -- one trial ------------------------------------------------------------------------------

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sampled settings: param name -> recipe value; a stage switched off gets no settings."""
        values: dict[str, Any] = {}
        off: set[int] = set()
        for p in self.space.params:
            if p.stage in off:
                continue
            if p.kind in ("choice", "enabled"):
                stored = trial.suggest_categorical(p.name, p.distribution().choices)
            elif p.kind == "int":
                stored = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                stored = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            values[p.name] = p.value_of(stored)
            if p.kind == "enabled" and not stored:
                off.add(p.stage)
        return values

    def shareable(self, values: dict[str, Any]) -> int:
        """Leading stages of this trial's plain recipe that other trials can share (no float in them)."""
        kept = [i for i in range(len(self.space.stage_names))
                if values.get(f"{self.space.stage_names[i]}.{ENABLED}", True)]
        floats = {p.stage for p in self.space.params if p.kind == "float"}
        return next((j for j, i in enumerate(kept) if i in floats), len(kept))

    def objective(self, trial: Any) -> tuple[float, ...]:
        started = time.perf_counter()
        values = self.suggest(trial)
        trial.set_user_attr("settings", values)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        same = self._same_settings_done(trial)
        if same is not None:
            return self._copy(trial, same)
        try:
            result = self._run(trial, values)
        except KeyboardInterrupt:
            trial.set_user_attr("failure_kind", "interrupted")
            trial.set_user_attr("failure", "interrupted (Ctrl-C); the trial is not counted as done")
            raise
        except Exception as err:  # recorded, and the search goes on
            kind = "bad_combination" if isinstance(err, RecipeError) else _kind_of_failure(err)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            trial.set_user_attr("failure_kind", kind)
            trial.set_user_attr("failure", f"{type(err).__name__}: {reason}"[:2000])
            log.warning("trial %d failed (%s): %s", trial.number, kind, reason)
            raise st.TrialFailed(reason) from err
        finally:
            shutil.rmtree(self.ws.out_dir / "trials" / str(trial.number) / "work", ignore_errors=True)
            self.done_seconds.append(time.perf_counter() - started)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        return result

    def _same_settings_done(self, trial: Any) -> Any:
        """A finished trial with exactly these settings (a small space is sampled twice): reuse it."""
        from optuna.trial import TrialState

        params = trial.params
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != trial.number and t.params == params and "metrics" in t.user_attrs:
                return t
        return None

    def _copy(self, trial: Any, same: Any) -> tuple[float, ...]:
        self._record(trial, {k: v for k, v in same.user_attrs.items() if k not in ("settings", "worker")})
        trial.set_user_attr("same_as", same.number)
        log.info("trial %d: the same settings as trial %d, results reused", trial.number, same.number)
        return tuple(same.values)

    def _run(self, trial: Any, values: dict[str, Any]) -> tuple[float, ...]:
        from lepton.evaluation.harness import Variant, evaluate_variants
        from lepton.pipeline.artifact import save_artifact

        recipe = self.space.plain_recipe(values)  # RecipeError: a bad combination
        folder = self.ws.out_dir / "trials" / str(trial.number)
        result = run_stages(self.ws, recipe, folder / "work", shareable=self.shareable(values))
        model_dir = save_artifact(result.bundle, folder / "model", recipe=recipe.resolved_dict())
        variant = Variant(name=f"trial-{trial.number}", stage_path=[r.name for r in result.bundle.history],
                          bundle=result.bundle, folder=model_dir)
        split = ranking_split(self.ws, recipe)
        base, card = evaluate_variants(
            [self.baseline.variant, variant], split, self.eval_config, seed=recipe.seed,
            baseline=self.baseline.name, qualities={self.baseline.name: self.baseline.quality}, memory=False)
        attrs = self._attrs(base, card, result, model_dir)
        self._record(trial, attrs)
        log.info("trial %d: %s", trial.number, describe(values, attrs))
        return tuple(self._value(name, attrs) for name in self.objectives)

    def _record(self, trial: Any, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for metric, limit in self.max_drop.items():  # the budget, as the samplers' constraint
            if metric in attrs["drop_points"]:  # (a copied trial measured under another budget may lack it)
                trial.set_constraint(f"max_drop_{metric}", attrs["drop_points"][metric] - limit)

    def _attrs(self, base: Any, card: Any, result: Any, model_dir: Path) -> dict[str, Any]:
        c = card.comparison
        metrics = {m: v.value for m, v in card.quality.metrics.items()}
        drop = {m: round((self.baseline.metrics[m] - metrics[m]) * 100, 4) for m in self.max_drop}
        lat_b, lat_t = base.efficiency.latency_ms["b1_real"].p50, card.efficiency.latency_ms["b1_real"].p50
        return {
            "metrics": metrics, "drop_points": drop,
            "paired": {"metric": c.metric, "delta": c.delta, "ci95": [c.ci95_low, c.ci95_high],
                       "p_bootstrap": c.p_bootstrap, "significant": c.significant, "verdict": c.verdict},
            "latency_ms": lat_t, "baseline_latency_ms": lat_b, "speedup_b1": lat_b / lat_t,
            "speedup_throughput": c.speedup_throughput, "size_mb": card.efficiency.size_mb,
            "size_ratio": base.efficiency.size_mb / card.efficiency.size_mb,
            "runtime": card.efficiency.runtime, "stages_reused": result.reused, "stages_run": result.ran,
            "model": str(model_dir),
        }

    @staticmethod
    def _value(name: str, attrs: dict[str, Any]) -> float:
        if name == "latency":
            return 1.0 / attrs["speedup_b1"]
        if name == "size":
            return attrs["size_mb"]
        if name == "throughput":
            return attrs["speedup_throughput"] or 0.0
        return attrs["metrics"][name]


def describe(values: dict[str, Any], attrs: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
    drops = ", ".join(f"{m} {-d + 0.0:+.2f} points" for m, d in attrs["drop_points"].items())
    return (f"{settings or 'no settings'} -> {drops}, {attrs['speedup_b1']:.2f}x faster at batch 1, "
            f"{attrs['size_ratio']:.2f}x smaller ({attrs['stages_reused']} stages reused)")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def finished(study: Any) -> int:
    """Trials that count towards ``--trials``: complete or failed, not those Ctrl-C cut short."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
               if t.user_attrs.get("failure_kind") != "interrupted")


def check_study(study: Any, space: SearchSpace, objectives: list[str], max_drop: dict[str, float],
                where: str) -> None:
    """One study, one space: refuse to mix trials of another recipe into it."""
    attrs = study.user_attrs
    mine = {"lepton_space": space.fingerprint(), "lepton_objectives": objectives}
    for key, value in mine.items():
        if key in attrs and attrs[key] != value:
            what = "search space" if key == "lepton_space" else "objectives"
            raise SearchError(f"{where}: study {study.study_name!r} was made for a different {what} "
                              f"({attrs[key]} here, {value} now); use another output folder, --storage "
                              "or study name")
        study.set_user_attr(key, value)
    if attrs.get("lepton_max_drop", max_drop) != max_drop:
        log.warning("the accuracy budget changed since earlier trials (%s, now %s): the sampler keeps "
                    "their old constraint; the front and the best model use the new one",
                    attrs["lepton_max_drop"], max_drop)
    study.set_user_attr("lepton_max_drop", max_drop)
