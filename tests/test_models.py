"""Resolving a recipe's ``model:`` (builtin name, folder, hub id) and loading it for a task."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lepton.core.errors import LeptonError, ModelLoadError, UnknownNameError
from lepton.models import WEIGHT_FILES, load_tokenizer, resolve_model
from lepton.tasks.loading import load_for_task
from tests.conftest import spec_for


def test_builtin_minilm_resolves_to_a_model_folder():
    folder = Path(resolve_model("builtin:minilm-l6"))
    assert folder.is_dir()
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()  # a fast tokenizer, which Lepton needs


def test_unknown_builtin_suggests_the_full_spec():
    with pytest.raises(UnknownNameError) as info:
        resolve_model("builtin:minilm")
    message = str(info.value)
    assert "unknown builtin 'builtin:minilm'" in message
    # The hint is what to write in the recipe, prefix included.
    assert "did you mean 'builtin:minilm-l6'?" in message
    assert "known: builtin:minilm-l6" in message
    assert isinstance(info.value, LeptonError)


def test_unknown_builtin_without_a_close_match():
    with pytest.raises(UnknownNameError) as info:
        resolve_model("builtin:gpt5")
    assert "did you mean" not in str(info.value) and "builtin:minilm-l6" in str(info.value)


def _copy_without(src: Path, dest: Path, *skip: str) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dest / f.name)
    return dest


def test_folder_resolves_to_itself(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_folder_without_weights(tiny_model_dir, tmp_path):
    folder = _copy_without(tiny_model_dir, tmp_path / "m", *WEIGHT_FILES)
    with pytest.raises(ModelLoadError) as info:
        resolve_model(str(folder))
    assert str(folder) in str(info.value) and "no weights" in str(info.value)
    assert "model.safetensors" in str(info.value)  # says what it looked for


def test_folder_without_config(tiny_model_dir, tmp_path):
    folder = _copy_without(tiny_model_dir, tmp_path / "m", "config.json")
    with pytest.raises(ModelLoadError) as info:
        resolve_model(str(folder))
    assert str(folder) in str(info.value) and "no config.json" in str(info.value)


def test_empty_folder_names_the_missing_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_relative_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        resolve_model("./nope")
    assert "folder not found: ./nope" in str(info.value)


@pytest.mark.parametrize("spec", ["/definitely/not/here", "~/not-here-either-lepton", "a/b/c"])
def test_missing_path_like_specs(spec):
    with pytest.raises(ModelLoadError, match="folder not found"):
        resolve_model(spec)


def test_a_file_is_not_a_model_folder(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is not a folder"):
        resolve_model(str(path))


def test_hub_ids_pass_through_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so "org/name" is not a local folder
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model(hub_id) == hub_id
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"


def test_load_for_task_sizes_the_head(tiny_model_dir):
    model = load_for_task(str(tiny_model_dir), spec_for("sequence_classification", ["a", "b", "c"]))
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert model.config.label2id == {"a": 0, "b": 1, "c": 2}
    tagger = load_for_task(str(tiny_model_dir), spec_for("token_classification", ["O", "B-X"]))
    assert type(tagger).__name__.endswith("ForTokenClassification")
    assert tagger.config.num_labels == 2


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_damaged_weights_are_a_model_load_error(tiny_model_dir, tmp_path, weights):
    folder = _copy_without(tiny_model_dir, tmp_path / "m", "model.safetensors")
    (folder / weights).write_bytes(b"\x00garbage, not a weights file" * 8)
    resolve_model(str(folder))  # present, so the folder check passes; loading finds the damage
    with pytest.raises(ModelLoadError) as info:
        load_for_task(str(folder), spec_for("sequence_classification", ["a", "b"]))
    assert str(folder) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_tokenizer(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.is_fast
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id


def test_folder_without_tokenizer(tiny_model_dir, tmp_path):
    # transformers would build a tokenizer knowing only its special tokens, so every word would
    # become [UNK] and training would go on silently on nothing.
    folder = _copy_without(tiny_model_dir, tmp_path / "m", "tokenizer.json",
                           "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
    with pytest.raises(ModelLoadError) as info:
        load_tokenizer(str(folder))
    assert str(folder) in str(info.value) and "no tokenizer" in str(info.value)
