"""``lepton gguf MODEL OUT.gguf``: a PyTorch decoder (a Lepton model folder saved before ``export``,
a Hugging Face folder or a model spec such as ``builtin:smollm2-135m``) written as one GGUF file for
llama.cpp and Ollama (``lepton.models.gguf_export``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lepton.core.errors import ModelLoadError
from lepton.models.gguf_export import TYPES, GgufExportError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a PyTorch decoder: a Lepton model folder (before export), a Hugging Face "
                                 "folder, or a spec such as builtin:smollm2-135m")
    p.add_argument("output", help="the .gguf file to write (replaced only when the new one is whole)")
    p.add_argument("--type", dest="dtype", choices=TYPES, default="q8_0",
                   help="tensor type of the matrices (default q8_0; norms stay f32; with 4/5-bit types the "
                        "embeddings take q8_0)")
    p.add_argument("--pre", help="llama.cpp's pre-tokenizer name (tokenizer.ggml.pre), when Lepton does not "
                                 "recognise the tokenizer's own")
    p.add_argument("--name", help="the model name stored in the file (default: the file name)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def to_gguf(model: str, output: str, *, dtype: str = "q8_0", pre: str | None = None,
            name: str | None = None) -> dict[str, object]:
    """Write the decoder ``model`` to ``output`` as GGUF; what was written (path, type, size ...)."""
    from lepton.models.decoder import load_generative
    from lepton.models.gguf_export import write_gguf

    out = Path(output)
    if out.suffix != ".gguf":
        raise GgufExportError(f"{output}: give a file name ending in .gguf")
    if out.is_dir():
        raise GgufExportError(f"{output}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise GgufExportError(f"{output}: folder {out.parent} does not exist")
    try:
        loaded, tokenizer = load_generative(model)
    except ModelLoadError as err:
        raise GgufExportError(f"{err} (GGUF is written from a PyTorch decoder: give the model before its "
                              "export stage, e.g. OUT/work/stage-N-.../snapshot with --keep-work)") from None
    return write_gguf(loaded, tokenizer, out, dtype=dtype, pre=pre, name=name)


def run(args: argparse.Namespace) -> int:
    info = to_gguf(args.model, args.output, dtype=args.dtype, pre=args.pre, name=args.name)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"wrote {info['path']}: {info['architecture']}, {info['type']}, {info['size_mb']} MB "
              f"(pre-tokenizer {info['pre_tokenizer']})")
    return 0
