"""New labels for a saved classifier: a class its parent never saw gets a new output row, the old
rows are kept, and the label order is the parent's labels first, the new ones appended.

Used when a run starts from a saved Lepton model (``lepton update``, or a recipe whose model is
one) whose labels are a subset of the task's.
"""

from __future__ import annotations

import logging
from typing import Any

from lepton.tasks.common import TaskSpec
from lepton.tasks.kind import kind_of

log = logging.getLogger(__name__)


def extend_labels(parent: TaskSpec, task: TaskSpec) -> bool:
    """Reorder ``task`` (in place) to continue ``parent``'s labels: the parent's labels first, in
    its order and with its raw values and aliases, then the task's other labels appended. The
    task's own raw values for a parent label become aliases of it (a new file that spells
    ``negative`` where the parent's data said ``0``). False (``task`` untouched) when the two
    cannot continue each other: another kind, no label set, or a parent label the task lacks."""
    if parent.kind != task.kind or not kind_of(task).uses_labels or not parent.labels:
        return False
    if not set(parent.labels) <= set(task.labels):
        return False
    raw_of = dict(zip(task.labels, task.raw_labels))
    added = [name for name in task.labels if name not in parent.labels]
    aliases = dict(parent.aliases)
    taken = set(parent.raw_labels) | {raw_of[n] for n in added}
    for name in parent.labels:
        raw = raw_of.get(name, name)
        if raw not in taken and raw not in aliases:
            aliases[raw] = name
    for raw, name in task.aliases.items():
        if raw not in taken:
            aliases.setdefault(raw, name)
    task.labels = [*parent.labels, *added]
    task.raw_labels = [*parent.raw_labels, *(raw_of[n] for n in added)]
    task.aliases = aliases
    return True


def output_layer(model: Any, rows: int) -> tuple[Any, str, Any]:
    """(parent module, attribute name, Linear) of the classifier's output layer: the last Linear
    with ``rows`` outputs (``classifier``, ``classifier.out_proj``, ``score`` ...)."""
    import torch

    found = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == rows:
            found = name, module
    if found is None:
        raise ValueError(f"no output layer with {rows} rows")
    name, layer = found
    owner_name, _, attr = name.rpartition(".")
    return model.get_submodule(owner_name) if owner_name else model, attr, layer


def grow_head(model: Any, task: TaskSpec, old_rows: int) -> int:
    """Give ``model``'s classifier one row per label of ``task`` beyond the first ``old_rows``
    (copied unchanged); new rows start like a new head's (normal, the model's initializer range;
    bias 0). Returns the number of rows added."""
    import torch

    new_rows = task.num_labels
    if new_rows == old_rows:
        return 0
    owner, attr, old = output_layer(model, old_rows)
    layer = torch.nn.Linear(old.in_features, new_rows, bias=old.bias is not None,
                            device=old.weight.device, dtype=old.weight.dtype)
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
    with torch.no_grad():
        layer.weight.normal_(0.0, std)
        layer.weight[:old_rows] = old.weight
        if old.bias is not None:
            layer.bias.zero_()
            layer.bias[:old_rows] = old.bias
    setattr(owner, attr, layer)
    config = model.config
    config.num_labels = new_rows  # also rewrites id2label/label2id to placeholders
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {name: i for i, name in enumerate(task.labels)}
    if hasattr(model, "num_labels"):
        model.num_labels = new_rows
    log.info("new labels %s: the classifier grows from %d to %d rows (the old rows kept)",
             task.labels[old_rows:], old_rows, new_rows)
    return new_rows - old_rows
