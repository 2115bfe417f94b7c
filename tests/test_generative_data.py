"""Prompt/target data: parallel files, columns, templates, and the errors that name file and row."""

from __future__ import annotations

import gzip
import json

import pytest

from lepton.data import DataSplitConfig
from lepton.data.parallel import (
    GenerationDataError,
    ParallelSplitConfig,
    PromptSpec,
    load_pairs,
    load_parallel,
)


def _gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_parallel_gz_files_with_a_template(tmp_path):
    _gz(tmp_path / "train.en.gz", ["A dog runs.", "Two men talk."])
    _gz(tmp_path / "train.de.gz", ["Ein Hund rennt.", "Zwei Männer reden."])
    split = load_parallel(ParallelSplitConfig(source="train.en.gz", target="train.de.gz"),
                          PromptSpec(prompt_template="Translate English to German: {source}"),
                          name="train", base_dir=tmp_path)
    assert split.prompts == ["Translate English to German: A dog runs.",
                             "Translate English to German: Two men talk."]
    assert split.targets == ["Ein Hund rennt.", "Zwei Männer reden."]
    assert split.sources[1].endswith("train.en.gz:2")


def test_parallel_line_counts_differ_names_both_files(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    with pytest.raises(GenerationDataError, match=r"a\.en has 3 lines but .*a\.de has 2"):
        load_parallel(ParallelSplitConfig(source="a.en", target="a.de"), PromptSpec(), name="train",
                      base_dir=tmp_path)


def test_parallel_empty_target_names_the_line(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\n")
    (tmp_path / "a.de").write_text("eins\n\n")
    with pytest.raises(GenerationDataError, match=r"a\.en:2: empty target"):
        load_parallel(ParallelSplitConfig(source="a.en", target="a.de"), PromptSpec(), name="train",
                      base_dir=tmp_path)


def test_tsv_prompt_and_target_columns(tmp_path):
    path = tmp_path / "qa.tsv"
    path.write_text("question\tanswer\nWhere is Paris?\tFrance\nWhat is 2+2?\t4\n")
    split = load_pairs(DataSplitConfig(path=str(path)), PromptSpec(prompt="question", target="answer"),
                       name="train")
    assert split.prompts == ["Where is Paris?", "What is 2+2?"] and split.targets == ["France", "4"]


def test_missing_prompt_column_lists_the_available_ones(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhere?,There\n")
    with pytest.raises(GenerationDataError, match=r"qa\.csv: prompt column 'prompt' not found; "
                                                  r"available columns: 'question', 'answer'"):
        load_pairs(DataSplitConfig(path=str(path)), PromptSpec(target="answer"), name="train")
    with pytest.raises(GenerationDataError, match="prompt_template field 'context' not found"):
        load_pairs(DataSplitConfig(path=str(path)), PromptSpec(prompt_template="{context}: {question}",
                                                              target="answer"), name="train")


def test_jsonl_template_empty_target_and_skip(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"ctx": "Paris", "q": "capital?", "a": "France"}, {"ctx": "x", "q": "y", "a": ""},
            {"ctx": "Rome", "q": "capital?", "a": "Italy"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = PromptSpec(prompt_template="{ctx} - {q}", target="a")
    with pytest.raises(GenerationDataError, match=r"d\.jsonl:2: empty target \(column 'a'\)"):
        load_pairs(DataSplitConfig(path=str(path)), spec, name="train")
    split = load_pairs(DataSplitConfig(path=str(path), bad_rows="skip"), spec, name="train")
    assert split.prompts == ["Paris - capital?", "Rome - capital?"]
    assert len(split.skipped) == 1 and "d.jsonl:2" in split.skipped[0]


def test_limit_with_seed_keeps_pairs_together(tmp_path):
    (tmp_path / "s").write_text("".join(f"s{i}\n" for i in range(50)))
    (tmp_path / "t").write_text("".join(f"t{i}\n" for i in range(50)))
    split = load_parallel(ParallelSplitConfig(source="s", target="t", limit=7, seed=3), PromptSpec(),
                          name="train", base_dir=tmp_path)
    assert len(split) == 7
    assert all(p[1:] == t[1:] for p, t in zip(split.prompts, split.targets))
    assert split.prompts == sorted(split.prompts, key=lambda s: int(s[1:]))


def test_template_must_name_a_column():
    with pytest.raises(ValueError, match="must name at least one column"):
        PromptSpec(prompt_template="no fields here")


def test_generative_task_keys_are_refused_for_a_classifier():
    from pydantic import ValidationError

    from lepton.tasks import TaskConfig

    with pytest.raises(ValidationError, match="prompt_template: only for the generative kinds"):
        TaskConfig(kind="sequence_classification", prompt_template="Review: {text}")
    assert TaskConfig(kind="generation", prompt_template="Translate: {source}").columns().template
