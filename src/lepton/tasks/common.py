"""What every task kind shares: the recipe's task settings, the resolved task, encoded examples,
batching with dynamic padding, and small decoding helpers.

What differs between kinds lives in each kind's module (``lepton/tasks/sequence.py`` ...), reached
through ``kind_of(task)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from lepton.core.config import StrictModel
from lepton.core.errors import DataError, LabelError
from lepton.data import Columns
from lepton.tasks.generation_settings import GenerationSettings

if TYPE_CHECKING:
    import torch

    from lepton.data import Split

IGNORE = -100  # label id the loss skips (transformers' convention)


ColumnRef = Union[str, int]  # noqa: UP007  (a runtime alias pydantic reads)


def _known_kind(value: str) -> str:
    from lepton.tasks.kind import task_kinds

    if value not in task_kinds:
        from lepton.core.registry import suggest

        raise ValueError(f"unknown task kind {value!r}{suggest(value, task_kinds.names())} "
                         f"(known: {', '.join(task_kinds.names())})")
    return value


_GENERATIVE_KEYS = ("prompt", "target", "prompt_template", "chat", "system", "max_target_length", "generation")


class TaskConfig(StrictModel):
    kind: str  # a registered task kind (lepton.tasks.task_kinds)
    text: ColumnRef | list[ColumnRef] | None = None  # default: "text", or token column 0 for CoNLL
    text_pair: ColumnRef | None = None  # second sentence of a pair (sequence classification)
    label: ColumnRef | None = None  # default: "label", or the last column for CoNLL
    # Label order, or raw value -> display name (e.g. {"0": negative, "1": positive}); several
    # raw values may share one name (files that spell the labels differently).
    # Default: the sorted set of labels seen in the training data.
    labels: list[str] | dict[str, str] | None = None
    max_length: int = Field(default=128, gt=1, le=8192)
    # Generative kinds (lepton/tasks/generation.py, language_modeling.py)
    prompt: ColumnRef | None = None  # generation: the prompt column (default "prompt"; "source" for parallel files)
    target: ColumnRef | None = None  # generation: the target column (default "target")
    prompt_template: str | None = None  # generation: str.format over columns, e.g. "Translate: {source}"
    chat: bool = False  # generation: wrap the prompt in the tokenizer's chat template
    system: str | None = None  # generation with chat: the system message
    max_target_length: int = Field(default=128, gt=1, le=8192)  # generation: target tokens kept
    generation: GenerationSettings | None = None  # decoding settings (greedy, beam, sampling ...)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: Any) -> Any:
        # YAML reads `0: negative` with an int key; labels are compared as strings.
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(value, list):
            return [str(v) for v in value]
        return value

    @field_validator("kind")
    @classmethod
    def _kind_is_registered(cls, value: str) -> str:
        return _known_kind(value)

    @model_validator(mode="after")
    def _checked_by_kind(self) -> TaskConfig:
        from lepton.tasks.kind import kind_of

        kind = kind_of(self)
        kind.check_config(self)
        if kind.uses_labels:  # a classifier: the generative keys would be ignored, so say so
            given = [k for k in _GENERATIVE_KEYS if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"{', '.join(given)}: only for the generative kinds (generation, "
                                 f"language_modeling), not {self.kind}")
        return self

    def resolved_columns(self) -> tuple[ColumnRef | tuple[ColumnRef, ...], ColumnRef | None, ColumnRef]:
        """(text, text_pair, label) with the per-kind defaults filled in."""
        from lepton.tasks.kind import kind_of

        default_text, default_label = kind_of(self).default_columns()
        text = next((c for c in (self.prompt, self.text) if c is not None), default_text)
        label = next((c for c in (self.target, self.label) if c is not None), default_label)
        return (tuple(text) if isinstance(text, list) else text), self.text_pair, label

    def columns(self) -> Columns:
        """Which data columns hold the text, the pair and the label, defaults filled in."""
        text, pair, label = self.resolved_columns()
        return Columns(text=text, text_pair=pair, label=label, template=self.prompt_template)

    @property
    def split_kind(self) -> str:
        from lepton.tasks.kind import kind_of

        return kind_of(self).split_kind


class TaskSpec(BaseModel):
    kind: str  # a registered task kind
    labels: list[str] = []  # display names, in model output order (classifiers)
    raw_labels: list[str] = []  # the label values as they appear in the data, same order
    aliases: dict[str, str] = {}  # more raw values -> display name (two files spelling labels differently)
    max_length: int = 128
    pair: bool = False  # sequence classification on sentence pairs
    options: dict[str, Any] = {}  # kind-specific resolved settings, kept in the manifest

    @field_validator("kind")
    @classmethod
    def _kind_is_registered(cls, value: str) -> str:
        return _known_kind(value)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def split_kind(self) -> str:
        from lepton.tasks.kind import kind_of

        return kind_of(self).split_kind


def _natural_key(value: str) -> tuple[int, Any]:
    return (0, int(value)) if value.lstrip("-").isdigit() else (1, value)


def build_task(config: TaskConfig, train: Split | None) -> TaskSpec:
    """The resolved task of a recipe (for classifiers: its label set fixed)."""
    from lepton.tasks.kind import kind_of

    return kind_of(config).build_spec(config, train)


def label_set_spec(config: TaskConfig, train: Split | None) -> TaskSpec:
    """Fix the label set: from the recipe when given, else the sorted labels of the training data."""
    aliases: dict[str, str] = {}
    if isinstance(config.labels, dict):
        # Several raw values may share a name (say "1" in one file, "World" in another): the
        # first is the label's raw value, the others are aliases.
        raw, names = [], []
        for value, name in config.labels.items():
            if name in names:
                aliases[value] = name
            else:
                raw.append(value)
                names.append(name)
    elif isinstance(config.labels, list):
        raw, names = list(config.labels), list(config.labels)
    else:
        if train is None or train.labels is None:
            raise DataError("task.labels: give the label set, or labelled data.train to infer it from")
        seen: set[str] = set()
        for item in train.labels:
            seen.update(item if isinstance(item, list) else [item])
        raw = sorted(seen, key=_natural_key)
        names = list(raw)
    if len(raw) < 2:
        raise DataError(f"task.labels: a classifier needs at least 2 labels, found {raw}")
    if len(set(raw)) != len(raw) or len(set(names)) != len(names):
        raise DataError("task.labels: labels must be unique")
    return TaskSpec(kind=config.kind, labels=names, raw_labels=raw, aliases=aliases,
                    max_length=config.max_length, pair=config.text_pair is not None)


@dataclass
class Encoded:
    """A tokenized split: unpadded inputs plus label ids, ready for batching."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int] | list[list[int]] | None  # per example, or per sub-token (NER, IGNORE-filled)
    word_ids: list[list[int | None]] | None = None  # NER: sub-token -> word index
    n_words: list[int] | None = None  # NER: words per sentence (before truncation)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @staticmethod
    def concat(parts: list[Encoded]) -> Encoded:
        """The examples of ``parts`` one after another (index offsets add up in order). A field
        is kept only where every part has it."""
        def joined(name: str) -> list[Any] | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else [x for v in values for x in v]

        return Encoded(input_ids=joined("input_ids"), token_type_ids=joined("token_type_ids"),
                       labels=joined("labels"), word_ids=joined("word_ids"), n_words=joined("n_words"))


