"""Selection without leakage (issue 27): the split that chooses (keep-best, early stopping,
quantize's max_drop) is data.validation or a seeded share carved from train, never the split the
report scores on; the report says which chose and which scored."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lepton.core.errors import DataError, RecipeError
from lepton.data import Split, carve
from lepton.pipeline import api
from lepton.pipeline.recipe import load_recipe
from tests.conftest import tiny_recipe, write_sentiment_tsv


def _split(n: int, labels: list[str]) -> Split:
    return Split(name="train", kind="sequence", texts=[f"t{i}" for i in range(n)], text_pairs=None,
                 labels=labels, sources=[f"f:{i}" for i in range(n)], extra={"source": [str(i % 3) for i in range(n)]})


def test_carve_is_seeded_disjoint_and_keeps_every_class() -> None:
    labels = ["a"] * 90 + ["b"] * 8 + ["c"] * 2
    rest, val = carve(_split(100, labels), 0.1, seed=3, name="validation")
    again_rest, again_val = carve(_split(100, labels), 0.1, seed=3, name="validation")
    assert val.texts == again_val.texts and rest.texts == again_rest.texts  # seeded
    assert sorted(rest.texts + val.texts, key=lambda t: int(t[1:])) == [f"t{i}" for i in range(100)]
    assert not set(rest.texts) & set(val.texts)
    assert {lab: val.labels.count(lab) for lab in "abc"} == {"a": 9, "b": 1, "c": 1}  # per class
    assert val.name == "validation" and rest.name == "train"
    assert [int(s.split(":")[1]) % 3 for s in val.sources] == [int(x) for x in val.extra["source"]]  # rows aligned
    assert carve(_split(100, labels), 0.1, seed=4, name="validation")[1].texts != val.texts


def test_a_whole_text_carve_keeps_the_pieces_of_chosen_texts_out_of_train() -> None:
    # SST-2's shape: each sentence and some of its phrases, labelled, in one train file.
    texts, labels, sentences = [], [], set()
    for i in range(40):
        sentence = f"film {i} was rather good w{i} and kind" if i % 2 else f"film {i} felt dull w{i} and long"
        texts += [sentence, " ".join(sentence.split()[:3]), " ".join(sentence.split()[2:5]), sentence]
        sentences.add(sentence)
        labels += [str(i % 2)] * 4  # the last row repeats the sentence
    split = Split(name="train", kind="sequence", texts=texts, text_pairs=None, labels=labels,
                  sources=[f"f:{i}" for i in range(len(texts))], extra={})
    rest, val = carve(split, 0.1, seed=0, name="validation", whole_texts=True)
    assert carve(split, 0.1, seed=0, name="validation", whole_texts=True)[1].texts == val.texts  # seeded
    assert val.labels.count("0") == val.labels.count("1") == 2  # a tenth of each class's whole texts
    for v in val.texts:
        assert v in sentences  # only whole sentences choose, never a phrase
        assert not any(f" {r} " in f" {v} " for r in rest.texts)  # no piece (or copy) of a choosing text trains
    # Exactly the rows inside a chosen sentence left train: its phrases, its copy, and a phrase
    # ("was rather good") that other positive sentences share with it.
    inside = [t for t in texts if any(f" {t} " in f" {v} " for v in val.texts)]
    assert len(rest) == len(split) - len(inside) and len(inside) > 4 * len(val)
    plain_rest, plain_val = carve(split, 0.1, seed=0, name="validation")
    assert any(any(f" {r} " in f" {v} " for r in plain_rest.texts) for v in plain_val.texts)  # what it prevents


def test_carve_refuses_too_little_data() -> None:
    with pytest.raises(DataError, match="too few"):
        carve(_split(1, ["a"]), 0.1, seed=0, name="validation")


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_the_recipe_says_which_split_chooses(tmp_path: Path, tiny_model_dir: Path) -> None:
    train, dev = write_sentiment_tsv(tmp_path / "t.tsv", 40), write_sentiment_tsv(tmp_path / "d.tsv", 20, 1)
    tree = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out")
    assert load_recipe(_write(tmp_path, tree)).data.selection() == "dev"  # as before: dev chooses
    tree["data"]["validation"] = {"path": str(dev)}
    assert load_recipe(_write(tmp_path, tree)).data.selection() == "validation"
    tree["data"]["select_on"] = "dev"
    with pytest.raises(RecipeError, match="select_on"):
        load_recipe(_write(tmp_path, tree))
    del tree["data"]["validation"]
    tree["data"]["select_on"] = "validation"
    tree["stages"].append({"kind": "quantize", "method": "dynamic_int8"})
    recipe = load_recipe(_write(tmp_path, tree))
    assert recipe.data.selection() == "validation" and recipe.stages[1].check_split == "validation"
    tree["stages"][1]["check_split"] = "dev"  # a stage that names its own split keeps it
    assert load_recipe(_write(tmp_path, tree)).stages[1].check_split == "dev"


def test_keep_best_reads_the_carved_split_and_the_report_says_so(tmp_path: Path, tiny_model_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lepton.stages import training

    seen: list[int] = []
    real = training.evaluate_dev

    def spy(model, enc, bundle, gold, device, **kw):  # noqa: ANN001, ANN003 - the real signature
        seen.append(len(gold))
        return real(model, enc, bundle, gold, device, **kw)

    monkeypatch.setattr(training, "evaluate_dev", spy)
    train, dev = write_sentiment_tsv(tmp_path / "t.tsv", 60), write_sentiment_tsv(tmp_path / "d.tsv", 24, 1)
    tree = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    tree["data"]["select_on"] = "validation"
    tree["data"]["validation_fraction"] = 0.25
    report = api.run(_write(tmp_path, tree), progress=False)
    assert report is not None and seen and set(seen) == {15}  # 25% of 60, never dev's 24
    assert report.selection == {"chose_on": "validation", "chose_examples": 15, "carved_from_train": True,
                                "scored_on": "dev", "scored_examples": 24}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Chosen on data.validation (carved from data.train), 15 examples; scored on data.dev, 24 examples: " \
           "the split that scored chose nothing." in text


def test_a_run_that_chooses_on_dev_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    train, dev = write_sentiment_tsv(tmp_path / "t.tsv", 40), write_sentiment_tsv(tmp_path / "d.tsv", 16, 1)
    api.run(_write(tmp_path, tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)), progress=False)
    assert "**the same split chose and scored**" in (tmp_path / "out" / "report.md").read_text()


def test_search_ranks_on_validation_and_scores_best_once_on_dev(tmp_path: Path, tiny_model_dir: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("optuna", reason="lepton[search] is not installed")
    import json

    from lepton.search import search

    train, dev = write_sentiment_tsv(tmp_path / "t.tsv", 40, seed=1), write_sentiment_tsv(tmp_path / "d.tsv", 16, 2)
    tree = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    tree["evaluate"].update({"robustness": False, "rounds": 1, "memory": False})
    tree["data"].update({"select_on": "validation", "validation_fraction": 0.25})
    tree["stages"].append({"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 2]}})
    tree["search"] = {"trials": 2, "sampler": "random", "sampler_seed": 0}
    with caplog.at_level("INFO", logger="lepton"):
        search(_write(tmp_path, tree), out_dir=tmp_path / "out", progress=False)
    assert any("on 10 validation examples" in r.getMessage() for r in caplog.records)  # the ranking split
    report = json.loads((tmp_path / "out" / "best" / "report.json").read_text())
    assert {v["n_examples"] for v in report["variants"]} == {16}  # best scored on dev, once
    assert report["selection"]["chose_on"] == "validation" and report["selection"]["scored_on"] == "dev"
