"""A model Lepton builds instead of loading: ``model: {new: marian, ...}`` in a recipe.

A Transformer encoder-decoder (transformers' ``MarianMTModel``: sinusoidal positions, shared
source/target embeddings tied to the output layer, the layout Marian and CTranslate2 read) with
random weights, from a size ``preset`` or explicit dimensions, and a tokenizer trained on the
recipe's own training data (source and target sentences together: one shared vocabulary) with
the ``tokenizers`` library (BPE or Unigram over SentencePiece-style pieces). Both are written as an
ordinary Hugging Face folder, so every later step (training, export, ``from_pretrained``,
converters) treats the model as any other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lepton.core import atomic
from lepton.core.config import StrictModel
from lepton.core.errors import ModelLoadError

log = logging.getLogger(__name__)

# (d_model, encoder layers, decoder layers, attention heads, FFN width)
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 2, 2, 4, 128),  # tests
    "small": (256, 3, 3, 4, 1024),  # CPU training in an hour or two (Multi30k-sized data)
    "base": (512, 6, 6, 8, 2048),  # "Transformer base" (Vaswani et al.)
}
SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: pad (also the decoder start, as Marian), eos, unk


class NewModelConfig(StrictModel):
    """``model: {new: marian, preset: small, vocab_size: 8000}``: a Transformer trained from scratch."""

    new: Literal["marian"]
    preset: Literal["tiny", "small", "base"] = "small"
    d_model: int | None = Field(default=None, ge=8)  # each None: the preset's
    encoder_layers: int | None = Field(default=None, ge=1)
    decoder_layers: int | None = Field(default=None, ge=1)
    heads: int | None = Field(default=None, ge=1)
    ffn_dim: int | None = Field(default=None, ge=8)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    activation: Literal["relu", "gelu", "swish"] = "relu"
    max_positions: int = Field(default=256, ge=16)
    tokenizer: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = Field(default=8000, ge=64, le=256000)
    lowercase: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> NewModelConfig:
        d, _, _, h, _ = self.dims()
        if d % h:
            raise ValueError(f"d_model ({d}) must be a multiple of heads ({h})")
        return self

    def dims(self) -> tuple[int, int, int, int, int]:
        base = PRESETS[self.preset]
        own = (self.d_model, self.encoder_layers, self.decoder_layers, self.heads, self.ffn_dim)
        d, e, dl, h, f = (b if o is None else o for o, b in zip(own, base))
        return d, e, dl, h, f

    def describe(self) -> str:
        """What reports and model cards name as the source model."""
        d, e, dl, h, f = self.dims()
        return (f"new:{self.new} (d_model {d}, {e}+{dl} layers, {h} heads, FFN {f}, "
                f"{self.tokenizer} vocabulary {self.vocab_size})")

    def fingerprint(self, texts_digest: str, seed: int) -> str:
        blob = json.dumps({"config": self.model_dump(mode="json"), "data": texts_digest, "seed": seed},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def train_tokenizer(config: NewModelConfig, texts: Sequence[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` trained on ``texts``: NFKC (and lowercase if asked), words
    split on spaces as SentencePiece does (the piece keeps its leading "▁"), BPE or Unigram with
    ``vocab_size`` pieces, "</s>" after every sequence."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ModelLoadError("model.new: no training text to build the tokenizer from (data.train is empty)")
    if config.tokenizer == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer: Any = trainers.BpeTrainer(vocab_size=config.vocab_size, special_tokens=list(SPECIALS),
                                           min_frequency=2, show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=config.vocab_size, special_tokens=list(SPECIALS),
                                          unk_token="<unk>", show_progress=False)
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if config.lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=config.max_positions)


def build_model(config: NewModelConfig, vocab_size: int, seed: int) -> Any:
    import torch
    from transformers import MarianConfig, MarianMTModel

    d, e, dl, h, f = config.dims()
    mc = MarianConfig(vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=d,
                      encoder_layers=e, decoder_layers=dl, encoder_attention_heads=h,
                      decoder_attention_heads=h, encoder_ffn_dim=f, decoder_ffn_dim=f,
                      activation_function=config.activation, dropout=config.dropout,
                      attention_dropout=config.dropout, activation_dropout=0.0,
                      max_position_embeddings=config.max_positions, scale_embedding=True,
                      share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
                      num_beams=1, max_length=config.max_positions)
    torch.manual_seed(seed)
    return MarianMTModel(mc)


def build_new_model(config: NewModelConfig, texts: Sequence[str], folder: Path, *, seed: int) -> Path:
    """The model folder for ``config``: built into ``folder`` (tokenizer, then random weights), or
    the one already there when it was built from the same settings, data and seed (a resumed run)."""
    mark = texts_digest(texts)
    key = config.fingerprint(mark, seed)
    stamp = folder / "lepton-new-model.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == key:
                log.info("model.new: reusing the model built earlier in %s", folder)
                return folder
        except (OSError, ValueError):
            pass
    log.info("model.new: training a %s tokenizer (%d pieces) on %d texts", config.tokenizer,
             config.vocab_size, len(texts))
    tokenizer = train_tokenizer(config, texts)
    model = build_model(config, len(tokenizer), seed)
    params = sum(p.numel() for p in model.parameters())
    log.info("model.new: %s, %.1f M parameters", config.describe(), params / 1e6)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    atomic.write_text(tmp / "lepton-new-model.json", json.dumps({
        "fingerprint": key, "config": config.model_dump(mode="json"), "seed": seed,
        "texts": len(texts), "texts_sha256": mark, "vocab_size": len(tokenizer), "parameters": params}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
