"""What flows between stages (ModelBundle) and what a stage may use (RunContext)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel

from lepton.runtimes.registry import RuntimeInfo, runtime_info

if TYPE_CHECKING:
    from lepton.data import Split
    from lepton.tasks import TaskSpec


class StageRecord(BaseModel):
    """One completed stage, as written to the manifest."""

    index: int
    kind: str
    name: str
    settings: dict[str, Any]
    started: str
    seconds: float
    summary: dict[str, Any] = {}


@runtime_checkable
class TrainHook(Protocol):
    """What a stage leaves in ``ModelBundle.train_hooks`` for the next training stage (e.g.
    gradual pruning's masks): called after each optimizer step and once at the end."""

    def after_step(self, model: Any, step: int, total_steps: int) -> None: ...

    def finish(self, model: Any) -> dict[str, Any] | None: ...


@dataclass
class ModelBundle:
    model: Any  # transformers PreTrainedModel (torch runtime)
    tokenizer: Any  # PreTrainedTokenizerBase
    task: TaskSpec
    runtime: str = "torch"
    source: str = ""  # the model spec the run started from
    history: list[StageRecord] = field(default_factory=list)
    # What the next training stage calls after each optimizer step and once at its end (e.g.
    # gradual pruning's masks); see TrainHook above.
    train_hooks: list[TrainHook] = field(default_factory=list)
    # Multi-task models: name -> lepton.runtimes.heads.Head (another task's head on this model's encoder).
    heads: dict[str, Any] = field(default_factory=dict)
    main_task: str = "main"  # the name of ``task`` among the heads' names

    @property
    def family(self) -> str:
        """The model family (lepton.models.family) whose implementation of a stage runs on this
        model, as the task's kind says."""
        from lepton.tasks.kind import kind_of

        return kind_of(self.task).family(self.model)

    @property
    def runtime_info(self) -> RuntimeInfo:
        """What this bundle's runtime is and can do (``lepton.runtimes.runtime_info``)."""
        return runtime_info(self.runtime)


@dataclass
class RunContext:
    splits: dict[str, Split]
    seed: int
    device: str
    out_dir: Path
    work_dir: Path  # checkpoints and per-stage snapshots live here
    resume: bool = False
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("lepton"))
    progress: bool = True  # show progress bars (only when stderr is a terminal)
    stage_dir: Path | None = None  # the running stage's own folder for checkpoints (set by the runner)
    stage_index: int = 0
    stage_name: str = ""  # the running stage's name in reports ("finetune", "recover", ...)
    stage_summary: dict[str, Any] = field(default_factory=dict)  # what the running stage reports
    # Earlier stages of this run: name -> saved snapshot folder (a teacher for distill, say).
    snapshots: dict[str, Path] = field(default_factory=dict)
    columns: Any = None  # lepton.data.Columns of the recipe's task (for extra text, e.g. distill's transfer)
    select: str = "dev"  # the split stages choose on (keep-best, early stopping): data.selection()

    def selection(self) -> Split | None:
        """The split that chooses checkpoints, layers and the like; None when the recipe has none."""
        return self.splits.get(self.select)

    def split(self, name: str) -> Split:
        from lepton.core.errors import StageError

        if name not in self.splits:
            raise StageError(f"this stage needs data.{name} in the recipe")
        return self.splits[name]
