"""Vocabulary trimming and 8-bit embeddings on tiny random-weight models: the trimmed tokenizer
splits kept words exactly as before and loads in plain transformers, the trimmed model's outputs
on kept tokens equal the untrimmed model's (tied and untied output layers included), the 8-bit
tables stay within their stated error, and both survive every sensible order through export,
quantize, the artifact and ``lepton.load``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lepton
from lepton.core.errors import RecipeError, StageError
from lepton.data import Columns, DataSplitConfig, Split, load_split
from lepton.models.int8_embedding import Int8Embedding, int8_embeddings, quantize_rows
from lepton.pipeline.artifact import MANIFEST, save_artifact
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes import for_bundle
from lepton.stages.trim_vocab import changed_tokens, trim_model
from tests.conftest import tiny_recipe, write_conll, write_sentiment_tsv
from tests.test_artifact import logits_of, sequence_bundle, token_bundle
from tests.test_export import apply, batch_of, make_ctx

KEPT_TEXTS = ["the movie was really good", "quite a dull plot , boring acting", "superb lovely nice"]
COLUMNS = Columns(text="sentence", label="label")


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("data")
    return {name: load_split(DataSplitConfig(path=str(write_sentiment_tsv(folder / f"{name}.tsv", n, seed=s))),
                             COLUMNS, name=name) for name, n, s in (("train", 48, 1), ("dev", 24, 2))}


def ctx_for(tmp_path: Path, splits: dict, index: int = 0):
    ctx = make_ctx(tmp_path, splits, index)
    ctx.columns = COLUMNS
    return ctx


def sentences(*texts: str) -> Split:
    return Split(name="dev", kind="sequence", texts=list(texts), text_pairs=None, labels=None,
                 sources=[f"row {i}" for i in range(len(texts))])


def expected_keep(tok, split: Split, *, characters: bool = True) -> list[int]:
    """What trim_vocab should keep, computed here from the tokenizer's own vocabulary."""
    keep = set(tok.all_special_ids)
    for text in split.texts:
        keep.update(tok(text, add_special_tokens=False)["input_ids"])
    if characters:
        keep.update(i for p, i in tok.get_vocab().items() if len(p) == 1 or (p.startswith("##") and len(p) == 3))
    return sorted(keep)


# ------------------------------------------------------------------- the tokenizer


def test_trimmed_tokenizer_splits_kept_words_as_before_and_loads_in_transformers(tiny_model_dir, splits, tmp_path):
    from transformers import AutoTokenizer

    bundle = sequence_bundle(tiny_model_dir)
    old = bundle.tokenizer
    keep = expected_keep(old, splits["train"])
    ctx = ctx_for(tmp_path, splits)
    apply(bundle, ctx, kind="trim_vocab")
    new = bundle.tokenizer
    assert ctx.stage_summary["vocab_after"] == len(keep) == len(new) < len(old) // 10
    new_id = {o: n for n, o in enumerate(keep)}
    for text in KEPT_TEXTS + list(splits["dev"].texts):
        assert new(text)["input_ids"] == [new_id[i] for i in old(text)["input_ids"]]
    # A word with dropped pieces is spelled with kept ones: the text round-trips, no [UNK].
    for text in ["zebras unbelievably overthink", "naïve café résumé"]:
        ids = new(text)["input_ids"]
        assert new.unk_token_id not in ids
        assert new.decode(ids, skip_special_tokens=True) == old.decode(old(text)["input_ids"], skip_special_tokens=True)
    pair = new("good movie", "bad plot")
    assert pair["token_type_ids"].count(1) == 3 and pair["input_ids"][0] == new.cls_token_id
    specials = ("pad_token_id", "cls_token_id", "sep_token_id", "unk_token_id", "mask_token_id")
    assert [getattr(new, s) for s in specials] == [new_id[getattr(old, s)] for s in specials]
    folder = save_artifact(bundle, tmp_path / "model")
    plain = AutoTokenizer.from_pretrained(folder)  # plain transformers, no Lepton code
    assert len(plain) == len(keep)
    for text in KEPT_TEXTS + ["zebras unbelievably overthink"]:
        assert plain(text, "a pair")["input_ids"] == new(text, "a pair")["input_ids"]


