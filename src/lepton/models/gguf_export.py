"""A decoder written as one GGUF file, the format llama.cpp and Ollama users deploy.

The ``gguf`` package writes the container, names tensors the way llama.cpp expects
(``gguf.get_tensor_name_map``) and quantizes blocks (``gguf.quants.quantize``: F16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1; the k-quants have no writer there). Written here, because no library does it
for a model held in memory: the table of architectures, the metadata llama.cpp reads for them,
the byte-level BPE vocabulary, and the one layout change llama.cpp needs (the query and key rows of
Llama-family attention are stored interleaved per head, as llama.cpp's own ``convert_hf_to_gguf.py``
does; transformers' GGUF reader undoes it).

Which tensors get the requested type: every matrix; norms and biases stay F32; with a 4- or 5-bit
type the token embeddings (and an untied output matrix) take Q8_0, as the GGUF files people
download keep them. A matrix whose rows do not split into the type's blocks stays F16.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton.core.errors import LeptonError

log = logging.getLogger(__name__)


class GgufExportError(LeptonError):
    """The model, its tokenizer or a setting cannot be written as GGUF."""


@dataclass(frozen=True)
class GgufArch:
    name: str  # GGUF's general.architecture (and gguf.MODEL_ARCH member)
    interleave_qk: bool  # llama.cpp's "normal" rope: q/k rows interleaved per head (Llama, Mistral)


# transformers' model_type -> how GGUF stores it. A new architecture joins with one row here.
ARCHITECTURES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", interleave_qk=True),
    "mistral": GgufArch("llama", interleave_qk=True),
    "qwen2": GgufArch("qwen2", interleave_qk=False),
}
TYPES = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
# llama.cpp's general.file_type (enum llama_ftype) for each whole-file type.
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}
# Pre-tokenizers llama.cpp knows (its tokenizer.ggml.pre names), recognised from tokenizer.json's
# own pre_tokenizer: plain byte-level BPE with GPT-2's regex, digits split first (SmolLM), or a
# Split on a known regex before a regex-free byte level.
_GPT2_REGEX_PRE = "gpt-2"
_DIGITS_THEN_BYTELEVEL_PRE = "smollm"
_SPLIT_REGEX_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+": "llama-bpe",
}


def _interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half row order to llama.cpp's interleaved pairs, per head (convert_hf_to_gguf's
    ``permute``)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _pre_tokenizer(tokenizer_json: dict[str, Any], where: str) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and pre.get("use_regex", True):
        return _GPT2_REGEX_PRE
    if kinds == ["Digits", "ByteLevel"]:
        return _DIGITS_THEN_BYTELEVEL_PRE
    if kinds == ["Split", "ByteLevel"]:
        regex = (pre["pretokenizers"][0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_REGEX_PRE:
            return _SPLIT_REGEX_PRE[regex]
    raise GgufExportError(f"{where}: pre-tokenizer {kinds} has no llama.cpp counterpart Lepton recognises; "
                          f"give it with --pre (llama.cpp's tokenizer.ggml.pre name)")


def _vocabulary(tokenizer: Any, where: str) -> dict[str, Any]:
    """Tokens, token types and merges of a byte-level BPE tokenizer (what GGUF's ``gpt2`` model is)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise GgufExportError(f"{where}: the tokenizer is not a fast (tokenizers) tokenizer; GGUF needs its vocabulary")
    data = json.loads(backend.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise GgufExportError(f"{where}: only byte-level BPE tokenizers are written to GGUF (this one is "
                              f"{model.get('type')} with a {(data.get('decoder') or {}).get('type')} decoder)")
    vocab: dict[str, int] = model["vocab"]
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    size = max([*vocab.values(), *added]) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # UNUSED where no token has the id
    for text, i in vocab.items():
        tokens[i], types[i] = text, 1  # NORMAL
    for i, t in added.items():
        tokens[i], types[i] = t["content"], 3 if t.get("special") else 4  # CONTROL / USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "json": data}


def _quant_type(name: str, shape: tuple[int, ...], wanted: str) -> str:
    if len(shape) < 2:
        return "f32"
    if wanted in ("q4_0", "q4_1", "q5_0", "q5_1") and name in ("token_embd.weight", "output.weight"):
        wanted = "q8_0"
    if wanted.startswith("q"):
        import gguf

        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wanted.upper()]][0]
        if shape[-1] % block:
            return "f16"
    return wanted


