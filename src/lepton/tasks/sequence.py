"""Sequence classification: one label per text (or per sentence pair)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from lepton.core.errors import LeptonError
from lepton.tasks.classification import ClassificationKind
from lepton.tasks.common import IGNORE, Encoded, label_ids, softmax
from lepton.tasks.kind import MetricInfo, Paired, register_task_kind

if TYPE_CHECKING:
    from lepton.data import Split
    from lepton.tasks.common import TaskSpec
    from lepton.tasks.quality import Quality


class ClassPrediction(BaseModel):
    label: str
    score: float = Field(description="probability of `label`")
    scores: dict[str, float] = Field(description="probability of every label")


class SequenceClassification(ClassificationKind):
    name = "sequence_classification"
    title = "sequence classification"
    split_kind = "sequence"
    pipeline_tag = "text-classification"
    hub_task_name = "Text Classification"
    card_what = "sequence (text) classification"
    example_input = "A delightful, sharp film."
    metrics = (MetricInfo("accuracy"), MetricInfo("macro_f1"), MetricInfo("f1"),
               MetricInfo("loss", higher_is_better=False, upper=None))
    labels_per_text = True
    pools = True

    def auto_model(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def encode(self, split: Split, task: TaskSpec, tokenizer: Any) -> Encoded:
        enc = tokenizer(list(split.texts), split.text_pairs, truncation=True, max_length=task.max_length)
        return Encoded(enc["input_ids"], enc.get("token_type_ids"), label_ids(split, task))

    def transfer_labels(self, enc: Encoded) -> list[Any]:
        return [IGNORE] * len(enc)

    def predictions(self, logits: list[np.ndarray], enc: Encoded, task: TaskSpec) -> list[Any]:
        return [int(np.argmax(x)) for x in logits]

    def drift_outputs(self, logits: list[np.ndarray], enc: Encoded,
                      task: TaskSpec) -> tuple[list[float], list[int] | None] | None:
        """The top label's probability and the label, per text."""
        probs = softmax(np.stack(logits)) if logits else np.zeros((0, task.num_labels))
        return [float(x) for x in probs.max(axis=1)], [int(x) for x in probs.argmax(axis=1)]

    def quick_metrics(self, logits: list[Any], enc: Encoded, task: TaskSpec, gold: Any) -> dict[str, float]:
        from lepton.tasks.quality import sequence_point_metrics

        point = sequence_point_metrics(gold, self.predictions(logits, enc, task), task.num_labels)
        return {k: point[k] for k in self.metric_names() if k in point}

    def quality(self, task: TaskSpec, gold: Any, pred: Any, *, resamples: int, seed: int) -> Quality:
        from lepton.tasks.quality import sequence_quality

        return sequence_quality(gold, pred, task.labels, resamples=resamples, seed=seed)

    def paired(self, task: TaskSpec, gold: Any, base: Any, other: Any, *, resamples: int,
               seed: int) -> Paired:
        from lepton.tasks.quality import paired_bootstrap

        g = np.asarray(gold)
        test = paired_bootstrap(np.asarray(base) == g, np.asarray(other) == g, resamples=resamples, seed=seed)
        return Paired(metric="accuracy", delta=test["delta"], ci95_low=test["ci95_low"],
                      ci95_high=test["ci95_high"], p_bootstrap=test["p_bootstrap"],
                      significant=test["significant"], p_mcnemar=test["p_mcnemar"])

    def is_single(self, item: Any, task: TaskSpec) -> bool:
        return isinstance(item, str) or (task.pair and isinstance(item, tuple))

    def input_help(self, task: TaskSpec) -> str:
        return ("(text, text_pair) tuples" if task.pair else "a text or a list of texts")

    def predict(self, predictor: Any, chunk: list[Any]) -> list[dict[str, Any]]:
        task = predictor.task
        if task.pair:
            if not all(isinstance(x, (tuple, list)) and len(x) == 2 for x in chunk):
                raise LeptonError("this model classifies sentence pairs: pass (text, text_pair) tuples")
            firsts, seconds = [str(a) for a, _ in chunk], [str(b) for _, b in chunk]
        else:
            if not all(isinstance(x, str) for x in chunk):
                raise LeptonError("pass a text or a list of texts")
            firsts, seconds = list(chunk), None
        enc = predictor.bundle.tokenizer(firsts, seconds, truncation=True, max_length=task.max_length,
                                         padding=True, return_tensors="pt")
        probs = softmax(predictor.runtime.logits(dict(enc)))
        out = []
        for row in probs:
            best = int(np.argmax(row))
            out.append({"label": task.labels[best], "score": float(row[best]),
                        "scores": {lab: float(p) for lab, p in zip(task.labels, row)}})
        return out

    def prediction_schema(self) -> type[BaseModel]:
        return ClassPrediction


register_task_kind(SequenceClassification())
