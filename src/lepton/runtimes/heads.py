"""Extra task heads on a shared encoder (multi-task models).

A bundle's ``model`` is the main task's transformers model. Each extra head is another transformers
task model of the same architecture (``...ForSequenceClassification`` or
``...ForTokenClassification``) whose encoder attribute (``model.base_model_prefix``, e.g. ``bert``)
is the main model's encoder object. Stages that change the encoder in place (pruning, dropping
layers) therefore change every head's; ``bind`` re-attaches the encoder wherever it is used,
since a stage may also replace the main model object (merging LoRA adapters does).

On disk a head is only what is not the encoder (pooler outputs, dropout and the classifier):
``heads/<name>.safetensors``, with its task in the manifest. transformers has no notion of
several heads on one encoder, so this file is Lepton's own.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton.core.errors import ArtifactError, StageError
from lepton.runtimes.registry import runtime_info
from lepton.tasks import TaskSpec, kind_of

HEADS_DIR = "heads"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Head:
    task: TaskSpec
    # A transformers task model whose encoder is the main model's (see ``bind``); None once the
    # model runs on ONNX Runtime, where the head is an output of the main graph.
    model: Any


def head_bundle(bundle: Any, name: str | None) -> Any:
    """The bundle of one task of a multi-task model (None or the main task's name: ``bundle``)."""
    from lepton.core.errors import LeptonError
    from lepton.runtimes.bundle import ModelBundle

    if name is None or name == bundle.main_task:
        return bundle
    if name not in bundle.heads:
        tasks = ", ".join(repr(t) for t in [bundle.main_task, *bundle.heads])
        raise LeptonError(f"task {name!r}: this model predicts {tasks}")
    head = bundle.heads[name]
    # PyTorch: the head's model on the main model's encoder; ONNX Runtime: the same graph read
    # at the head's output (an exported multi-task model computes every head in one pass).
    model = bundle.model.head(name) if bundle.runtime_info.is_graph else bind(head.model, bundle.model)
    return ModelBundle(model=model, tokenizer=bundle.tokenizer, task=head.task,
                       runtime=bundle.runtime, source=bundle.source, history=bundle.history,
                       main_task=name)


def check_name(name: str, where: str) -> None:
    if not _NAME.match(name):
        raise StageError(f"{where}: task name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")


def encoder_of(model: Any) -> Any:
    prefix = getattr(model, "base_model_prefix", "")
    encoder = getattr(model, prefix, None) if prefix else None
    if encoder is None:
        raise StageError(f"{type(model).__name__} exposes no shared encoder (base_model_prefix); "
                         "multi-task heads need a transformers encoder model")
    return encoder


def bind(head: Any, main: Any) -> Any:
    """Point ``head``'s encoder at ``main``'s (the same module object, so weights are shared)."""
    setattr(head, head.base_model_prefix, encoder_of(main))
    return head


def make_head(main: Any, task: TaskSpec, where: str) -> Any:
    """A new task model for ``task`` sharing ``main``'s encoder; its head weights start fresh."""
    kind = kind_of(task)
    config = copy.deepcopy(main.config)
    for key, value in kind.model_kwargs(task).items():
        setattr(config, key, value)
    if kind.pools and getattr(encoder_of(main), "pooler", True) is None:
        raise StageError(f"{where}: the main model's encoder has no pooler (it was loaded for a task "
                         f"that does not pool), so a {kind.title} head cannot share it; make the "
                         f"{kind.title} task the recipe's main task")
    try:
        head = kind.auto_model().from_config(config)
    except ValueError as err:
        raise StageError(f"{where}: {type(main).__name__} has no {task.kind} head ({err})") from None
    head.to(next(main.parameters()).device)
    return bind(head, main)


def head_state(head: Any) -> dict[str, Any]:
    """The head's own weights: everything outside the encoder."""
    prefix = head.base_model_prefix + "."
    return {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items() if not k.startswith(prefix)}


def save_heads(heads: dict[str, Head], main: Any, folder: Path, runtime: str = "torch") -> dict[str, Any]:
    """Write each head's weights; returns the manifest entry (name -> task and file). ONNX: the
    heads are outputs of ``model.onnx`` (name -> task and output)."""
    from safetensors.torch import save_file

    if not heads:
        return {}
    if runtime_info(runtime).is_graph:
        return {name: {"task": head.task.model_dump(), "output": f"logits.{name}"} for name, head in heads.items()}
    (folder / HEADS_DIR).mkdir(exist_ok=True)
    entry = {}
    for name, head in heads.items():
        bind(head.model, main)
        rel = f"{HEADS_DIR}/{name}.safetensors"
        save_file(head_state(head.model), str(folder / rel))
        entry[name] = {"task": head.task.model_dump(), "file": rel}
    return entry


def load_heads(entry: Any, main: Any, folder: Path, runtime: str = "torch") -> dict[str, Head]:
    """The heads a manifest lists, rebuilt on ``main``'s encoder, weights loaded strictly (ONNX:
    outputs of the main graph)."""
    from pydantic import ValidationError
    from safetensors.torch import load_file

    if not entry:
        return {}
    where = f"{folder / 'lepton.json'}: heads"
    if not isinstance(entry, dict):
        raise ArtifactError(f"{where} is malformed")
    heads = {}
    for name, item in entry.items():
        try:
            task = TaskSpec.model_validate(item["task"])
            if runtime_info(runtime).is_graph:
                if item["output"] != f"logits.{name}":
                    raise KeyError(name)
                heads[name] = Head(task=task, model=None)
                continue
            if not re.fullmatch(rf"{HEADS_DIR}/[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}\.safetensors", item["file"]):
                raise KeyError(name)  # a head file lives in heads/, never elsewhere
            path = folder / item["file"]
        except (KeyError, TypeError, ValidationError):
            raise ArtifactError(f"{where}.{name} is malformed") from None
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (the manifest lists head {name!r})")
        model = make_head(main, task, f"{where}.{name}")
        state = load_file(str(path))
        prefix = model.base_model_prefix + "."
        expected = {k for k in model.state_dict() if not k.startswith(prefix)}
        if set(state) != expected:
            raise ArtifactError(f"{path}: weights do not fit a {task.kind} head "
                                f"(expected {sorted(expected)}, found {sorted(state)})")
        model.load_state_dict(state, strict=False)
        model.eval()
        heads[name] = Head(task=task, model=model)
    return heads
