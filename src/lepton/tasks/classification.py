"""What the two classification kinds share: a fixed label set, a classification head sized to it,
and labels mapped to ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lepton.tasks.common import label_set_spec
from lepton.tasks.kind import TaskKind

if TYPE_CHECKING:
    from lepton.data import Split
    from lepton.tasks.common import TaskConfig, TaskSpec


class ClassificationKind(TaskKind):
    """A kind whose model ends in a classification head over ``task.labels``."""

    def model_kwargs(self, task: TaskSpec) -> dict[str, Any]:
        id2label = dict(enumerate(task.labels))
        return {"num_labels": len(task.labels), "id2label": id2label,
                "label2id": {v: k for k, v in id2label.items()}}

    def build_spec(self, config: TaskConfig, train: Split | None) -> TaskSpec:
        return label_set_spec(config, train)
