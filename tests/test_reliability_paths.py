"""Issue 29, the artifact and path cases: output folders that only look like runs, output folders
inside the data, links that leave a model folder, JSON nested too deeply, a model shorter than
the timing scenario, and a measuring failure that must not cost the trained stages."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from lepton.cli import main
from lepton.core import atomic
from tests.conftest import tiny_recipe, write_sentiment_tsv
from tests.test_cli import _quiet_transformers, assert_user_error, cli  # noqa: F401  (fixture)
from tests.test_reliability import tree_digest

FAST = ["--set", "stages.0.epochs=1", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("paths-data")
    return {"train": write_sentiment_tsv(folder / "train.tsv", 24, seed=1),
            "dev": write_sentiment_tsv(folder / "dev.tsv", 12, seed=2)}


@pytest.fixture
def recipe(tiny_model_dir, data, tmp_path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, data["train"], data["dev"], tmp_path / "out",
                                               epochs=1)))
    return path


@pytest.fixture(scope="module")
def finished(tiny_model_dir, data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("paths-run")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, data["train"], data["dev"], folder / "out",
                                               epochs=1)))
    assert main(["-q", "run", str(path), *FAST]) == 0
    return folder / "out"


def test_force_does_not_take_a_folder_with_work_recipe_json_for_a_run(capsys, recipe, tmp_path):
    # Reported: a user folder holding work/recipe.json was taken for an old run; --force deleted work/.
    target = tmp_path / "mine"
    (target / "work").mkdir(parents=True)
    (target / "work" / "recipe.json").write_text(json.dumps({"schema_version": 1, "stages": []}))
    (target / "work" / "thesis.tex").write_text("years of work")
    (target / "model").mkdir()
    (target / "model" / "lepton.json").write_text("{}")
    (target / "report.json").write_text("{}")
    before = tree_digest(target)
    for flags in (["--force"], ["--resume"], []):
        assert_user_error(cli(capsys, "run", recipe, "-o", target, *flags, *FAST), str(target),
                          "not a Lepton run folder")
    assert tree_digest(target) == before


def _folder_recipe(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    data = tmp_path / "news"
    for label, words in (("pos", "good great fine"), ("neg", "bad awful dull")):
        (data / label).mkdir(parents=True)
        for i in range(6):
            (data / label / f"{i}.txt").write_text(f"a {words.split()[i % 3]} film {i}")
    tree = tiny_recipe(model, data, data, tmp_path / "unused", epochs=1)
    tree["task"] = {"kind": "sequence_classification"}
    tree["data"] = {"train": {"path": str(data), "format": "folder"}, "dev": {"path": str(data), "format": "folder"}}
    path = tmp_path / "folder-recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, data


def test_the_output_folder_may_not_sit_inside_the_data(capsys, tiny_model_dir, tmp_path):
    # Reported: `format: folder` data received the run's own output, which the next run read as a label.
    recipe, data = _folder_recipe(tmp_path, tiny_model_dir)
    before = tree_digest(data)
    line = assert_user_error(cli(capsys, "run", recipe, "-o", data / "run-1", *FAST), "inside the data of data.train")
    assert str(data / "run-1") in line
    assert tree_digest(data) == before and not (data / "run-1").exists()


def test_the_output_folder_may_not_hold_the_data(capsys, finished, tiny_model_dir, tmp_path):
    # A previous run's folder with data copied into it: --force would delete the data with the run.
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    train = write_sentiment_tsv(run / "work-data.tsv", 24, seed=3)
    tree = tiny_recipe(tiny_model_dir, train, train, run, epochs=1)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    before = tree_digest(run)
    assert_user_error(cli(capsys, "run", path, "--force", *FAST), "holds the data of data.train")
    assert tree_digest(run) == before


def test_a_listed_file_that_links_outside_the_model_folder_is_refused(capsys, finished, tmp_path):
    model = Path(shutil.copytree(finished / "model", tmp_path / "model"))
    outside = tmp_path / "elsewhere.json"
    shutil.move(model / "config.json", outside)  # same bytes, same checksum: only the link is wrong
    os.symlink(outside, model / "config.json")
    for command in ("info", "evaluate"):
        line = assert_user_error(cli(capsys, command, model), "config.json", "outside the model folder")
        assert str(outside) in line


def test_a_link_inside_the_model_folder_is_allowed(capsys, finished, tmp_path):
    model = Path(shutil.copytree(finished / "model", tmp_path / "model"))
    (model / "sub").mkdir()
    # (an unlisted target a loader would read is refused on its own: it is named .blob here)
    shutil.move(model / "config.json", model / "sub" / "config.blob")
    os.symlink("sub/config.blob", model / "config.json")
    code, _, err = cli(capsys, "info", model)
    assert code == 0, err


@pytest.mark.parametrize("name", ["lepton.json", "lepton.json.sig"])
def test_json_nested_too_deeply_is_one_line(capsys, finished, tmp_path, name):
    # Reported: `lepton info` on a lepton.json of deeply nested brackets: RecursionError.
    model = Path(shutil.copytree(finished / "model", tmp_path / "model"))
    (model / name).write_text("[" * 100_000 + "]" * 100_000)
    assert_user_error(cli(capsys, "info", model), name)


def test_loads_json_turns_deep_nesting_into_a_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        atomic.loads_json("[" * 100_000 + "]" * 100_000)
    assert atomic.loads_json('{"a": [1]}') == {"a": [1]}


@pytest.fixture(scope="module")
def short_model(tmp_path_factory) -> Path:
    """The tiny BERT with a 16-position table: shorter than the default 128-token scenario."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lepton.models import resolve_model

    folder = tmp_path_factory.mktemp("short-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_model_shorter_than_the_scenario_is_timed_at_its_own_length(short_model, data, tmp_path):
    # Reported: max_position_embeddings below 128 trained, exported, quantized, then died in the
    # efficiency measurement with IndexError, losing the trained stages.
    tree = tiny_recipe(short_model, data["train"], data["dev"], tmp_path / "out", epochs=1)
    tree["evaluate"]["fixed_length"] = 128
    tree["stages"] += [{"kind": "export"}, {"kind": "quantize", "method": "dynamic_int8"}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["-q", "run", str(path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for card in report["variants"]:
        assert "b1_fixed16" in card["efficiency"]["latency_ms"], card["efficiency"]["latency_ms"].keys()
    assert report["recipe"]["task"]["max_length"] == 128  # the recipe as written; inputs were cut at 16


def test_a_measuring_failure_keeps_the_trained_stages(capsys, caplog, recipe, tmp_path, monkeypatch):
    from lepton.evaluation import harness

    def broken(*args, **kwargs):
        raise IndexError("index out of range in self")

    monkeypatch.setitem(harness.efficiency_measures._items, "forward", broken)
    line = assert_user_error(cli(capsys, "run", recipe, *FAST), "measuring the variants failed", "--resume")
    work = tmp_path / "out" / "work"
    assert (work / "evaluate-error.txt").is_file() and "IndexError" in (work / "evaluate-error.txt").read_text()
    assert str(work) in line
    monkeypatch.undo()
    caplog.set_level("INFO", logger="lepton")
    code, _, err = cli(capsys, "run", recipe, "--resume", *FAST)
    assert code == 0, err
    assert "done in the interrupted run, reusing its result" in caplog.text
    assert (tmp_path / "out" / "model" / "lepton.json").is_file()


def test_benchmarks_read_data_from_the_package_or_lepton_data():
    # Reported: benchmarks/quantization.py hard-coded ../shared/data and stopped in a fresh clone.
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    for script in sorted(root.glob("*.py")):
        text = script.read_text()
        if '"shared"' in text or "shared/data" in text:
            assert "LEPTON_DATA" in text, f"{script.name}: reads ../shared/data without honouring LEPTON_DATA"
    for name in ("quantization.py", "qat.py", "trim_vocab.py", "serve_load.py", "serve_drain.py",
                 "finetune_throughput.py"):
        assert "builtin:sst2" in (root / name).read_text(), name


def test_a_model_config_nested_too_deeply_is_one_line(capsys, recipe, tiny_model_dir, tmp_path):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "plain"))
    (model / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_user_error(cli(capsys, "run", recipe, "--set", f"model={model}", *FAST), "config.json", "not valid JSON")


def test_data_and_keys_that_are_not_regular_files_are_refused(capsys, recipe, finished, tmp_path):
    # A FIFO would block the read forever.
    fifo = tmp_path / "train.tsv"
    os.mkfifo(fifo)
    assert_user_error(cli(capsys, "run", recipe, "--set", f"data.train.path={fifo}", *FAST),
                      "data.train.path", "not a regular file")
    assert_user_error(cli(capsys, "evaluate", finished / "model", "--data", fifo), "not a regular file")
    assert_user_error(cli(capsys, "info", finished / "model", "--require-signature", fifo), "not a regular file")


@pytest.mark.parametrize("name", ["", " ", "."])
def test_keygen_needs_a_file_name(capsys, name):
    assert_user_error(cli(capsys, "keygen", name), "not a file name for a key")