def write_gguf(model: Any, tokenizer: Any, path: str | os.PathLike[str], *, dtype: str = "q8_0",
               pre: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Write ``model`` (a transformers causal LM of an architecture in :data:`ARCHITECTURES`) and
    its byte-level BPE ``tokenizer`` to ``path`` as GGUF with tensors of ``dtype``. The file is
    written beside ``path`` and moved into place when whole. Returns what was written."""
    import gguf

    from lepton.core.atomic import write_file

    out = Path(path)
    where = str(out)
    if dtype not in TYPES:
        raise GgufExportError(f"{where}: type {dtype!r} is not written (choose one of {', '.join(TYPES)})")
    arch = ARCHITECTURES.get(str(getattr(model.config, "model_type", "")))
    if arch is None:
        raise GgufExportError(f"{where}: model type {getattr(model.config, 'model_type', None)!r} is not written to "
                              f"GGUF yet (written: {', '.join(sorted(ARCHITECTURES))})")
    vocab = _vocabulary(tokenizer, where)
    pre = pre or _pre_tokenizer(vocab["json"], where)

    def fill(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch.name)
        writer.add_name(name or out.stem)
        _add_metadata(writer, model.config, dtype)
        _add_vocabulary(writer, tokenizer, vocab, pre)
        _add_tensors(writer, model, arch, dtype, where)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_file(out, fill)
    size = out.stat().st_size
    log.debug("wrote %s: %s, %s tensors, %.1f MB", out, arch.name, dtype, size / 1e6)
    return {"path": str(out), "architecture": arch.name, "type": dtype, "pre_tokenizer": pre,
            "size_mb": round(size / 1e6, 3), "vocab_size": len(vocab["tokens"])}


def _heads(config: Any) -> tuple[int, int, int]:
    """(attention heads, key/value heads, head dimension) of a decoder config."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return heads, kv_heads, int(getattr(config, "head_dim", None) or config.hidden_size // heads)


def _add_metadata(writer: Any, config: Any, dtype: str) -> None:
    import gguf

    heads, kv_heads, head_dim = _heads(config)
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    writer.add_rope_freq_base(float(theta or getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(_FILE_TYPE.get(dtype, 1))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_vocabulary(writer: Any, tokenizer: Any, vocab: dict[str, Any], pre: str) -> None:
    writer.add_vocab_size(len(vocab["tokens"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key, adder in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                       ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, key, None)
        if isinstance(value, int):
            adder(value)
    writer.add_add_bos_token(_adds_bos(tokenizer))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def _add_tensors(writer: Any, model: Any, arch: GgufArch, dtype: str, where: str) -> None:
    """Every weight under llama.cpp's name, q/k rows interleaved where the architecture needs it,
    in the type :func:`_quant_type` picks."""
    import gguf
    import torch

    config = model.config
    heads, kv_heads, _ = _heads(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        array = tensor.detach().to(torch.float32).cpu().numpy()
        gg = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gg is None:
            raise GgufExportError(f"{where}: tensor {hf_name} has no GGUF name for {arch.name}")
        if arch.interleave_qk and re.search(r"self_attn\.q_proj\.weight$", hf_name):
            array = _interleave(array, heads)
        elif arch.interleave_qk and re.search(r"self_attn\.k_proj\.weight$", hf_name):
            array = _interleave(array, kv_heads)
        kind = _quant_type(gg, array.shape, dtype)
        if kind == "f32":
            writer.add_tensor(gg, array.astype(np.float32))
        elif kind == "f16":
            writer.add_tensor(gg, array.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType[kind.upper()]
            writer.add_tensor(gg, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token before a plain text (llama.cpp's add_bos_token)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos
