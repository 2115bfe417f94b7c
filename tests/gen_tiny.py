"""Tiny generative models for tests: a Llama-style decoder and a T5 encoder-decoder, random
weights, with a small BPE tokenizer trained here (no hub)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS_EN = ["a", "man", "woman", "dog", "cat", "is", "runs", "sits", "on", "the", "red", "blue", "grass",
            "street", "two", "children", "play", "with", "ball", "in", "park"]
WORDS_DE = ["ein", "mann", "frau", "hund", "katze", "ist", "rennt", "sitzt", "auf", "der", "rot", "blau",
            "gras", "strasse", "zwei", "kinder", "spielen", "mit", "ball", "im", "park"]
TRANSLATE = dict(zip(WORDS_EN, WORDS_DE))


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A word-for-word toy 'translation' task: learnable by a tiny model."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS_EN, rng.randint(2, 5))
        out.append((" ".join(words), " ".join(TRANSLATE[w] for w in words)))
    return out


def tiny_tokenizer(*, seq2seq: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS_EN + WORDS_DE), "Translate: German English text ."] + [
        f"{a} {b}" for a, b in toy_pairs(200)]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    if seq2seq:  # T5 style: "... </s>"
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    else:  # Llama style: "<s> ..."
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(seq2seq=False)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# Tiny configs of decoder layouts beyond Llama's (tests/test_decoder_layouts.py): each keeps its
# layers and FFN its own way (models/decoder_structure.py).
DECODER_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                              "num_attention_heads": 4, "num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                              "num_attention_heads": 4, "num_key_value_heads": 2}),
    "gemma": ("GemmaConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 256}),
    "gpt_neox": ("GPTNeoXConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                                   "num_attention_heads": 4}),
    "opt": ("OPTConfig", {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                          "word_embed_proj_dim": 64}),
    "phi": ("PhiConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                          "num_attention_heads": 4}),
    "phi3": ("Phi3Config", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                            "num_attention_heads": 4, "num_key_value_heads": 2}),
    "falcon": ("FalconConfig", {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                                "new_decoder_architecture": False}),
    "gptj": ("GPTJConfig", {"n_embd": 64, "n_layer": 3, "n_head": 4, "rotary_dim": 8, "n_positions": 256}),
}


def tiny_decoder(arch: str, vocab_size: int, seed: int = 0):
    """A random-weight causal LM of ``arch`` (a key of :data:`DECODER_CONFIGS`)."""
    import torch
    import transformers

    name, settings = DECODER_CONFIGS[arch]
    config = getattr(transformers, name)(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                          **settings)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def save_tiny_decoder(folder: Path, arch: str, seed: int = 0) -> Path:
    from transformers import GenerationConfig

    tokenizer = tiny_tokenizer(seq2seq=False)
    model = tiny_decoder(arch, len(tokenizer), seed)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_t5(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    tokenizer = tiny_tokenizer(seq2seq=True)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                      num_decoder_layers=2, num_heads=4, pad_token_id=0, eos_token_id=2,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# Tiny encoder-decoder configs (tests/test_seq2seq_compress.py): T5 (blocks, relative position
# bias in block 0, plain or gated FFN), Marian and BART (model.encoder/decoder.layers, fc1/fc2).
SEQ2SEQ_CONFIGS: dict[str, tuple[str, dict]] = {
    "t5": ("T5Config", {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 3, "num_decoder_layers": 3,
                        "num_heads": 4, "decoder_start_token_id": 0}),
    "t5-gated": ("T5Config", {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 3, "num_decoder_layers": 3,
                              "num_heads": 4, "decoder_start_token_id": 0, "feed_forward_proj": "gated-gelu"}),
    "marian": ("MarianConfig", {"d_model": 64, "encoder_layers": 3, "decoder_layers": 3,
                                "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
                                "decoder_ffn_dim": 96, "max_position_embeddings": 128, "decoder_start_token_id": 0}),
    "bart": ("BartConfig", {"d_model": 64, "encoder_layers": 3, "decoder_layers": 3, "encoder_attention_heads": 4,
                            "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
                            "max_position_embeddings": 128, "decoder_start_token_id": 2, "forced_eos_token_id": 2}),
}


def save_tiny_seq2seq(folder: Path, arch: str, seed: int = 0) -> Path:
    """A random-weight encoder-decoder of ``arch`` (a key of :data:`SEQ2SEQ_CONFIGS`) with the
    T5-style tiny tokenizer, as a model folder."""
    import torch
    import transformers
    from transformers import GenerationConfig

    tokenizer = tiny_tokenizer(seq2seq=True)
    name, settings = SEQ2SEQ_CONFIGS[arch]
    config = getattr(transformers, name)(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2, bos_token_id=1,
                                         **settings)
    torch.manual_seed(seed)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=config.decoder_start_token_id,
                                               eos_token_id=2, pad_token_id=0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_pairs_tsv(path: Path, n: int, seed: int = 0) -> Path:
    """prompt<TAB>target rows of the toy translation task."""
    lines = ["prompt\ttarget"] + [f"{a}\t{b}" for a, b in toy_pairs(n, seed)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_text_tsv(path: Path, n: int, seed: int = 0) -> Path:
    """One short toy 'document' per row in a text column."""
    lines = ["text"] + [f"{a} . {b} ." for a, b in toy_pairs(n, seed)]
    path.write_text("\n".join(lines) + "\n")
    return path
