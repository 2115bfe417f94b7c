"""Search: the fastest and smallest model within an accuracy budget, across every technique.

``lepton.search.search(recipe)`` runs one worker of a multi-objective Optuna study over the
settings a recipe marks as searchable (see ``lepton.search.space``). Start more workers on the same
output folder (journal file) or the same ``--storage`` database URL and they fill one study.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton.core import atomic
from lepton.core.errors import SearchError
from lepton.search.folder import claim
from lepton.search.space import SearchSettings, SearchSpace, load_space, parse_space

log = logging.getLogger(__name__)

__all__ = ["search", "SearchResult", "SearchSettings", "SearchSpace", "load_space", "parse_space"]


@dataclass
class SearchResult:
    out_dir: Path
    study_name: str
    summary: dict[str, Any]  # what OUT/pareto.json holds
    best_dir: Path | None  # OUT/best, or None when no trial is within the budget
    interrupted: bool = False


def _settings(space: SearchSpace, **flags: Any) -> SearchSettings:
    """The recipe's search section with the flags given, validated like the section itself."""
    from pydantic import ValidationError

    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return space.settings
    try:
        return SearchSettings.model_validate({**space.settings.model_dump(exclude_unset=True), **given})
    except ValidationError as err:
        item = err.errors()[0]
        field = str(item["loc"][0]) if item["loc"] else ""
        shown = given.get(field, item.get("input"))
        if isinstance(shown, list):
            shown = ",".join(map(str, shown))
        elif isinstance(shown, dict):
            shown = ",".join(f"{k}={v}" for k, v in shown.items())
        flag = f"--{field.replace('_', '-')}" if field in given else f"{space.source}: search.{field}"
        raise SearchError(f"{flag} {shown!r}: {item['msg'].removeprefix('Value error, ')}") from None


def _check_names(cfg: SearchSettings, metrics: list[str] | None, budget_from: str) -> None:
    """Objectives and budget metrics the task cannot report, before anything trains (``metrics``:
    what the task's measurement reports; None: not known until the baseline is measured)."""
    from lepton.search import study as st

    if metrics is None:
        return
    if cfg.objectives:
        st.directions(cfg.objectives, metrics)
    for metric in cfg.max_drop or {}:
        if metric not in metrics:
            from lepton.core.registry import suggest

            raise SearchError(f"{budget_from} {metric}: not a metric of this task{suggest(metric, metrics)} "
                              f"(known: {', '.join(metrics)})")


def _claim_output(first: Any, out_dir: str | os.PathLike[str] | None) -> Path:
    """The study's folder, claimed; never inside the recipe's data or model (as for lepton run)."""
    from lepton.pipeline.api import check_output_apart_from_data

    given = out_dir if out_dir is not None else first.output.dir
    check_output_apart_from_data(first, Path(given).expanduser())
    return claim(given)


def search(recipe: str | os.PathLike[str] | SearchSpace, *, out_dir: str | os.PathLike[str] | None = None,
           overrides: Sequence[str] = (), trials: int | None = None, max_drop: dict[str, float] | None = None,
           objectives: list[str] | None = None, timeout: str | None = None, storage: str | None = None,
           study_name: str | None = None, sampler: str | None = None, progress: bool = True) -> SearchResult:
    """Run trials until the study holds ``trials`` finished ones (or ``timeout`` passes, or Ctrl-C),
    then write the front, the best model within the budget and its plain recipe to ``out_dir``.

    Arguments left None come from the recipe's ``search:`` section, then the defaults."""
    from lepton.search import output, runner
    from lepton.search import study as st
    from lepton.search.prefix import Workspace

    optuna = st.require_optuna()
    space = recipe if isinstance(recipe, SearchSpace) else load_space(recipe, tuple(overrides))
    cfg = _settings(space, trials=trials, max_drop=max_drop, objectives=objectives, timeout=timeout,
                    storage=storage, study_name=study_name, sampler=sampler)
    first = space.plain_recipe({})
    seconds = st.parse_duration(cfg.timeout)
    out = _claim_output(first, out_dir)
    eval_config = first.evaluate.model_copy(update={"robustness": cfg.trial_robustness, "memory": False})
    with atomic.io_errors(out / "search.log", "open the search log"):
        file_log = logging.FileHandler(out / "search.log", encoding="utf-8")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lepton").addHandler(file_log)
    try:
        storage_obj = st.open_storage(cfg.storage, out)
        ws = Workspace.open(first, out, progress=False)
        budget_from = "--max-drop" if max_drop is not None else f"{space.source}: search.max_drop"
        _check_names(cfg, runner.quality_metrics(ws, first), budget_from)  # before the baseline trains
        baseline = runner.build_baseline(space, ws, first, eval_config)
        cfg = cfg.model_copy(update={
            "max_drop": cfg.max_drop if cfg.max_drop is not None else {baseline.headline: 1.0},
            "objectives": cfg.objectives or [baseline.headline, "latency", "size"]})
        _check_names(cfg, list(baseline.metrics), budget_from)
        dirs = st.directions(cfg.objectives, list(baseline.metrics))
        name = cfg.study_name or first.name or "lepton-search"
        sampler_obj = st.make_sampler(cfg.sampler, seed=st.worker_seed(cfg.sampler_seed, first.seed),
                                      startup=cfg.startup_trials, trials=cfg.trials)
        study = optuna.create_study(storage=storage_obj, study_name=name, directions=dirs,
                                    sampler=sampler_obj, load_if_exists=True)
        runner.check_study(study, space, cfg.objectives, cfg.max_drop,
                           st.redact(cfg.storage) if cfg.storage else str(out / st.JOURNAL))
        worker = runner.Worker(space=space, ws=ws, baseline=baseline, objectives=cfg.objectives,
                               max_drop=cfg.max_drop, eval_config=eval_config)
        interrupted = _optimize(study, worker, cfg, seconds, out, progress)
        data = output.summary(study, space, baseline, cfg.objectives, cfg.max_drop, cfg.trials)
        output.write_front(out, data)
        best_dir = None
        if data["best"] is not None:
            row = next(r for r in data["front"] if r["trial"] == data["best"])
            best_dir = output.write_best(worker, row, out)
            log.info("best within the budget: trial %d -> %s", row["trial"], best_dir)
        else:
            log.warning("no trial is within the budget (%s) yet", cfg.max_drop)
        return SearchResult(out_dir=out, study_name=name, summary=data, best_dir=best_dir,
                            interrupted=interrupted)
    finally:
        logging.getLogger("lepton").removeHandler(file_log)
        file_log.close()


