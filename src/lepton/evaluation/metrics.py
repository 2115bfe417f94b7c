"""Cheap point metrics for model selection during training, and turning logits into labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton.tasks import Encoded, TaskSpec, word_predictions

HEADLINE = {"sequence_classification": "accuracy", "token_classification": "entity_f1"}

_KNOWN = {
    "sequence_classification": ["accuracy", "macro_f1", "f1", "loss"],
    "token_classification": ["entity_f1", "token_accuracy", "loss"],
}


def known_metrics(kind: str) -> list[str]:
    return _KNOWN[kind]


def predicted_ids(logits: list[np.ndarray], enc: Encoded, task: TaskSpec) -> list[Any]:
    """Class id per example, or per word (NER: first sub-token; truncated words -> -1)."""
    if task.kind == "sequence_classification":
        return [int(np.argmax(x)) for x in logits]
    assert enc.word_ids is not None and enc.n_words is not None
    return [word_predictions(x, w, n) for x, w, n in zip(logits, enc.word_ids, enc.n_words)]


def tags_of(ids: list[list[int]], task: TaskSpec) -> list[list[str]]:
    # A word cut off by max_length has no prediction; it counts as "O" (outside any entity).
    return [[task.labels[i] if i >= 0 else "O" for i in sent] for sent in ids]


def quick_metrics(logits: list[Any], enc: Encoded, task: TaskSpec, gold: Any) -> dict[str, float]:
    pred = predicted_ids(logits, enc, task)
    if task.kind == "sequence_classification":
        from lepton.evaluation.quality import sequence_point_metrics

        point = sequence_point_metrics(gold, pred, task.num_labels)
        return {k: point[k] for k in _KNOWN["sequence_classification"] if k in point}
    from seqeval.metrics import f1_score

    true_tags = [[task.labels[i] for i in sent] for sent in gold]
    pred_tags = tags_of(pred, task)
    correct = sum(int(a == b) for t, q in zip(true_tags, pred_tags) for a, b in zip(t, q))
    total = sum(len(t) for t in true_tags)
    return {"entity_f1": float(f1_score(true_tags, pred_tags)), "token_accuracy": correct / max(total, 1)}
