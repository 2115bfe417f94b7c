"""Encoding, generation settings, generate() and scoring on tiny random decoder and encoder-decoder models."""

from __future__ import annotations

import math

import pytest
import torch

from lepton.core.errors import LeptonError, ModelLoadError
from lepton.models.decoder import architecture_of, load_generative
from lepton.tasks.generate import cut_at_stop, generate
from lepton.tasks.generation_settings import GenerationSettings, GenerationSettingsError
from lepton.tasks.prompt_encoding import IGNORE, collate, encode_causal, encode_documents, encode_seq2seq
from lepton.tasks.scoring import document_losses, target_losses
from tests.gen_tiny import save_tiny_llama, save_tiny_t5

PROMPTS = ["a man runs", "two children play with the ball in the park", "the dog", "a red cat sits"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    return (folder, *load_generative(str(folder)))


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = save_tiny_t5(tmp_path_factory.mktemp("t5"))
    return (folder, *load_generative(str(folder)))


def test_causal_encoding_masks_the_prompt_and_counts_truncation(llama):
    _, _, tok = llama
    enc = encode_causal(tok, ["a man runs", "two children play with the ball"], ["ein mann", "zwei"],
                        max_prompt_tokens=4, max_target_tokens=2)
    for ids, labels in zip(enc.input_ids, enc.labels):
        assert len(ids) == len(labels) and labels[-1] == tok.eos_token_id
        n_prompt = sum(1 for x in labels if x == IGNORE)
        assert labels[n_prompt:] == ids[n_prompt:] and n_prompt <= 4
    assert enc.truncation.prompts >= 1 and enc.truncation.examples == 2
    full = tok("two children play with the ball")["input_ids"]
    assert enc.input_ids[1][:4] == full[-4:]  # cut from the left: the end of the prompt stays


def test_seq2seq_encoding_and_collation(t5):
    _, _, tok = t5
    enc = encode_seq2seq(tok, ["a man", "the dog runs"], ["ein mann", "der hund rennt"])
    assert enc.labels[0][-1] == tok.eos_token_id and enc.input_ids[1][-1] == tok.eos_token_id
    batch = collate(enc.input_ids, enc.labels, tok.pad_token_id, seq2seq=True)
    assert batch["labels"].shape[1] == max(len(x) for x in enc.labels)
    assert (batch["labels"][0, len(enc.labels[0]):] == IGNORE).all()
    assert batch["attention_mask"][0].sum() == len(enc.input_ids[0])


def test_document_windows_score_every_token_once(llama):
    _, _, tok = llama
    text = "two children play with the ball in the park " * 3
    enc, owner = encode_documents(tok, [text, "a dog"], max_length=8)
    scored = [x for labels in enc.labels for x in labels if x != IGNORE]
    expected = tok(text, add_special_tokens=False)["input_ids"] + tok("a dog", add_special_tokens=False)["input_ids"]
    assert sorted(scored) == sorted(expected) and len(scored) == len(expected)
    assert owner[0] == 0 and owner[-1] == 1 and enc.truncation.documents == 1


def test_settings_errors_name_the_field():
    with pytest.raises(GenerationSettingsError, match=r"generation\.temperature: .*greater than 0"):
        GenerationSettings.parse({"strategy": "sample", "temperature": 0})
    with pytest.raises(GenerationSettingsError, match="top_p applies to strategy sample only, not greedy"):
        GenerationSettings.parse({"top_p": 0.9})
    with pytest.raises(GenerationSettingsError, match=r"generation\.max_new_tokens"):
        GenerationSettings.parse({"max_new_tokens": 0})
    with pytest.raises(GenerationSettingsError, match=r"generation\.nucleus: Extra inputs"):
        GenerationSettings.parse({"nucleus": 0.9})
    assert issubclass(GenerationSettingsError, LeptonError)


def test_settings_map_onto_a_generation_config():
    beam = GenerationSettings(strategy="beam", num_beams=3, max_new_tokens=9).to_generation_config(eos_token_id=2)
    assert beam.num_beams == 3 and not beam.do_sample and beam.max_new_tokens == 9
    sample = GenerationSettings(strategy="sample", temperature=0.7, top_k=5).to_generation_config()
    assert sample.do_sample and sample.temperature == 0.7 and sample.top_k == 5


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_generate_is_batch_independent_and_seeded(which, request):
    _, model, tok = request.getfixturevalue(which)
    greedy = GenerationSettings(max_new_tokens=6, batch_size=4)
    together = generate(model, tok, PROMPTS, greedy)
    alone = [generate(model, tok, [p], greedy)[0] for p in PROMPTS]
    assert together == alone  # left padding (decoder) / masks (encoder) make the batch irrelevant
    sample = GenerationSettings(strategy="sample", seed=7, max_new_tokens=6)
    first = generate(model, tok, PROMPTS, sample)
    assert generate(model, tok, PROMPTS, sample) == first
    other = generate(model, tok, PROMPTS, sample.model_copy(update={"seed": 8}))
    assert other != first
    beams = generate(model, tok, PROMPTS[:2], GenerationSettings(strategy="beam", num_beams=3, max_new_tokens=4))
    assert len(beams) == 2


def test_stop_strings_cut_the_text(llama):
    _, model, tok = llama
    plain = generate(model, tok, PROMPTS[:1], GenerationSettings(max_new_tokens=12))[0]
    assert len(plain) > 3
    stop = plain[2:4]
    cut = generate(model, tok, PROMPTS[:1], GenerationSettings(max_new_tokens=12, stop=[stop]))[0]
    assert cut == cut_at_stop(plain, [stop]).strip() and stop not in cut
    assert cut_at_stop("abc. def", [".", "e"]) == "abc"


def test_target_losses_match_the_models_own_loss(llama, t5):
    for _, model, tok in (llama, t5):
        losses = target_losses(model, tok, ["a man runs"], ["ein mann rennt"])
        if model.config.is_encoder_decoder:
            enc = encode_seq2seq(tok, ["a man runs"], ["ein mann rennt"])
        else:
            enc = encode_causal(tok, ["a man runs"], ["ein mann rennt"])
        batch = collate(enc.input_ids, enc.labels, tok.pad_token_id, seq2seq=model.config.is_encoder_decoder)
        with torch.no_grad():
            mean = float(model(**batch).loss)
        assert losses.nll[0] / losses.tokens[0] == pytest.approx(mean, rel=1e-4)
        assert losses.bytes == [len("ein mann rennt")]


def test_document_losses_bits_per_byte_is_finite(llama):
    _, model, tok = llama
    losses = document_losses(model, tok, ["two children play in the park", "a dog"], max_length=6)
    assert (all(n > 0 for n in losses.nll)
            and losses.tokens[1] == len(tok("a dog", add_special_tokens=False)["input_ids"]))
    # A random model over ~320 tokens: about ln(320) nats a token.
    per_token = sum(losses.nll) / sum(losses.tokens)
    assert abs(per_token - math.log(len(tok))) < 1.0


def test_a_model_without_a_generative_head_is_one_clear_error(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="has no causal-LM or seq2seq head"):
        architecture_of(str(tiny_model_dir))
    with pytest.raises(ModelLoadError, match="has no causal-LM or seq2seq head"):
        load_generative(str(tiny_model_dir))
