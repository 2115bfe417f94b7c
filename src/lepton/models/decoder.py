"""Load a decoder-only or encoder-decoder model and its tokenizer; refuse models that cannot generate."""

from __future__ import annotations

import logging
import pickle
from typing import Any, Literal

from lepton.core.errors import ModelLoadError
from lepton.models import first_line, load_tokenizer, resolve_model

log = logging.getLogger(__name__)

Architecture = Literal["causal", "seq2seq"]


def architecture_of(location: str, *, trust_remote_code: bool = False) -> Architecture:
    """'causal' or 'seq2seq' from the model's config; a model with neither head is an error."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model: cannot read the config of {location}: {first_line(err)}") from None
    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False) and kind in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq"
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False):
        # BERT-style encoders are listed too (as "BertLMHeadModel"), but only as decoders when
        # configured so; a plain encoder cannot generate.
        if getattr(config, "is_decoder", True) is False and kind in _ENCODER_ONLY:
            raise _no_head(location, kind)
        return "causal"
    raise _no_head(location, kind)


# Encoder-only families that transformers also lists among causal LMs (as decoders on request).
_ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "xlm-roberta-xl",
                 "data2vec-text", "rembert", "roc_bert", "bert-generation", "megatron-bert"}


def _no_head(location: str, kind: str) -> ModelLoadError:
    return ModelLoadError(f"model: {location} ({kind}) has no causal-LM or seq2seq head; generative "
                          "tasks need a decoder-only model (AutoModelForCausalLM) or an "
                          "encoder-decoder (AutoModelForSeq2SeqLM)")


def auto_class(arch: Architecture) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if arch == "seq2seq" else AutoModelForCausalLM


def load_generative(spec: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, fast tokenizer with a pad token) for ``builtin:...``, a folder or a hub id."""
    from safetensors import SafetensorError

    location = resolve_model(spec)
    arch = architecture_of(location, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(location, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Decoder-only tokenizers often have no pad token; padding is masked, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = auto_class(arch).from_pretrained(location, trust_remote_code=trust_remote_code,
                                                 dtype="float32")
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as err:
        raise ModelLoadError(f"model: cannot load {location}: {first_line(err)}") from None
    model.eval()
    return model, tokenizer