def label_ids(split: Split, task: TaskSpec) -> list[int] | list[list[int]] | None:
    """Map raw labels to ids; a label outside the task's set is an error naming the row."""
    from lepton.tasks.kind import kind_of

    if split.labels is None:
        return None
    if not kind_of(task).uses_labels:  # generation: the gold outputs are the target texts
        return list(split.labels)
    index = {raw: i for i, raw in enumerate(task.raw_labels)}
    index.update({raw: task.labels.index(name) for raw, name in task.aliases.items()})
    out: list[Any] = []
    for i, item in enumerate(split.labels):
        values = item if isinstance(item, list) else [item]
        for v in values:
            if v not in index:
                raise LabelError(f"{split.sources[i]}: label {v!r} is not in the label set "
                                 f"{list(index)} (set task.labels to change it)")
        out.append([index[v] for v in item] if isinstance(item, list) else index[item])
    return out


def encode(split: Split, task: TaskSpec, tokenizer: Any) -> Encoded:
    """``split`` tokenized for ``task``, labels mapped to ids (as the task's kind does it)."""
    from lepton.tasks.kind import kind_of

    return kind_of(task).encode(split, task, tokenizer)


def align_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """A word's tag on its first sub-token; IGNORE on special tokens and later sub-tokens."""
    out, previous = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == previous else tags[w])
        previous = w
    return out


# ---------------------------------------------------------------------------------------------
# Batching: dynamic padding, length-grouped order for training, sorted order for inference.


def train_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """This epoch's batches, a pure function of (seed, epoch) so a resumed run sees the same order.

    Length grouping: shuffle, cut into mega-batches of 50 batches, sort each by length, then
    shuffle the batch order. Batches hold similar lengths (little padding) yet stay random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mega = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(encoded: Encoded, indices: list[int], pad_id: int, *,
            pad_to: int | None = None, with_labels: bool = True) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(encoded.input_ids[i]) for i in indices)
    if pad_to is not None:
        width = max(width, pad_to)
    n = len(indices)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long) if encoded.token_type_ids is not None else None
    for row, i in enumerate(indices):
        ids = encoded.input_ids[i]
        input_ids[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids)] = 1
        if types is not None:
            types[row, :len(ids)] = torch.tensor(encoded.token_type_ids[i])
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    if with_labels and encoded.labels is not None:
        first = encoded.labels[indices[0]]
        if isinstance(first, list):
            labels = torch.full((n, width), IGNORE, dtype=torch.long)
            for row, i in enumerate(indices):
                lab = encoded.labels[i]
                labels[row, :len(lab)] = torch.tensor(lab)
        else:
            labels = torch.tensor([encoded.labels[i] for i in indices], dtype=torch.long)
        batch["labels"] = labels
    return batch


# ---------------------------------------------------------------------------------------------
# Decoding model outputs


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def word_predictions(logits: np.ndarray, word_ids: list[int | None], n_words: int) -> list[int]:
    """Per-word label ids from sub-token logits (first sub-token); truncated words get -1."""
    out = [-1] * n_words
    previous = None
    for pos, w in enumerate(word_ids):
        if w is not None and w != previous and pos < len(logits):
            out[w] = int(np.argmax(logits[pos]))
        previous = w
    return out
