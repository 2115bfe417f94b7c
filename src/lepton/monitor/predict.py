"""Topic and sentiment for a batch of texts, from one multi-task Lepton model or two models."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from lepton.monitor.config import MonitorConfigError, PredictConfig
from lepton.tasks import kind_of

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    topic: str
    topic_score: float
    sentiment: str
    sentiment_score: float
    negative_score: float  # probability of the negative label
    scores: dict[str, float]  # every sentiment label's probability


@dataclass
class DriftBinding:
    """What the per-window drift check needs: the model's drift reference, which configured head
    it describes ("sentiment" or "topic": whose stored labels and scores are compared) and that
    head's tokenizer."""

    reference: Any  # lepton.evaluation.drift.DriftReference
    head: str
    tokenizer: Any
    model: str = ""  # where the reference came from, for messages


class Classifier(Protocol):
    negative_label: str

    def classify(self, texts: list[str]) -> list[Prediction]:
        """One prediction per text, in order."""


class ModelClassifier:
    """Predictions through ``lepton.load(model).predict(texts, task=...)``: the sentiment and the
    topic each come from a task of one of the given models (see ``PredictConfig``)."""

    def __init__(self, models: list[Any], cfg: PredictConfig) -> None:
        """``models``: loaded ``lepton.load`` predictors, in the CLI's MODEL [MODEL2] order."""
        self.cfg = cfg
        self.negative_label = cfg.negative_label
        self._sentiment = self._head(models, "sentiment")
        self._topic = self._head(models, "topic")
        if not (kind_of(self._sentiment.task).labels_per_text and kind_of(self._topic.task).labels_per_text):
            raise MonitorConfigError("predict: sentiment and topic must be tasks that give one label per text "
                                     "(sequence classification)")
        if cfg.negative_label not in self._sentiment.labels:
            raise MonitorConfigError(f"predict.negative_label: {cfg.negative_label!r} is not a label of the "
                                     f"sentiment task (its labels: {', '.join(self._sentiment.labels)})")
        same = cfg.sentiment.model == cfg.topic.model and cfg.one_pass
        self._shared = models[cfg.sentiment.model] if same else None
        self.sentiment_labels = list(self._sentiment.labels)
        self.topic_labels = list(self._topic.labels)
        self.drift: DriftBinding | None = None  # set by bind_drift (load_classifier)

    def bind_drift(self, models: list[Any], model_paths: list[str]) -> DriftBinding | None:
        """Bind the drift reference saved with the models (``lepton.evaluation.drift``) to the
        configured head it describes: the model's main task, whose labels are the reference's.
        None (logged): no model carries one, or no configured head is the task it describes."""
        from lepton.evaluation.drift import load_reference

        found = []
        for index, path in enumerate(model_paths):
            ref = load_reference(path)  # the checksum was verified when the model loaded
            if ref is None:
                continue
            found.append(path)
            for what in ("sentiment", "topic"):
                head = getattr(self, f"_{what}")
                if (getattr(self.cfg, what).model == index and head is models[index]
                        and ref.labels == list(head.labels) and ref.task_kind == head.task.kind):
                    self.drift = DriftBinding(ref, what, head.bundle.tokenizer, str(path))
                    log.info("drift check on: the %s head against %s's reference (%d %s examples)", what, path,
                             len(ref), ref.split)
                    return self.drift
        if not found:
            log.info("no drift reference; drift check off")
        else:
            log.warning("the drift reference of %s describes no configured head (sentiment or topic as the "
                        "model's main task, with the same labels); drift check off", ", ".join(found))
        return None

    def _head(self, models: list[Any], what: str) -> Any:
        ref = getattr(self.cfg, what)
        if ref.model >= len(models):
            raise MonitorConfigError(f"predict.{what}.model: {ref.model} names MODEL{ref.model + 1}, but "
                                     f"{len(models)} model{'s were' if len(models) > 1 else ' was'} given")
        model = models[ref.model]
        if ref.task is not None and ref.task not in model.tasks:
            raise MonitorConfigError(f"predict.{what}.task: {ref.task!r} is not a task of the model "
                                     f"(its tasks: {', '.join(model.tasks)})")
        return model.head(ref.task)

    def classify(self, texts: list[str]) -> list[Prediction]:
        size = self.cfg.batch_size
        if not texts:
            return []
        if self._shared is not None:  # one multi-task model: one encoder pass for both tasks
            from lepton.monitor.onepass import predict_tasks

            sentiments, topics = predict_tasks(self._shared, texts, [self.cfg.sentiment.task, self.cfg.topic.task],
                                               batch_size=size)
        else:
            sentiments = self._sentiment.predict(texts, batch_size=size)
            topics = self._topic.predict(texts, batch_size=size)
        out = []
        for s, t in zip(sentiments, topics):
            out.append(Prediction(topic=t["label"], topic_score=t["score"], sentiment=s["label"],
                                  sentiment_score=s["score"], negative_score=s["scores"][self.negative_label],
                                  scores=s["scores"]))
        return out

    def negative_drivers(self, texts: list[str], top: int = 8) -> dict[str, Any]:
        """What makes the sentiment head lean negative on ``texts`` (occlusion toward the negative
        label, lepton.evaluation.attribution): per text its words' character spans and scores
        (positive: the word raises the negative probability), and the ``top`` words that do most
        over all texts, with how many texts each appears in that way."""
        import string

        from lepton.evaluation.attribution import word_scores

        results = self._sentiment.explain(texts, target=self.negative_label) if texts else []
        items, totals, counts = [], {}, {}
        for text, result in zip(texts, results):
            words = word_scores(result["tokens"])
            items.append([{"start": w["start"], "end": w["end"], "score": round(w["score"], 4)} for w in words])
            for w in words:
                key = text[w["start"]:w["end"]].lower().strip(string.punctuation)
                if w["score"] > 0 and key:
                    totals[key] = totals.get(key, 0.0) + w["score"]
                    counts[key] = counts.get(key, 0) + 1
        ranked = sorted(totals, key=lambda k: -totals[k])[:top]
        return {"method": "occlusion", "label": self.negative_label, "items": items,
                "words": [{"word": k, "score": round(totals[k], 4), "items": counts[k]} for k in ranked]}


