"""Tasks: the recipe's task settings, the resolved task, and the registry of task kinds.

Each kind (``sequence.py``, ``token.py`` ...) is one module and one ``register_task_kind`` call;
everything outside this package asks ``kind_of(task)`` instead of comparing kind names.
"""

from __future__ import annotations

from lepton.tasks.common import (
    IGNORE,
    ColumnRef,
    Encoded,
    TaskConfig,
    TaskSpec,
    align_labels,
    build_task,
    collate,
    encode,
    label_ids,
    softmax,
    sorted_batches,
    train_batches,
    word_predictions,
)
from lepton.tasks.kind import MetricInfo, Paired, TaskKind, kind_of, register_task_kind, task_kinds

__all__ = ["IGNORE", "ColumnRef", "Encoded", "MetricInfo", "Paired", "TaskConfig", "TaskKind", "TaskSpec",
           "align_labels", "build_task", "collate", "encode", "kind_of", "label_ids", "register_task_kind",
           "softmax", "sorted_batches", "task_kinds", "train_batches", "word_predictions"]


def _load_builtin_kinds() -> None:
    # The kind modules import lepton.tasks.common and lepton.tasks.kind only, so no cycle.
    from lepton.tasks import generation, language_modeling, sequence, token  # noqa: F401


_load_builtin_kinds()
