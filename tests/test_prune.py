"""The prune stage on tiny random-weight models: physical head/neuron removal, exact sparsity,
masks that survive fine-tuning, N:M patterns, save/load of layers of different sizes, bad settings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import lepton
from lepton.core.errors import RecipeError, StageError
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.models.structure import describe
from lepton.pipeline.artifact import MANIFEST, save_artifact
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages import configs, handler_for
from lepton.stages.prune.masks import cubic_sparsity, encoder_linears
from lepton.stages.prune.structured import gradient_importance, magnitude_importance
from lepton.tasks import collate, encode
from tests.conftest import tiny_recipe, write_sentiment_tsv
from tests.test_artifact import TEXTS, logits_of, sequence_bundle

HIDDEN, HEADS, LAYERS, FFN = 32, 4, 3, 64
HEAD_SIZE = HIDDEN // HEADS


@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 layers of 4 heads (head size 8), FFN 64: enough heads to prune some and keep some."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lepton.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny4")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64)
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def train_split(tmp_path_factory: pytest.TempPathFactory):
    path = write_sentiment_tsv(tmp_path_factory.mktemp("data") / "train.tsv", 64, seed=3)
    return load_split(DataSplitConfig(path=str(path)), Columns(text="sentence", label="label"), name="train")


def make_ctx(tmp_path: Path, split, index: int = 0) -> RunContext:
    return RunContext(splits={"train": split}, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path,
                      progress=False, stage_dir=tmp_path / f"stage-{index}", stage_index=index)


def apply(bundle: ModelBundle, ctx: RunContext, **settings) -> ModelBundle:
    config = configs.get(settings["kind"]).model_validate(settings)
    return handler_for(config)(bundle, config, ctx)


def prune(bundle: ModelBundle, ctx: RunContext, **settings) -> ModelBundle:
    return apply(bundle, ctx, kind="prune", **settings)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def layers_of(model):
    return model.bert.encoder.layer


# ------------------------------------------------------------------- heads


def test_head_pruning_removes_rows_and_columns(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    before = n_params(bundle.model)
    prune(bundle, ctx := make_ctx(tmp_path, train_split), method="heads", sparsity=0.5, batches=2, batch_size=8)
    summary = ctx.stage_summary
    removed = {int(k): v for k, v in summary["heads_removed"].items()}
    assert sum(len(v) for v in removed.values()) == 6  # half of 12, ranked across layers
    for i, layer in enumerate(layers_of(bundle.model)):
        kept = HEADS - len(removed.get(i, []))
        assert kept >= 1
        attn = layer.attention.self
        assert attn.num_attention_heads == kept and attn.all_head_size == kept * HEAD_SIZE
        for proj in (attn.query, attn.key, attn.value):
            assert proj.weight.shape == (kept * HEAD_SIZE, HIDDEN) and proj.bias.shape == (kept * HEAD_SIZE,)
        assert layer.attention.output.dense.weight.shape == (HIDDEN, kept * HEAD_SIZE)
    per_head = 3 * (HEAD_SIZE * HIDDEN + HEAD_SIZE) + HIDDEN * HEAD_SIZE
    assert n_params(bundle.model) == before - 6 * per_head
    assert summary["params_before"] == before and summary["params_after"] == before - 6 * per_head
    assert summary["loads_in_transformers"] is False
    assert logits_of(bundle.model, bundle.tokenizer, TEXTS).shape == (len(TEXTS), 2)


def test_removed_heads_are_the_lowest_scored_and_the_rest_are_untouched(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    original = copy.deepcopy(bundle.model)
    scores = magnitude_importance(bundle.model, "heads")
    prune(bundle, make_ctx(tmp_path, train_split), method="heads", sparsity=0.5, scope="layer",
          importance="magnitude")
    for i, (old, new) in enumerate(zip(layers_of(original), layers_of(bundle.model))):
        gone = sorted(torch.argsort(scores[i])[:2].tolist())
        kept = [h for h in range(HEADS) if h not in gone]
        rows = torch.cat([torch.arange(h * HEAD_SIZE, (h + 1) * HEAD_SIZE) for h in kept])
        assert torch.equal(new.attention.self.value.weight, old.attention.self.value.weight[rows])
        assert torch.equal(new.attention.output.dense.weight, old.attention.output.dense.weight[:, rows])


def _loss(model, batch) -> float:
    with torch.no_grad():
        return float(model(**batch).loss)


def test_gradient_importance_is_the_derivative_of_the_loss_by_head_and_neuron(tiny4_dir, train_split):
    # Scaling a head's value rows by a scales its context output by a, so a central difference over
    # that scale must agree with the hook's gradient; likewise a neuron's output-projection column.
    bundle = sequence_bundle(tiny4_dir)
    model = bundle.model.double().eval()
    enc = encode(train_split, bundle.task, bundle.tokenizer)
    batch = collate(enc, list(range(8)), bundle.tokenizer.pad_token_id)
    heads = gradient_importance(model, [batch], "cpu", "heads")
    neurons = gradient_importance(model, [batch], "cpu", "ffn")
    eps = 1e-4

    def central(weight: torch.Tensor, bias: torch.Tensor | None, index) -> float:
        values = []
        for scale in (1 + eps, 1 - eps):
            saved_w, saved_b = weight.data.clone(), None if bias is None else bias.data.clone()
            weight.data[index] *= scale
            if bias is not None:
                bias.data[index[0]] *= scale
            values.append(_loss(model, batch))
            weight.data.copy_(saved_w)
            if bias is not None:
                bias.data.copy_(saved_b)
        return abs(values[0] - values[1]) / (2 * eps)

    layer = layers_of(model)[1]
    for h in (0, 3):
        rows = slice(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)
        value = layer.attention.self.value
        assert central(value.weight, value.bias, (rows,)) == pytest.approx(float(heads[1][h]), rel=1e-4)
    for i in (5, 40):
        dense = layer.output.dense
        assert central(dense.weight, None, (slice(None), i)) == pytest.approx(float(neurons[1][i]), rel=1e-4)


def test_explicit_heads_go_exactly(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    prune(bundle, ctx := make_ctx(tmp_path, train_split), method="heads", heads={0: [1, 3], 2: [0]})
    assert ctx.stage_summary["heads_removed"] == {"0": [1, 3], "2": [0]}
    assert ctx.stage_summary["heads_per_layer"] == [2, 4, 3]


# ------------------------------------------------------------------- FFN neurons


def test_ffn_pruning_global_leaves_layers_of_different_sizes(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    before = n_params(bundle.model)
    prune(bundle, ctx := make_ctx(tmp_path, train_split), method="ffn", sparsity=0.4, importance="magnitude")
    sizes = [layer.intermediate.dense.out_features for layer in layers_of(bundle.model)]
    assert sum(sizes) == 3 * FFN - round(0.4 * 3 * FFN)
    assert ctx.stage_summary["intermediate_size"] == sizes
    assert sum(ctx.stage_summary["neurons_removed"].values()) == 3 * FFN - sum(sizes)
    for layer, size in zip(layers_of(bundle.model), sizes):
        assert layer.intermediate.dense.weight.shape == (size, HIDDEN)
        assert layer.output.dense.weight.shape == (HIDDEN, size)
    per_neuron = HIDDEN + 1 + HIDDEN
    assert n_params(bundle.model) == before - (3 * FFN - sum(sizes)) * per_neuron
    assert len(set(sizes)) > 1 and describe(bundle.model) is not None  # test set-up: sizes differ


def test_ffn_pruning_per_layer_stays_a_plain_transformers_model(tiny4_dir, train_split, tmp_path):
    from transformers import AutoModelForSequenceClassification

    bundle = sequence_bundle(tiny4_dir)
    prune(bundle, make_ctx(tmp_path, train_split), method="ffn", sparsity=0.25, scope="layer",
          batches=2, batch_size=8)
    assert [layer.intermediate.dense.out_features for layer in layers_of(bundle.model)] == [48, 48, 48]
    assert bundle.model.config.intermediate_size == 48 and describe(bundle.model) is None
    expected = logits_of(bundle.model, bundle.tokenizer, TEXTS)
    folder = save_artifact(bundle, tmp_path / "model")
    assert json.loads((folder / MANIFEST).read_text())["loads_in_transformers"] is True
    plain = AutoModelForSequenceClassification.from_pretrained(folder)
    assert torch.allclose(logits_of(plain, bundle.tokenizer, TEXTS), expected, atol=1e-6)


# ------------------------------------------------------------------- save and load


def test_pruned_model_round_trips_through_lepton_load(tiny4_dir, train_split, tmp_path):
    from transformers import AutoModelForSequenceClassification

    bundle = sequence_bundle(tiny4_dir)
    ctx = make_ctx(tmp_path, train_split)
    prune(bundle, ctx, method="heads", sparsity=0.5, importance="magnitude")
    prune(bundle, ctx, method="ffn", sparsity=0.3, importance="magnitude")
    expected = logits_of(bundle.model, bundle.tokenizer, TEXTS)
    folder = save_artifact(bundle, tmp_path / "model")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["loads_in_transformers"] is False
    assert manifest["structure"]["num_attention_heads"] == [layer.attention.self.num_attention_heads
                                                            for layer in layers_of(bundle.model)]
    assert manifest["structure"]["intermediate_size"] == [layer.intermediate.dense.out_features
                                                          for layer in layers_of(bundle.model)]
    loaded = lepton.load(folder)
    assert torch.allclose(logits_of(loaded.bundle.model, loaded.bundle.tokenizer, TEXTS), expected, atol=1e-6)
    assert loaded.predict(TEXTS[0])[0]["label"] in ("neg", "pos")
    # What the manifest says: transformers 5 has no pruned_heads, so it cannot build these layers.
    with pytest.raises(Exception, match="mismatch"):
        AutoModelForSequenceClassification.from_pretrained(folder)


# ------------------------------------------------------------------- magnitude and N:M


def _encoder_weights(model) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in encoder_linears(model)]


def test_magnitude_global_zeroes_exactly_the_smallest_weights(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    original = _encoder_weights(bundle.model)
    embeddings = bundle.model.bert.embeddings.word_embeddings.weight.detach().clone()
    prune(bundle, ctx := make_ctx(tmp_path, train_split), method="magnitude", sparsity=0.7)
    after = _encoder_weights(bundle.model)
    total = sum(w.numel() for w in after)
    zeros = sum(int((w == 0).sum()) for w in after)
    assert zeros == round(0.7 * total)
    pruned = torch.cat([o[a == 0].abs() for o, a in zip(original, after)])
    kept = torch.cat([o[a != 0].abs() for o, a in zip(original, after)])
    assert pruned.max() <= kept.min()
    assert torch.equal(bundle.model.bert.embeddings.word_embeddings.weight, embeddings)
    summary = ctx.stage_summary
    assert summary["params_after"] == summary["params_before"]  # nothing physically removed
    assert summary["nonzero_before"] - summary["nonzero_after"] == zeros
    assert summary["pruned_weight_sparsity"] == pytest.approx(0.7, abs=1e-5)
    assert "not faster" in summary["note"]
    assert summary["weights_zlib_mb_after"] < summary["weights_zlib_mb_before"]


def test_magnitude_per_layer_gives_every_matrix_the_same_sparsity(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    prune(bundle, make_ctx(tmp_path, train_split), method="magnitude", sparsity=0.3, scope="layer")
    for w in _encoder_weights(bundle.model):
        assert int((w == 0).sum()) == round(0.3 * w.numel())


def test_two_four_keeps_the_two_largest_of_every_four_inputs(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    original = _encoder_weights(bundle.model)
    prune(bundle, ctx := make_ctx(tmp_path, train_split), method="2:4")
    for o, w in zip(original, _encoder_weights(bundle.model)):
        groups, before = w.reshape(w.shape[0], -1, 4), o.reshape(o.shape[0], -1, 4).abs()
        assert ((groups == 0).sum(-1) >= 2).all()
        kept_min = torch.where(groups != 0, before, torch.full_like(before, float("inf"))).amin(-1)
        gone_max = torch.where(groups == 0, before, torch.zeros_like(before)).amax(-1)
        assert (gone_max <= kept_min).all()
    assert ctx.stage_summary["pattern"] == "2:4" and "size and accuracy experiment" in ctx.stage_summary["note"]


def test_two_four_needs_inputs_divisible_by_four(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    ctx = make_ctx(tmp_path, train_split)
    prune(bundle, ctx, method="ffn", sparsity=0.2, scope="layer", importance="magnitude")  # FFN 64 -> 51
    with pytest.raises(StageError, match=r"stages.0.m: 2:4 needs input sizes divisible by 4; "
                                         r"bert.encoder.layer.0.output.dense has 51 inputs"):
        prune(bundle, ctx, method="2:4")


# ------------------------------------------------------------------- through fine-tuning


def finetune(bundle: ModelBundle, tmp_path: Path, split, **settings) -> dict:
    ctx = make_ctx(tmp_path, split, index=1)
    apply(bundle, ctx, kind="finetune", epochs=1, lr=1e-2, batch_size=8, warmup=0, **settings)
    return ctx.stage_summary


def test_masks_stay_applied_through_finetune(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    prune(bundle, make_ctx(tmp_path, train_split), method="magnitude", sparsity=0.5)
    masked = [w == 0 for w in _encoder_weights(bundle.model)]
    before = _encoder_weights(bundle.model)
    summary = finetune(bundle, tmp_path, train_split)
    assert summary["steps"] == 8
    after = _encoder_weights(bundle.model)
    assert all((w[m] == 0).all() for w, m in zip(after, masked))
    assert any(not torch.equal(a[~m], b[~m]) for a, b, m in zip(after, before, masked))  # it trained
    assert summary["train_hooks"][0]["pruned_weight_sparsity"] == pytest.approx(0.5, abs=1e-5)
    assert bundle.train_hooks == []


def test_cubic_schedule_values():
    assert cubic_sparsity(0, 0.8, 0, 10) == 0.0
    assert cubic_sparsity(5, 0.8, 0, 10) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cubic_sparsity(10, 0.8, 0, 10) == pytest.approx(0.8)
    assert cubic_sparsity(99, 0.8, 0, 10) == pytest.approx(0.8)
    assert cubic_sparsity(3, 0.8, 4, 10) == 0.0  # before the start
    values = [cubic_sparsity(t, 0.8, 2, 12) for t in range(14)]
    assert values == sorted(values)  # never decreases
    assert values[3] - values[2] > values[12] - values[11]  # steep first, flat at the end


def test_gradual_pruning_reaches_its_sparsity_at_end_step(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    ctx = make_ctx(tmp_path, train_split)
    prune(bundle, ctx, method="magnitude", sparsity=0.6, schedule="gradual", start_step=2, end_step=6,
          update_every=2)
    assert ctx.stage_summary["nonzero_after"] == ctx.stage_summary["nonzero_before"]  # nothing yet
    hook = bundle.train_hooks[0]
    summary = finetune(bundle, tmp_path, train_split, keep_best=False)["train_hooks"][0]
    assert summary["mask_updates"] == [[4, round(cubic_sparsity(4, 0.6, 2, 6), 6)], [6, 0.6]]
    assert summary["reached_during_training"] is True
    weights = _encoder_weights(bundle.model)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.6 * sum(w.numel() for w in weights))
    assert all((w[~m] == 0).all() for w, m in zip(weights, hook.masks))


def test_gradual_end_past_training_still_ends_at_the_target(tiny4_dir, train_split, tmp_path):
    bundle = sequence_bundle(tiny4_dir)
    prune(bundle, make_ctx(tmp_path, train_split), method="magnitude", sparsity=0.4, schedule="gradual",
          end_step=50, update_every=1)
    summary = finetune(bundle, tmp_path, train_split)["train_hooks"][0]
    assert summary["reached_during_training"] is False
    assert summary["pruned_weight_sparsity"] == pytest.approx(0.4, abs=1e-4)


# ------------------------------------------------------------------- bad settings


def _recipe_with(stage: dict) -> dict:
    return {"task": {"kind": "sequence_classification"},
            "data": {"train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}},
            "stages": [stage, {"kind": "finetune"}]}  # a recipe must train the task head somewhere


@pytest.mark.parametrize("stage, message", [
    ({"method": "magnitude", "sparsity": 1.5}, "stages.0.sparsity: Input should be less than 1 (got 1.5)"),
    ({"method": "heads", "sparsity": -0.1}, "stages.0.sparsity: Input should be greater than or equal to 0"),
    ({"method": "ffn"}, "stages.0.sparsity: Value error, method ffn needs sparsity"),
    ({"method": "heads"}, "stages.0: Value error, method heads needs sparsity"),
    ({"method": "heads", "sparsity": 0.5, "schedule": "gradual"},
     "stages.0.schedule: Value error, schedule gradual works only with method magnitude"),
    ({"method": "2:4", "sparsity": 0.5}, "stages.0.sparsity: Value error, method 2:4 fixes the sparsity"),
    ({"method": "magnitude", "sparsity": 0.5, "end_step": 9}, "stages.0.end_step: Value error, end_step applies"),
    ({"method": "magnitude", "sparsity": 0.5, "schedule": "gradual", "start_step": 9, "end_step": 3},
     "stages.0.end_step: Value error, end_step 3 must come after start_step 9"),
    ({"method": "heads", "heads": {0: [1, 1]}}, "stages.0.heads: Value error, layer 0 lists a head more than once"),
    ({"method": "ffn", "sparsity": 0.5, "heads": {0: [1]}}, "stages.0.heads: Value error, heads: {layer"),
    ({"method": "2:4", "n": 4}, "stages.0.m: Value error, n (4) must be smaller than m (4)"),
    ({"method": "magnitude", "sparsity": 0.5, "scop": "layer"}, "unknown key 'stages.0.scop'; did you mean 'scope'?"),
])
def test_bad_settings_are_recipe_errors_naming_the_key(stage, message):
    with pytest.raises(RecipeError) as info:
        parse_recipe(_recipe_with({"kind": "prune", **stage}), env={})
    assert message in str(info.value)


def test_unquoted_yaml_two_four_means_two_four():
    import yaml

    [stage] = yaml.safe_load("- {kind: prune, method: 2:4}")  # YAML 1.1 reads 2:4 as 124
    assert parse_recipe(_recipe_with(stage), env={}).stages[0].method == "2:4"


@pytest.mark.parametrize("settings, message", [
    ({"heads": {1: [0, 1, 2, 3]}}, "stages.0.heads.1: would remove all 4 heads of layer 1; every layer keeps"),
    ({"heads": {5: [0]}}, "stages.0.heads: layer 5 is out of range; the model has 3 layers (0-2)"),
    ({"heads": {0: [4]}}, "stages.0.heads.0: head 4 is out of range; layer 0 has 4 heads (0-3)"),
    ({"sparsity": 0.9, "scope": "layer"}, "stages.0.sparsity: 0.9 would remove all 4 heads of layer 0"),
    ({"sparsity": 0.95}, "stages.0.sparsity: 0.95 would remove 11 of 12 heads, leaving some layer none"),
])
def test_pruning_every_head_of_a_layer_is_refused(tiny4_dir, train_split, tmp_path, settings, message):
    bundle = sequence_bundle(tiny4_dir)
    with pytest.raises(StageError) as info:
        prune(bundle, make_ctx(tmp_path, train_split), method="heads", importance="magnitude", **settings)
    assert message in str(info.value)
    assert all(layer.attention.self.num_attention_heads == HEADS for layer in layers_of(bundle.model))  # untouched


# ------------------------------------------------------------------- a whole recipe


def test_prune_then_finetune_recipe_end_to_end(tiny_model_dir, tmp_path):
    train = write_sentiment_tsv(tmp_path / "train.tsv", 80, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 24, seed=2)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    recipe["evaluate"].update(memory=False, robustness=False, rounds=1)
    recipe["stages"] = [
        {"kind": "prune", "method": "heads", "sparsity": 0.5, "scope": "layer", "batches": 2, "batch_size": 8},
        {"kind": "prune", "method": "ffn", "sparsity": 0.5, "batches": 2, "batch_size": 8},
        {"kind": "prune", "method": "magnitude", "sparsity": 0.5, "schedule": "gradual", "end_step": 6,
         "update_every": 2},
        recipe["stages"][0],
    ]
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    assert [v.name for v in report.variants] == ["prune", "prune-1", "prune-2", "finetune"]
    assert report.stages[0]["summary"]["heads_per_layer"] == [1, 1]
    assert report.stages[3]["summary"]["train_hooks"][0]["reached_during_training"] is True
    assert report.variants[3].efficiency.params < report.variants[0].efficiency.params
    folder = tmp_path / "out" / "model"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["loads_in_transformers"] is False
    assert manifest["structure"]["num_attention_heads"] == [1, 1]
    loaded = lepton.load(folder)
    weights = _encoder_weights(loaded.bundle.model)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.5 * sum(w.numel() for w in weights))
    assert len(loaded.predict(["a great film", "dull"])) == 2


def test_prune_example_recipe_is_valid():
    from lepton.pipeline.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "examples" / "sst2-minilm-prune.yaml", env={})
    assert [(s.kind, getattr(s, "method", None)) for s in recipe.stages] == [
        ("finetune", "full"), ("prune", "heads"), ("prune", "ffn"), ("finetune", "full")]