def alert_drivers(classifier: Any, items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The words that drove an alert's items negative (``ModelClassifier.negative_drivers``), or
    None where the classifier cannot say (a stand-in without attributions) or there are no items."""
    explain = getattr(classifier, "negative_drivers", None)
    if explain is None or not items:
        return None
    from lepton.core.errors import LeptonError

    try:
        return explain([str(i["text"]) for i in items])
    except LeptonError as err:  # e.g. a head whose kind has no attributions
        log.warning("alert: the words behind its items are not shown (%s)", err)
        return None


def load_classifier(model_paths: list[str], cfg: PredictConfig,
                    public_key: str | os.PathLike[str] | None = None, *, drift: bool = True) -> ModelClassifier:
    """Load (and verify) one or two Lepton models and bind the configured tasks. ``public_key``:
    every model must be signed by that key's holder (as ``lepton serve --require-signature``).
    ``drift``: also bind the models' drift reference (``ModelClassifier.drift``)."""
    import lepton

    if not 1 <= len(model_paths) <= 2:
        raise MonitorConfigError(f"give one multi-task model or two models (got {len(model_paths)})")
    if public_key is not None:
        from lepton.pipeline.artifact import read_manifest

        for p in model_paths:  # every signature before any model loads
            read_manifest(p, public_key=public_key)
    models = [lepton.load(p, public_key=public_key) for p in model_paths]
    classifier = ModelClassifier(models, cfg)
    if drift:
        classifier.bind_drift(models, model_paths)
    else:
        log.info("drift check off (drift.enabled is false)")
    return classifier
