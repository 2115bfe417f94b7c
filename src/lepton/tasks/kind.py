"""The task-kind contract and its registry.

A task kind is everything Lepton knows about one family of tasks, declared in one module under
``lepton/tasks/`` and registered once: which transformers model class carries it, how examples
are encoded and batched, how outputs become predictions, which metrics it reports (headline first,
each with its direction), how quality is measured with confidence intervals and how two variants
are compared on the same examples, what a served prediction looks like, and what the model card
says. The harness, the artifact, the server, the model card and the stages ask the registry
(``kind_of(task)``); nothing outside ``lepton/tasks/`` compares a kind's name.

Adding a kind: a module with a ``TaskKind`` subclass, ``register_task_kind(MyKind())`` at its
bottom, its import in ``lepton/tasks/__init__.py``, and its rows in the contract tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from lepton.core.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    from pydantic import BaseModel

    from lepton.data import Split
    from lepton.tasks.common import Encoded, TaskConfig, TaskSpec
    from lepton.tasks.quality import Quality


@dataclass(frozen=True)
class MetricInfo:
    """A metric a kind reports: its name in scorecards, whether a larger value is better, and
    the range its values lie in (``upper`` None: unbounded above, as a perplexity)."""

    name: str
    higher_is_better: bool = True
    upper: float | None = 1.0


@dataclass
class Paired:
    """A paired comparison of two variants on the same examples (difference = other - base)."""

    metric: str
    delta: float
    ci95_low: float
    ci95_high: float
    p_bootstrap: float
    significant: bool
    p_mcnemar: float | None = None


class TaskKind:
    """Base of every task kind. Class attributes declare what the kind is; methods do its work."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # in messages: "sequence classification"
    # The shape data files are read into (lepton.data readers): "sequence" (a text, maybe a pair,
    # per row) or "tokens" (CoNLL: one token per line).
    split_kind: ClassVar[str] = "sequence"
    # The model card: the Hugging Face pipeline tag and task name, what the model does, an input
    # for the usage example, and extra arguments of transformers' ``pipeline(...)`` call.
    pipeline_tag: ClassVar[str] = ""
    hub_task_name: ClassVar[str] = ""
    card_what: ClassVar[str] = "transformer"
    example_input: ClassVar[str] = ""
    pipeline_args: ClassVar[str] = ""
    # Headline first. "loss" (the model's own loss on dev) is always last and lower-is-better.
    metrics: ClassVar[tuple[MetricInfo, ...]] = ()
    token_level: ClassVar[bool] = False  # outputs one prediction per token (tagging)
    # One label per input text with class probabilities: calibration and robustness apply, and
    # the monitor can use it as a sentiment or topic classifier.
    labels_per_text: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = True  # the task has a fixed label set (a classification head)
    pools: ClassVar[bool] = False  # its head reads the encoder's pooled output (BERT's pooler)
    # The model families (lepton.models.family) this kind's models belong to; which one a given
    # model is, ``family`` says. The stages a recipe may hold are those with an implementation for
    # one of them (lepton.stages.register).
    families: ClassVar[tuple[str, ...]] = ("encoder",)
    # How the evaluation times this kind's models (a name in lepton.evaluation's efficiency
    # registry): "forward" (one forward pass per batch, what a classifier's request costs) or
    # "generation" (time to first token, time per output token, tokens per second).
    efficiency: ClassVar[str] = "forward"
    # Drift detection (lepton.evaluation.drift): None when a saved model of this kind records a
    # drift reference; else why it records none (logged at the end of a run, said by lepton drift).
    drift_unsupported: ClassVar[str | None] = None

    # ------------------------------------------------------------------ metrics

    @property
    def headline(self) -> str:
        return self.metrics[0].name

    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def higher_is_better(self, metric: str) -> bool:
        # A name this kind does not declare (a mean over tasks, say) is a score: larger is better.
        return next((m.higher_is_better for m in self.metrics if m.name == metric), True)

    # ------------------------------------------------------------------ recipe and model

    def check_config(self, config: TaskConfig) -> None:
        """Raise ValueError (pydantic reports it at the key) for settings this kind cannot use."""

    def default_columns(self) -> tuple[Any, Any]:
        """(text column, label column) when the recipe names none."""
        return "text", "label"

    def auto_model(self) -> Any:
        """The transformers Auto class that carries this kind's head."""
        raise NotImplementedError

    def model_kwargs(self, task: TaskSpec) -> dict[str, Any]:
        """Settings ``from_pretrained`` / ``from_config`` need for ``task`` (the label count ...)."""
        return {}

    def build_spec(self, config: TaskConfig, train: Split | None) -> TaskSpec:
        raise NotImplementedError

    # ------------------------------------------------------------------ data

    def encode(self, split: Split, task: TaskSpec, tokenizer: Any) -> Encoded:
        raise NotImplementedError

    def transfer_labels(self, enc: Encoded) -> list[Any]:
        """Labels that the loss ignores, one per example of ``enc`` (unlabelled extra text)."""
        raise NotImplementedError

    def notes(self, enc: Encoded) -> list[str]:
        """What a reader of the scorecard must know about this data (truncation ...)."""
        return []

    # ------------------------------------------------------------------ outputs and quality

    def predictions(self, logits: list[np.ndarray], enc: Encoded, task: TaskSpec) -> list[Any]:
        raise NotImplementedError

    def quick_metrics(self, logits: list[Any], enc: Encoded, task: TaskSpec, gold: Any) -> dict[str, float]:
        """Point metrics for model selection during training (no intervals)."""
        raise NotImplementedError

    def quality(self, task: TaskSpec, gold: Any, pred: Any, *, resamples: int, seed: int) -> Quality:
        raise NotImplementedError

    def paired(self, task: TaskSpec, gold: Any, base: Any, other: Any, *, resamples: int,
               seed: int) -> Paired:
        raise NotImplementedError

    # ------------------------------------------------------------------ the evaluation standard

    def family(self, model: Any) -> str:
        """The model family (one of ``families``) of ``model``, a model of this kind."""
        return self.families[0]

    def measure_quality(self, variant: Any, split: Split, config: Any, seed: int) -> tuple[Any, Any, Any] | None:
        """(Quality, Robustness or None, Calibration or None) of a harness ``Variant`` on ``split``
        when this kind measures it its own way (generating text, say); None: the harness's
        measurement of label predictions (one prediction pass, quality with CIs)."""
        return None

    def drift_outputs(self, logits: list[np.ndarray], enc: Encoded,
                      task: TaskSpec) -> tuple[list[float], list[int] | None] | None:
        """What drift detection compares of the model's outputs, per example of ``enc``: its
        confidence (a probability, NaN where it has none) and its predicted label id (None for
        the whole list where the kind gives no one label per example); None: inputs only."""
        return None

    # ------------------------------------------------------------------ serving and cards

    def predict(self, predictor: Any, chunk: list[Any]) -> list[dict[str, Any]]:
        """Raw inputs (a batch of user items) -> one result dict each, for ``Predictor.predict``."""
        raise NotImplementedError

    def prediction_schema(self) -> type[BaseModel]:
        """The pydantic model of one served prediction (the server's response schema)."""
        raise NotImplementedError

    def input_help(self, task: TaskSpec) -> str:
        """What ``Predictor.predict`` accepts, for error messages and docs."""
        return "a text or a list of texts"

    def is_single(self, item: Any, task: TaskSpec) -> bool:
        """Whether ``item`` passed to ``predict`` is one input (not a list of inputs)."""
        return isinstance(item, str)

    def serving(self, predictor: Any) -> str:
        """Which HTTP app serves a loaded ``predictor`` of this kind (a name in ``lepton.serve``'s app
        registry): "predict", the shared prediction app (``/v1/predict`` with micro-batching) that
        classifiers use, or "generate" (OpenAI-style completions with iteration-level batching and
        streaming)."""
        return "predict"

    def warmup_input(self, task: TaskSpec) -> Any:
        """An input that exercises the model (a server warms up with it)."""
        return ("warm up", "warm up") if task.pair else "warm up"

    # ------------------------------------------------------------------ generation and cards

    def generate(self, predictor: Any, prompts: list[str], **settings: Any) -> list[str]:
        """Generated text per prompt (``Predictor.generate``)."""
        from lepton.core.errors import LeptonError

        raise LeptonError(f"this model does {self.title}; it does not generate text")

    def card_notes(self, source: str) -> list[str]:
        """Model-card lines about the starting model ``source`` (e.g. how its weights were made)."""
        return []

    def card_lines(self, task: TaskSpec) -> list[str]:
        """Extra model-card lines for this kind (labels, input format ...)."""
        return []


task_kinds: Registry[TaskKind] = Registry("task kind")


def register_task_kind(kind: TaskKind) -> TaskKind:
    task_kinds.add(kind.name, kind)
    return kind


def kind_of(task: Any) -> TaskKind:
    """The registered kind of ``task`` (a TaskSpec, a TaskConfig, or a kind name)."""
    return task_kinds.get(task if isinstance(task, str) else task.kind)
