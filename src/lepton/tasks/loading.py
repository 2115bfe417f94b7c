"""A model with a task's head, loaded as the task's kind declares it."""

from __future__ import annotations

import pickle
from typing import Any

from lepton.core.errors import ModelLoadError
from lepton.models import first_line
from lepton.tasks.common import TaskSpec
from lepton.tasks.kind import kind_of


def load_for_task(location: str, task: TaskSpec, *, trust_remote_code: bool = False) -> Any:
    """Load a transformers model with ``task``'s head (a classifier sized for its labels, new if
    the checkpoint has none), as the task's kind declares it."""
    from safetensors import SafetensorError

    kind = kind_of(task)
    try:
        model = kind.auto_model().from_pretrained(location, trust_remote_code=trust_remote_code,
                                                  **kind.model_kwargs(task))
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as err:
        # SafetensorError, UnpicklingError: a damaged model.safetensors or pytorch_model.bin
        raise ModelLoadError(f"model: cannot load {location}: {first_line(err)}") from None
    return model
