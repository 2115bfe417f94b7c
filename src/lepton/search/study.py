"""The Optuna side of a search: storage, sampler, objectives and the budget as a constraint.

Optuna's storage is the only coordination: a journal file in the output folder by default (any
number of local workers, resumable), or a database URL that workers on several machines share.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from lepton.core import atomic
from lepton.core.errors import MissingExtraError, SearchError, StorageError

log = logging.getLogger(__name__)

OBJECTIVES = {  # name -> direction; any other name is a quality metric of the task (maximized)
    "latency": "minimize",  # batch-1 median latency / the baseline's, timed interleaved
    "size": "minimize",  # MB on disk
    "throughput": "maximize",  # items/s at the largest batch / the baseline's
}
JOURNAL = "study.journal"


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError as err:
        raise MissingExtraError("optuna is needed for lepton search: pip install 'lepton[search]'") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:  # a handler's filter sees its children's records
        if _no_traceback_for_recorded_failures not in handler.filters:
            handler.addFilter(_no_traceback_for_recorded_failures)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class TrialFailed(Exception):
    """A trial failed for a reason already recorded in its user attributes."""


_interrupted_trials: set[str] = set()


def _no_traceback_for_recorded_failures(record: logging.LogRecord) -> bool:
    # Optuna logs a failed trial with its traceback; ours are recorded with their reason already.
    if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
        record.exc_info = None
    # A trial Ctrl-C cut short is no failure: the search says it was interrupted, in one line.
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
        number = re.match(r"Trial (\d+) ", str(record.msg))
        if number:
            _interrupted_trials.add(number.group(1))
        return False
    number = re.match(r"Trial (\d+) failed with value ", str(record.msg))
    if number and number.group(1) in _interrupted_trials:
        return False
    return True


def parse_duration(text: str | None, what: str = "--timeout") -> float | None:
    """'2h', '90m', '1h30m', '45s', '3600' -> seconds (above 0)."""
    if text is None:
        return None
    where = f"{what} {text!r}: " if what else ""
    s = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", s)
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    elif not s or parts is None or not any(parts.groups()):
        raise SearchError(f"{where}expected a duration like 2h, 90m, 1h30m or 3600 (seconds)")
    else:
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + sec
    if not 0 < seconds < float("inf"):
        raise SearchError(f"{where}give a duration above 0, e.g. 2h, 90m or 3600 (seconds)")
    return seconds


def directions(objectives: list[str], metrics: list[str]) -> list[str]:
    out = []
    for name in objectives:
        if name in OBJECTIVES:
            out.append(OBJECTIVES[name])
        elif name in metrics:
            out.append("maximize")
        else:
            from lepton.core.registry import suggest

            known = [*metrics, *OBJECTIVES]
            raise SearchError(f"--objectives: unknown objective {name!r}{suggest(name, known)} "
                              f"(known: {', '.join(known)})")
    if len(set(objectives)) != len(objectives):
        raise SearchError(f"--objectives {','.join(objectives)}: an objective appears twice")
    return out


def database_url(url: str) -> str:
    """SQLAlchemy's default PostgreSQL driver is psycopg2; use psycopg (3) when only it is there."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                return "postgresql+psycopg://" + url[len(plain):]
    return url


def open_storage(storage: str | None, out_dir: Path) -> Any:
    """A database URL (``postgresql://``, ``sqlite:///``) or a journal file (default OUT/study.journal)."""
    optuna = require_optuna()
    if storage and "://" in storage:
        url = database_url(storage)
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=30, grace_period=120,
                    # A worker that died mid-trial: its trial is failed and its settings tried again once.
                    failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1))
            except ImportError as err:
                raise MissingExtraError(f"--storage {redact(storage)}: the database driver is missing "
                                        f"({err}); pip install 'lepton[search]'") from None
            except Exception as err:  # SQLAlchemy's errors: no server, bad login, no database
                # Workers starting together race to create the tables; the loser finds them made.
                if attempt < 2 and ("already exists" in str(err) or "UniqueViolation" in str(err)):
                    time.sleep(1.0 + attempt)
                    continue
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SearchError(f"--storage {redact(storage)}: cannot open the study database "
                                  f"({first})") from None
        raise AssertionError("unreachable")  # the loop returns or raises
    path = Path(storage).expanduser() if storage else out_dir / JOURNAL
    from lepton.search.folder import check_journal

    check_journal(path)  # a damaged journal, or a file of the user's that is none: one line, left alone
    with atomic.io_errors(path, "open the study journal"):
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        backend = JournalFileBackend(str(path))
    try:
        return optuna.storages.JournalStorage(backend)
    except (StorageError, KeyboardInterrupt):
        raise
    except Exception as err:  # records that are JSON but not a study Optuna can replay
        if atomic.is_io_error(err):
            raise StorageError(f"{path}: cannot read the study journal: {atomic.describe(err)}") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SearchError(f"{path}: not a readable study journal ({type(err).__name__}: {reason}); to start "
                          "the study over, delete the file or choose another -o / --storage") from None


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)  # never print a password


def make_sampler(kind: str, *, seed: int | None, startup: int, trials: int) -> Any:
    """The budget reaches the samplers through each trial's constraints (``Trial.set_constraint``,
    <= 0: within the budget), which TPE and NSGA-II weigh; the random sampler ignores them."""
    optuna = require_optuna()
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        # The default population (50) would make a small search random; a generation ~ a quarter.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True)


def worker_seed(seed: int | None, base: int) -> int:
    # Two workers seeded alike would propose the same trials; a fixed seed is for one worker.
    return seed if seed is not None else (base * 1_000_003 + os.getpid()) % (2**31)
