"""One small learnable example per registered task kind, for the contract tests.

A new task kind adds its row here: the task settings of a recipe, a writer of tiny train/dev
files, and the family of tiny model it needs (a fixture of ``model_dirs`` in the contract tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import write_conll, write_sentiment_tsv


@dataclass(frozen=True)
class KindExample:
    task: dict[str, Any]  # the recipe's task: section
    write: Callable[[Path, int, int], Path]  # (path, n, seed) -> path
    suffix: str  # file suffix of the written data
    family: str  # which tiny model: "encoder" (BERT-like) ...
    predict_inputs: tuple[Any, ...]  # raw inputs for Predictor.predict


EXAMPLES: dict[str, KindExample] = {
    "sequence_classification": KindExample(
        task={"kind": "sequence_classification", "text": "sentence", "label": "label"},
        write=write_sentiment_tsv, suffix=".tsv", family="encoder",
        predict_inputs=("a good movie", "the plot was dull and boring")),
    "token_classification": KindExample(
        task={"kind": "token_classification"}, write=write_conll, suffix=".conll", family="encoder",
        predict_inputs=("Alice visited Paris .", "Bob visited Rome")),
}