def test_changed_share_counts_the_words_with_dropped_pieces(tiny_model_dir, splits, tmp_path):
    bundle = sequence_bundle(tiny_model_dir)
    old = copy.deepcopy(bundle.tokenizer)
    kept = {old.convert_ids_to_tokens(i) for i in expected_keep(old, splits["train"])}
    apply(bundle, ctx_for(tmp_path, splits), kind="trim_vocab")
    texts = ["good movie", "zebras were unbelievably good", "the plot , overthinking it"]
    words = [w for t in texts for w in old.backend_tokenizer.pre_tokenizer.pre_tokenize_str(t)]
    pieces = [old.tokenize(w) for w, _ in words]
    changed = sum(len(p) for p in pieces if not set(p) <= kept)  # a word changes iff a piece was dropped
    got = changed_tokens(old, bundle.tokenizer, sentences(*texts))
    assert got["tokens"] == sum(len(p) for p in pieces) and got["tokens_changed"] == changed > 0
    assert got["words_changed"] == sum(1 for p in pieces if not set(p) <= kept)
    assert got["share_changed"] == pytest.approx(changed / got["tokens"], abs=1e-6)
    assert got["words_now_unknown"] == 0


@pytest.mark.parametrize("mode, unknown", [("all", 0), ("seen", 1), ("none", 2)])
def test_character_floor(tiny_model_dir, splits, tmp_path, mode, unknown):
    """'jazz' has letters the toy training text never uses; 'bigot' only letters it does."""
    bundle = sequence_bundle(tiny_model_dir)
    old = copy.deepcopy(bundle.tokenizer)
    ctx = ctx_for(tmp_path, splits)
    apply(bundle, ctx, kind="trim_vocab", keep_characters=mode)
    got = changed_tokens(old, bundle.tokenizer, sentences("jazz bigot good"))
    assert got["words_now_unknown"] == unknown
    chars = ctx.stage_summary["kept"].get("characters", 0)
    assert (chars > 1000) if mode == "all" else (0 < chars < 60) if mode == "seen" else chars == 0


def test_min_count_and_reference(tiny_model_dir, splits, tmp_path):
    ref = tmp_path / "ref.tsv"
    ref.write_text("sentence\tlabel\n" + "zebra zebra zebra crossing\t1\n" * 3 + "unicorn\t0\n")
    bundle = sequence_bundle(tiny_model_dir)
    apply(bundle, ctx_for(tmp_path, splits), kind="trim_vocab", min_count=1000, keep_characters="none",
          reference={"path": str(ref)}, reference_top=1)
    vocab = bundle.tokenizer.get_vocab()
    assert "zebra" in vocab and "crossing" not in vocab and "good" not in vocab  # nothing occurs 1000 times
    assert len(vocab) == len(bundle.tokenizer.all_special_ids) + 1


# ------------------------------------------------------------------- the model


def test_trimmed_model_equals_untrimmed_on_kept_tokens_and_reloads(tiny_model_dir, splits, tmp_path):
    from transformers import AutoModelForSequenceClassification

    bundle = sequence_bundle(tiny_model_dir)
    before = logits_of(bundle.model, bundle.tokenizer, KEPT_TEXTS)
    ctx = ctx_for(tmp_path, splits)
    apply(bundle, ctx, kind="trim_vocab")
    after = logits_of(bundle.model, bundle.tokenizer, KEPT_TEXTS)
    assert torch.allclose(before, after, atol=1e-6)
    assert bundle.model.config.vocab_size == len(bundle.tokenizer) == ctx.stage_summary["vocab_after"]
    removed = 32 * (30522 - len(bundle.tokenizer))  # hidden size 32
    assert ctx.stage_summary["params_after"] == ctx.stage_summary["params_before"] - removed
    folder = save_artifact(bundle, tmp_path / "model")
    assert json.loads((folder / MANIFEST).read_text())["loads_in_transformers"] is True
    plain = AutoModelForSequenceClassification.from_pretrained(folder)
    assert torch.allclose(logits_of(plain, bundle.tokenizer, KEPT_TEXTS), before, atol=1e-6)
    loaded = lepton.load(folder)
    scores = [r["scores"]["pos"] for r in loaded.predict(KEPT_TEXTS)]
    assert np.allclose(scores, torch.softmax(before, -1)[:, 1].numpy(), atol=1e-6)