@contextlib.contextmanager
def _ctrl_c_remembered() -> Iterator[list[int]]:
    """Ctrl-C raises KeyboardInterrupt as usual, and is also remembered in the yielded list.

    Python turns a signal into an exception in whatever code runs at that moment; when that is a
    finalizer (``__del__`` during the garbage collection Optuna runs after each trial), the
    exception is printed and dropped, and the search would go on. The trial callback re-raises
    from the remembered signal, so a Ctrl-C always stops the search."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # a background job: leave it ignored
        yield seen
        return

    def on_sigint(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _optimize(study: Any, worker: Any, cfg: SearchSettings, seconds: float | None, out: Path,
              progress: bool) -> bool:
    """Trials until the study has ``cfg.trials`` finished ones; True when Ctrl-C stopped it."""
    from optuna.trial import TrialState

    from lepton.core.progress import StepProgress
    from lepton.search import output, runner
    from lepton.search import study as st
    from lepton.search.prefix import evict

    done = runner.finished(study)
    if done >= cfg.trials:
        log.info("the study already has %d finished trials (asked: %d): nothing to run", done, cfg.trials)
        return False
    log.info("search: %d of %d trials done; this worker runs trials until the study has %d", done,
             cfg.trials, cfg.trials)
    started = time.monotonic()
    with StepProgress("search", cfg.trials, completed=done, enabled=progress, log_every_s=0.0) as bar, \
            _ctrl_c_remembered() as ctrl_c:
        def after_trial(study: Any, trial: Any) -> None:
            if ctrl_c:  # a Ctrl-C whose KeyboardInterrupt was swallowed (see _ctrl_c_remembered)
                raise KeyboardInterrupt
            if runner.finished(study) >= cfg.trials:
                study.stop()  # (not MaxTrialsCallback: a trial Ctrl-C cut short does not count)
            data = output.summary(study, worker.space, worker.baseline, cfg.objectives, cfg.max_drop, cfg.trials)
            keep = {r["trial"] for r in data["front"]} | {t.number for t in study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,))}
            output.prune_trial_models(out, keep)
            if cfg.cache_max_gb is not None:
                evict(out / "cache", int(cfg.cache_max_gb * 1e9), keep=set(worker.baseline.keys))
            output.write_front(out, data, plot=False)
            best = next((r for r in data["front"] if r["trial"] == data["best"]), None)
            mean = sum(worker.done_seconds) / max(len(worker.done_seconds), 1)
            left = mean * max(cfg.trials - runner.finished(study), 0)
            if seconds is not None:
                left = min(left, max(seconds - (time.monotonic() - started), 0.0))
            bar.advance(runner.finished(study) - bar.completed,
                        best=(f"trial {best['trial']} {best['speedup_b1']:.2f}x" if best else "none yet"),
                        front=len(data["front"]), failed=data["trials_failed"], left=f"{left / 60:.0f} min")

        try:
            study.optimize(worker.objective, timeout=seconds, catch=(st.TrialFailed,), gc_after_trial=True,
                           callbacks=[after_trial])
        except KeyboardInterrupt:
            log.warning("interrupted: the finished trials are kept in the study; run the same command "
                        "again to go on")
            return True
    return False
