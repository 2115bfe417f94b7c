"""The drop_layers stage on a tiny 6-layer model: which layers stay, physical removal, a result
that plain transformers loads with equal outputs, importance scoring, bad settings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import lepton
from lepton.core.errors import RecipeError, StageError
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.pipeline.artifact import MANIFEST, save_artifact
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages import configs, handler_for
from lepton.stages.drop_layers import choose_layers
from tests.conftest import tiny_recipe, write_sentiment_tsv
from tests.test_artifact import TEXTS, logits_of, sequence_bundle

LAYERS = 6


@pytest.fixture(scope="module")
def tiny6_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lepton.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny6")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=LAYERS,
                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(2)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("data")
    cols = Columns(text="sentence", label="label")
    return {name: load_split(DataSplitConfig(path=str(write_sentiment_tsv(folder / f"{name}.tsv", 32, seed=s))),
                             cols, name=name) for name, s in (("train", 1), ("dev", 2))}


def drop(bundle: ModelBundle, splits: dict, tmp_path: Path, index: int = 0, **settings) -> dict:
    config = configs.get("drop_layers").model_validate({"kind": "drop_layers", **settings})
    ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path,
                     progress=False, stage_index=index)
    handler_for(config)(bundle, config, ctx)
    return ctx.stage_summary


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("strategy, total, n, kept", [
    ("bottom", 6, 3, [0, 1, 2]),
    ("top", 6, 3, [3, 4, 5]),
    ("alternate", 6, 3, [1, 3, 5]),
    ("alternate", 12, 6, [1, 3, 5, 7, 9, 11]),
    ("alternate", 6, 4, [1, 2, 4, 5]),
    ("alternate", 6, 1, [5]),
    ("alternate", 6, 6, [0, 1, 2, 3, 4, 5]),
])
def test_position_strategies(strategy, total, n, kept):
    assert choose_layers(strategy, total, n) == kept


def test_keep_removes_layers_and_plain_transformers_loads_the_result(tiny6_dir, splits, tmp_path):
    from transformers import AutoModelForSequenceClassification

    bundle = sequence_bundle(tiny6_dir)
    original = copy.deepcopy(bundle.model)
    per_layer = n_params(original.bert.encoder.layer[0])
    summary = drop(bundle, splits, tmp_path, keep=[4, 0, 2])
    model = bundle.model
    assert summary["kept"] == [0, 2, 4] and summary["dropped"] == [1, 3, 5]
    assert len(model.bert.encoder.layer) == 3 and model.config.num_hidden_layers == 3
    assert n_params(model) == n_params(original) - 3 * per_layer == summary["params_after"]
    for new, old in zip(model.bert.encoder.layer, [original.bert.encoder.layer[i] for i in (0, 2, 4)]):
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))

    expected = logits_of(model, bundle.tokenizer, TEXTS)
    folder = save_artifact(bundle, tmp_path / "model")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["structure"] is None and manifest["loads_in_transformers"] is True
    plain = AutoModelForSequenceClassification.from_pretrained(folder)
    assert plain.config.num_hidden_layers == 3
    assert torch.allclose(logits_of(plain, bundle.tokenizer, TEXTS), expected, atol=1e-6)
    loaded = lepton.load(folder)
    assert torch.allclose(logits_of(loaded.bundle.model, loaded.bundle.tokenizer, TEXTS), expected, atol=1e-6)


def test_importance_keeps_the_layers_whose_removal_hurts_most(tiny6_dir, splits, tmp_path):
    bundle = sequence_bundle(tiny6_dir)
    # Layer 3 made a no-op: zero attention and FFN outputs leave LayerNorm(LayerNorm(x)) = x.
    layer = bundle.model.bert.encoder.layer[3]
    with torch.no_grad():
        for dense in (layer.attention.output.dense, layer.output.dense):
            dense.weight.zero_()
            dense.bias.zero_()
    summary = drop(bundle, splits, tmp_path, strategy="importance", layers=4, batches=2, batch_size=8)
    scores = {int(k): v for k, v in summary["importance"]["per_layer"].items()}
    assert abs(scores[3]) < 1e-5
    assert summary["kept"] == sorted(sorted(scores, key=lambda i: (-scores[i], -i))[:4])
    assert "data.dev" in summary["importance"]["measure"]
    assert len(bundle.model.bert.encoder.layer) == 4


def test_drop_layers_after_head_pruning_round_trips(tiny6_dir, splits, tmp_path):
    bundle = sequence_bundle(tiny6_dir)
    config = configs.get("prune").model_validate({"kind": "prune", "method": "heads", "heads": {1: [0], 4: [1]}})
    ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path, progress=False)
    handler_for(config)(bundle, config, ctx)
    drop(bundle, splits, tmp_path, index=1, strategy="alternate", layers=3)  # keeps 1, 3, 5
    expected = logits_of(bundle.model, bundle.tokenizer, TEXTS)
    folder = save_artifact(bundle, tmp_path / "model")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["structure"]["num_attention_heads"] == [1, 2, 2]
    loaded = lepton.load(folder)
    assert torch.allclose(logits_of(loaded.bundle.model, loaded.bundle.tokenizer, TEXTS), expected, atol=1e-6)


@pytest.mark.parametrize("settings, message", [
    ({"keep": [0, 6]}, "stages.2.keep: layer 6 is out of range; the model has 6 layers (0-5)"),
    ({"strategy": "top", "layers": 7}, "stages.2.layers: cannot keep 7 layers of a 6-layer model"),
])
def test_out_of_range_is_a_stage_error(tiny6_dir, splits, tmp_path, settings, message):
    bundle = sequence_bundle(tiny6_dir)
    with pytest.raises(StageError) as info:
        drop(bundle, splits, tmp_path, index=2, **settings)
    assert message in str(info.value)
    assert len(bundle.model.bert.encoder.layer) == LAYERS


@pytest.mark.parametrize("stage, message", [
    ({"keep": [1, 1]}, "stages.0.keep: Value error, layer 1 is listed more than once"),
    ({"keep": []}, "stages.0.keep: Value error, keep at least one layer"),
    ({"keep": [-1]}, "stages.0.keep: Value error, layer indices count from 0"),
    ({"strategy": "top", "layers": 0}, "stages.0.layers: Input should be greater than or equal to 1"),
    ({"strategy": "top"}, "stages.0: Value error, strategy top needs layers: N"),
    ({"keep": [0], "strategy": "top", "layers": 1}, "stages.0: Value error, give either keep"),
    ({}, "stages.0: Value error, say which layers stay"),
    ({"strategy": "middle", "layers": 2}, "stages.0.strategy: Input should be 'top', 'bottom', 'alternate'"),
])
def test_bad_settings_are_recipe_errors_naming_the_key(stage, message):
    tree = {"task": {"kind": "sequence_classification"},
            "data": {"train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}},
            "stages": [{"kind": "drop_layers", **stage}]}
    with pytest.raises(RecipeError) as info:
        parse_recipe(tree, env={})
    assert message in str(info.value)


def test_drop_then_finetune_recipe_end_to_end(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    train = write_sentiment_tsv(tmp_path / "train.tsv", 48, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 16, seed=2)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    recipe["evaluate"].update(memory=False, robustness=False, rounds=1)
    recipe["stages"].insert(0, {"kind": "drop_layers", "strategy": "top", "layers": 1})
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    assert report.stages[0]["summary"]["kept"] == [1]
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model")
    assert plain.config.num_hidden_layers == 1 and len(plain.bert.encoder.layer) == 1


def test_drop_example_recipe_is_valid():
    from lepton.pipeline.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "examples" / "sst2-minilm-drop.yaml", env={})
    assert [s.kind for s in recipe.stages] == ["finetune", "drop_layers", "finetune"]
    assert recipe.stages[1].layers == 3