def test_token_classification_trims_on_words(tiny_model_dir, tmp_path):
    cols = Columns(text=0, label=-1)
    splits = {name: load_split(DataSplitConfig(path=str(write_conll(tmp_path / f"{name}.txt", 12, seed=s)),
                                               format="conll"), cols, name=name, kind="tokens")
              for name, s in (("train", 1), ("dev", 2))}
    bundle = token_bundle(tiny_model_dir)
    words = [["Alice", "visited", "Rome", "."], ["Bob", "visited", "Paris", "."]]
    old = bundle.tokenizer
    before = bundle.model(**old(words, is_split_into_words=True, padding=True, return_tensors="pt")).logits
    ctx = make_ctx(tmp_path, splits)
    apply(bundle, ctx, kind="trim_vocab")
    new = bundle.tokenizer
    after = bundle.model(**new(words, is_split_into_words=True, padding=True, return_tensors="pt")).logits
    assert torch.allclose(before, after, atol=1e-6)
    assert ctx.stage_summary["changed"]["share_changed"] == 0.0 and ctx.stage_summary["changed"]["words"] > 0
    got = changed_tokens(old, new, Split(name="dev", kind="tokens", texts=[["Alice", "Zanzibar"]], text_pairs=None,
                                         labels=None, sources=["row 0"]))
    assert got["words"] == 2 and got["words_changed"] == 1


