"""Progress display for long loops: a rich bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

log = logging.getLogger("lepton")


class StepProgress:
    """``with StepProgress("finetune", total) as p: p.advance(1, loss=..., items_per_s=...)``.

    ``enabled=False`` turns the bar off; the periodic log lines stay.
    """

    def __init__(self, label: str, total: int, *, completed: int = 0, enabled: bool = True,
                 log_every_s: float = 30.0) -> None:
        self.label, self.total, self.completed = label, total, completed
        self.enabled = enabled
        self.log_every_s = log_every_s
        self._bar = None
        self._task = None
        self._last_log = time.monotonic()
        self.fields: dict[str, str] = {}

    def __enter__(self) -> StepProgress:
        if self.enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed,
                                            info="")
        return self

    def advance(self, n: int = 1, **fields: float | str) -> None:
        self.completed += n
        self.fields.update({k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in fields.items()})
        info = " ".join(f"{k} {v}" for k, v in self.fields.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, info=info)
        elif time.monotonic() - self._last_log >= self.log_every_s:
            # No bar (not a terminal, or bars turned off): a log line now and then instead.
            self._last_log = time.monotonic()
            log.info("%s: %d/%d %s", self.label, self.completed, self.total, info)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
