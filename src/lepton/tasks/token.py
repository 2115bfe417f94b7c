"""Token classification (NER): a word's label sits on its first sub-token; the other sub-tokens
and the special tokens are ignored by the loss. Scored on entities (seqeval, BIO tags)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from lepton.core.errors import LeptonError
from lepton.tasks.classification import ClassificationKind
from lepton.tasks.common import IGNORE, Encoded, align_labels, label_ids, softmax, word_predictions
from lepton.tasks.kind import MetricInfo, Paired, register_task_kind

if TYPE_CHECKING:
    from lepton.data import Split
    from lepton.tasks.common import TaskConfig, TaskSpec
    from lepton.tasks.quality import Quality

_WORD = re.compile(r"\S+")


class Entity(BaseModel):
    entity: str = Field(description="entity type, e.g. PER")
    words: list[int] = Field(description="[first, last + 1) indices into `tokens`")
    score: float = Field(description="mean probability of the entity's tags")
    text: str
    start: int | None = Field(None, description="character offset of the entity in the input text")
    end: int | None = Field(None, description="character offset just past the entity")


class TokenPrediction(BaseModel):
    tokens: list[str] = Field(description="the input split on whitespace")
    tags: list[str] = Field(description="one BIO tag per token")
    entities: list[Entity]


def gold_tags(gold: list[list[int]], task: TaskSpec) -> list[list[str]]:
    return [[task.labels[i] for i in sent] for sent in gold]


def predicted_tags(ids: list[list[int]], task: TaskSpec) -> list[list[str]]:
    # A word cut off by max_length has no prediction; it counts as "O" (outside any entity).
    return [[task.labels[i] if i >= 0 else "O" for i in sent] for sent in ids]


class TokenClassification(ClassificationKind):
    name = "token_classification"
    title = "token classification"
    split_kind = "tokens"
    pipeline_tag = "token-classification"
    hub_task_name = "Token Classification"
    card_what = "token classification (named entities, IOB2 tags)"
    example_input = "Angela Merkel visited Paris."
    pipeline_args = ', aggregation_strategy="simple"'
    metrics = (MetricInfo("entity_f1"), MetricInfo("token_accuracy"),
               MetricInfo("loss", higher_is_better=False, upper=None))
    token_level = True

    def check_config(self, config: TaskConfig) -> None:
        if config.text_pair is not None:
            raise ValueError("text_pair is only for sequence_classification")
        if isinstance(config.text, list):
            raise ValueError("text must be one column (the token column) for token_classification")

    def default_columns(self) -> tuple[Any, Any]:
        return 0, -1  # CoNLL: the token is the first column, the tag the last

    def auto_model(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def encode(self, split: Split, task: TaskSpec, tokenizer: Any) -> Encoded:
        ids = label_ids(split, task)
        enc = tokenizer(list(split.texts), is_split_into_words=True, truncation=True,
                        max_length=task.max_length)
        word_ids = [enc.word_ids(i) for i in range(len(split))]
        sub_labels = None
        if ids is not None:
            sub_labels = [align_labels(w, tags) for w, tags in zip(word_ids, ids)]
        return Encoded(enc["input_ids"], enc.get("token_type_ids"), sub_labels, word_ids,
                       [len(t) for t in split.texts])

    def transfer_labels(self, enc: Encoded) -> list[Any]:
        return [[IGNORE] * len(ids) for ids in enc.input_ids]

    def notes(self, enc: Encoded) -> list[str]:
        cut = sum(1 for w, nw in zip(enc.word_ids or [], enc.n_words or [])
                  if nw and (max((x for x in w if x is not None), default=-1) + 1) < nw)
        if cut:
            return [f"{cut} sentences were longer than max_length; their cut-off words count as 'O'"]
        return []

    def predictions(self, logits: list[np.ndarray], enc: Encoded, task: TaskSpec) -> list[Any]:
        """Label id per word (its first sub-token); words cut off by max_length get -1."""
        assert enc.word_ids is not None and enc.n_words is not None
        return [word_predictions(x, w, n) for x, w, n in zip(logits, enc.word_ids, enc.n_words)]

    def drift_outputs(self, logits: list[np.ndarray], enc: Encoded,
                      task: TaskSpec) -> tuple[list[float], list[int] | None] | None:
        """Per sentence: the mean top-tag probability over its words (first sub-tokens); no one
        label per sentence, so no prediction mix."""
        assert enc.word_ids is not None
        out = []
        for x, words in zip(logits, enc.word_ids):
            first = [pos for pos, w in enumerate(words) if w is not None and pos < len(x)
                     and (pos == 0 or words[pos - 1] != w)]
            out.append(float(softmax(x[first]).max(axis=1).mean()) if first else float("nan"))
        return out, None

    def quick_metrics(self, logits: list[Any], enc: Encoded, task: TaskSpec, gold: Any) -> dict[str, float]:
        from seqeval.metrics import f1_score

        true_tags = gold_tags(gold, task)
        pred_tags = predicted_tags(self.predictions(logits, enc, task), task)
        correct = sum(int(a == b) for t, q in zip(true_tags, pred_tags) for a, b in zip(t, q))
        total = sum(len(t) for t in true_tags)
        return {"entity_f1": float(f1_score(true_tags, pred_tags)), "token_accuracy": correct / max(total, 1)}

    def quality(self, task: TaskSpec, gold: Any, pred: Any, *, resamples: int, seed: int) -> Quality:
        from lepton.tasks.quality import token_quality

        return token_quality(gold_tags(gold, task), predicted_tags(pred, task), resamples=resamples, seed=seed)

    def paired(self, task: TaskSpec, gold: Any, base: Any, other: Any, *, resamples: int,
               seed: int) -> Paired:
        from lepton.tasks.quality import paired_entity_f1

        test = paired_entity_f1(gold_tags(gold, task), predicted_tags(base, task), predicted_tags(other, task),
                                resamples=resamples, seed=seed)
        return Paired(metric="entity_f1", delta=test["delta"], ci95_low=test["ci95_low"],
                      ci95_high=test["ci95_high"], p_bootstrap=test["p_bootstrap"],
                      significant=test["significant"], p_mcnemar=test["p_mcnemar"])

    def input_help(self, task: TaskSpec) -> str:
        return "a text, a list of texts, or a list of token lists"

    def predict(self, predictor: Any, chunk: list[Any]) -> list[dict[str, Any]]:
        words, spans, texts = [], [], []
        for item in chunk:
            if isinstance(item, str):
                found = list(_WORD.finditer(item))
                words.append([m.group() for m in found])
                spans.append([(m.start(), m.end()) for m in found])
                texts.append(item)
            elif isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item):
                words.append(list(item))
                spans.append(None)
                texts.append(None)
            else:
                raise LeptonError("pass a text, a list of texts, or a list of token lists")
        results: list[dict[str, Any]] = [{"tokens": [], "tags": [], "entities": []} for _ in chunk]
        nonempty = [i for i, w in enumerate(words) if w]
        if not nonempty:
            return results
        enc = predictor.bundle.tokenizer([words[i] for i in nonempty], is_split_into_words=True,
                                         truncation=True, max_length=predictor.task.max_length,
                                         padding=True, return_tensors="pt")
        logits = predictor.runtime.logits(dict(enc))
        for row, i in enumerate(nonempty):
            results[i] = _tagged(words[i], spans[i], texts[i], logits[row], enc.word_ids(row),
                                 predictor.task.labels)
        return results

    def prediction_schema(self) -> type[BaseModel]:
        return TokenPrediction


def _tagged(words: list[str], spans: list[tuple[int, int]] | None, text: str | None, logits: np.ndarray,
            word_ids: list[int | None], labels: list[str]) -> dict[str, Any]:
    """One sentence's tags and entities (with character offsets when the input was a text)."""
    from seqeval.metrics.sequence_labeling import get_entities

    probs = softmax(logits)
    ids = word_predictions(logits, word_ids, len(words))
    first_pos: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in first_pos:
            first_pos[w] = pos
    tags = [labels[t] if t >= 0 else "O" for t in ids]
    entities = []
    for etype, a, b in get_entities(tags):
        score = float(np.mean([probs[first_pos[w], ids[w]] for w in range(a, b + 1) if w in first_pos]))
        ent: dict[str, Any] = {"entity": etype, "words": [a, b + 1], "score": score,
                               "text": " ".join(words[a:b + 1])}
        if spans is not None and text is not None:
            ent["start"], ent["end"] = spans[a][0], spans[b][1]
            ent["text"] = text[ent["start"]:ent["end"]]
        entities.append(ent)
    return {"tokens": words, "tags": tags, "entities": entities}


register_task_kind(TokenClassification())