@pytest.mark.parametrize("tied", [True, False])
def test_output_layer_of_vocabulary_size_is_trimmed_too(tiny_model_dir, tied):
    """A masked-LM head (the decoder-model case: an output layer over the vocabulary)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = BertConfig.from_pretrained(tiny_model_dir, tie_word_embeddings=tied)
    torch.manual_seed(1)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    enc = tok(KEPT_TEXTS, padding=True, return_tensors="pt")
    keep = sorted(set(enc["input_ids"].flatten().tolist()) | set(tok.all_special_ids) | {5000, 7000})
    with torch.no_grad():
        before = model(**enc).logits
    trim_model(model, keep, pad_id=keep.index(tok.pad_token_id))
    new_id = {o: n for n, o in enumerate(keep)}
    ids = enc["input_ids"].apply_(lambda i: new_id[i])
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=enc["attention_mask"]).logits
    assert after.shape[-1] == len(keep) == model.config.vocab_size
    assert torch.allclose(after, before[..., keep], atol=1e-5)
    decoder = model.get_output_embeddings()
    assert (decoder.weight is model.get_input_embeddings().weight) is tied


# ------------------------------------------------------------------- 8-bit embeddings


def test_per_row_int8_error_bound():
    """Stated bound: every element within half a step of its row, |error| <= max|row| / 254."""
    torch.manual_seed(0)
    weight = torch.randn(300, 48) * torch.logspace(-3, 1, 300)[:, None]  # rows of very different norms
    weight[7] = 0.0
    q, scale = quantize_rows(weight)
    error = (q.float() * scale[:, None] - weight).abs()
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    assert bool((error.amax(1) <= weight.abs().amax(1) / 254 + 1e-7).all())
    assert float(error[7].max()) == 0.0
    # One scale for the whole table (what a per-tensor Gather quantizer does) loses the small rows.
    tensor_step = float(weight.abs().max()) / 127
    small = weight.abs().amax(1) < tensor_step / 2
    assert bool(small.any()) and bool((torch.round(weight[small] / tensor_step) == 0).all())


def test_int8_embeddings_save_and_reload_exactly(tiny_model_dir, splits, tmp_path):
    bundle = sequence_bundle(tiny_model_dir)
    float_size = for_bundle(bundle).size_bytes()
    params = for_bundle(bundle).parameter_counts()[0]
    before = logits_of(bundle.model, bundle.tokenizer, KEPT_TEXTS)
    ctx = ctx_for(tmp_path, splits)
    apply(bundle, ctx, kind="quantize_embeddings")
    tables = ctx.stage_summary["tables"]
    assert set(tables) == {f"bert.embeddings.{n}" for n in ("word_embeddings", "position_embeddings",
                                                            "token_type_embeddings")}
    word = bundle.model.bert.embeddings.word_embeddings
    assert isinstance(word, Int8Embedding) and word.num_embeddings == 30522
    after = logits_of(bundle.model, bundle.tokenizer, KEPT_TEXTS)
    assert 0 < float((after - before).abs().max()) < 0.05
    assert 0 < ctx.stage_summary["vs_input"]["max_abs_diff"] < 0.05
    assert tables["bert.embeddings.word_embeddings"]["max_abs_error"] <= float(
        word.weight_row_scale.max()) / 2 + 1e-7
    assert for_bundle(bundle).parameter_counts()[0] == params  # int8 values still count as parameters
    assert for_bundle(bundle).size_bytes() < 0.4 * float_size
    folder = save_artifact(bundle, tmp_path / "model")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format"] == "torch-int8" and manifest["loads_in_transformers"] is False
    loaded = lepton.load(folder)
    assert set(int8_embeddings(loaded.bundle.model)) == set(tables)
    assert torch.equal(logits_of(loaded.bundle.model, loaded.bundle.tokenizer, KEPT_TEXTS), after)


def test_quantize_embeddings_then_trim_then_torch_int8(tiny_model_dir, splits, tmp_path):
    """The other order, then PyTorch dynamic INT8 Linears on top: one int8 file holds both."""
    bundle = sequence_bundle(tiny_model_dir)
    old_tok = bundle.tokenizer
    apply(bundle, ctx_for(tmp_path, splits), kind="quantize_embeddings", modules=["word_embeddings"])
    table = bundle.model.bert.embeddings.word_embeddings.dequantized()
    before = logits_of(bundle.model, bundle.tokenizer, KEPT_TEXTS)
    apply(bundle, ctx_for(tmp_path, splits, 1), kind="trim_vocab")
    pieces = bundle.tokenizer.convert_ids_to_tokens(range(len(bundle.tokenizer)))
    keep = [old_tok.convert_tokens_to_ids(t) for t in pieces]
    assert torch.equal(bundle.model.bert.embeddings.word_embeddings.dequantized(), table[keep])
    assert torch.equal(logits_of(bundle.model, bundle.tokenizer, KEPT_TEXTS), before)
    int8 = apply(bundle, ctx_for(tmp_path, splits, 2), kind="quantize", method="dynamic_int8")
    expected = logits_of(int8.model, int8.tokenizer, KEPT_TEXTS)
    folder = save_artifact(int8, tmp_path / "model")
    assert json.loads((folder / MANIFEST).read_text())["format"] == "torch-dynamic-int8"
    loaded = lepton.load(folder).bundle
    assert torch.equal(logits_of(loaded.model, loaded.tokenizer, KEPT_TEXTS), expected)


@pytest.mark.parametrize("method", ["dynamic_int8", "static_int8"])
def test_through_export_and_ort_quantize_no_float_table_is_left(tiny_model_dir, splits, tmp_path, method):
    import onnx
    from onnx import numpy_helper

    bundle = sequence_bundle(tiny_model_dir)
    apply(bundle, ctx_for(tmp_path, splits), kind="trim_vocab")
    apply(bundle, ctx_for(tmp_path, splits, 1), kind="quantize_embeddings")
    expected = logits_of(bundle.model, bundle.tokenizer, KEPT_TEXTS).numpy()
    ctx = ctx_for(tmp_path, splits, 2)
    onnx_bundle = apply(bundle, ctx, kind="export")
    assert ctx.stage_summary["parity"]["max_abs_diff"] < 1e-5
    ctx = ctx_for(tmp_path, splits, 3)
    quantized = apply(onnx_bundle, ctx, kind="quantize", method=method)
    proto = onnx.load(str(quantized.model.path))
    rows = len(bundle.tokenizer)
    inits = {i.name: i for i in proto.graph.initializer}
    tables = {n: i for n, i in inits.items() if list(i.dims)[:1] == [rows]}
    assert {i.data_type for i in tables.values()} == {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT}
    float_tables = [list(i.dims) for i in tables.values() if i.data_type == onnx.TensorProto.FLOAT]
    assert float_tables == [[rows, 1]]  # the row scales, kept float32 (not re-quantized by ORT)
    matrices = [(n, list(i.dims)) for n, i in inits.items()
                if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and min(i.dims) > 1]
    assert matrices == []  # no float32 matrix is left: tables, MatMuls and the pooler's Gemm are int8
    scale = next(numpy_helper.to_array(i) for i in tables.values() if i.data_type == onnx.TensorProto.FLOAT)
    assert np.allclose(scale.ravel(), bundle.model.bert.embeddings.word_embeddings.weight_row_scale.numpy().ravel())
    got = for_bundle(quantized).logits(batch_of(bundle.tokenizer, KEPT_TEXTS))
    assert np.abs(got - expected).max() < 0.05
    folder = save_artifact(quantized, tmp_path / "model")
    loaded = lepton.load(folder)
    assert np.array_equal(for_bundle(loaded.bundle).logits(batch_of(loaded.bundle.tokenizer, KEPT_TEXTS)), got)


def test_recipe_through_export_and_quantize(tiny_model_dir, tmp_path):
    train = write_sentiment_tsv(tmp_path / "train.tsv", 48, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 16, seed=2)
    tree = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "run", epochs=1)
    tree["stages"] += [{"kind": "trim_vocab", "keep_characters": "seen"}, {"kind": "quantize_embeddings"},
                       {"kind": "export"}, {"kind": "quantize", "method": "dynamic_int8"}]
    tree["evaluate"].update(memory=False, robustness=False)
    report = lepton.run(parse_recipe(tree), progress=False)
    assert [v.name for v in report.variants] == ["finetune", "trim_vocab", "quantize_embeddings", "export", "quantize"]
    sizes = [v.efficiency.size_mb for v in report.variants]
    assert sizes[1] < sizes[0] / 8 and sizes[2] < sizes[1] and sizes[4] < sizes[3]  # trim, tables, quantize
    loaded = lepton.load(tmp_path / "run" / "model")
    assert loaded.manifest["format"] == "onnx" and len(loaded.bundle.tokenizer) < 200
    assert [r["label"] for r in loaded.predict(["good nice great", "bad awful poor"])] != []


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize("stages, message", [
    ([{"kind": "export"}, {"kind": "trim_vocab"}], "stages.1 (trim_vocab) needs a torch model"),
    ([{"kind": "export"}, {"kind": "quantize_embeddings"}], "stages.1 (quantize_embeddings) needs a torch model"),
    ([{"kind": "trim_vocab", "reference_top": 5}], "reference_top needs reference"),
    ([{"kind": "trim_vocab", "splits": []}], "name at least one split"),
    ([{"kind": "quantize_embeddings", "modules": []}], "name at least one embedding module"),
])
def test_bad_settings_are_recipe_errors(tiny_model_dir, tmp_path, stages, message):
    tree = tiny_recipe(tiny_model_dir, tmp_path / "t.tsv", tmp_path / "d.tsv", tmp_path / "out")
    tree["stages"] = stages
    with pytest.raises(RecipeError) as info:
        parse_recipe(tree)
    assert message in str(info.value)


def test_no_matching_embedding_is_a_stage_error(tiny_model_dir, splits, tmp_path):
    bundle = sequence_bundle(tiny_model_dir)
    with pytest.raises(StageError, match=r"stages.0.modules: no float embedding matches \['wte'\] "
                                         r"\(the model's embeddings: bert.embeddings.word_embeddings"):
        apply(bundle, ctx_for(tmp_path, splits), kind="quantize_embeddings", modules=["wte"])


def test_a_bpe_tokenizer_is_refused_clearly(tiny_model_dir, splits, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"[UNK]": 0, "a": 1, "b": 2, "ab": 3}, merges=[("a", "b")], unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bundle = sequence_bundle(tiny_model_dir)
    bundle.tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(StageError, match="stages.0: cannot trim the vocabulary: only WordPiece tokenizers "
                                         "can be trimmed; this one is BPE"):
        apply(bundle, ctx_for(tmp_path, splits), kind="trim_vocab")
    assert bundle.model.config.vocab_size == 30522  # untouched
