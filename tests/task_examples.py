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
from tests.gen_tiny import write_pairs_tsv, write_text_tsv


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
    "generation": KindExample(
        task={"kind": "generation", "prompt_template": "Translate: {prompt}",
              "generation": {"max_new_tokens": 6}},
        write=write_pairs_tsv, suffix=".tsv", family="decoder", predict_inputs=("a man runs", "the dog")),
    "language_modeling": KindExample(
        task={"kind": "language_modeling", "max_length": 32, "generation": {"max_new_tokens": 4}},
        write=write_text_tsv, suffix=".tsv", family="decoder", predict_inputs=("a man", "two children")),
}
