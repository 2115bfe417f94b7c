"""ONNX export of a decoder-only model with its KV cache, and the parity check that guards it.

Two exporters, chosen by ``backend``:

- ``"genai"``: ONNX Runtime GenAI's model builder (``onnxruntime_genai.models.builder``, pip
  ``onnxruntime-genai``). It works offline on a local transformers folder with this stack
  (tested: onnxruntime-genai 0.18.0, transformers 5.24, torch 2.13 CPU) for the architectures it
  knows (Llama, Mistral, Qwen, Phi, Gemma ...), writes fused operators (GroupQueryAttention with
  rotary embedding, SimplifiedLayerNormalization) and quantizes to int4/int8 itself. Its graph has
  no ``position_ids`` input (positions come from the mask), so the ORT loop cannot join running
  batches of different lengths on it (see :func:`lepton.runtimes.ort_decoder_loop.merge_states`).
- ``"torch"``: Lepton's own exporter, ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``:
  the dynamo exporter needs ``onnxscript``, which Lepton does not require) of a wrapper taking the
  cache as flat tensors and building a transformers ``DynamicCache``. Any ``AutoModelForCausalLM``
  whose attention goes through the cache API exports this way, including models the builder does
  not know and models after :mod:`lepton.models.decoder_structure`.

Both graphs have inputs ``input_ids``, ``attention_mask``, ``past_key_values.<i>.key/value`` (and
``position_ids`` for ``"torch"``), outputs ``logits`` and ``present.<i>.key/value``, with dynamic
batch, sequence and past lengths. :func:`check_parity` generates greedily with PyTorch and with the
ONNX graph on a set of prompts and raises :class:`ParityError` unless the tokens are identical.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lepton.core.atomic import write_folder
from lepton.core.errors import StageError
from lepton.runtimes.ort_decoder_loop import (
    OrtDecoder,
    SamplingSettings,
    encode_left_padded,
    generate_ids,
)

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
EXPORTER = "torch.onnx TorchScript exporter (dynamo=False) of a flat-cache wrapper"
GENAI_PRECISIONS = ("fp32", "int8", "int4")  # the builder's CPU targets (fp16/bf16 are GPU-only there)


class ExportError(StageError):
    """The decoder could not be exported (the message says which backend and why)."""


class ParityError(StageError):
    """The ONNX graph does not reproduce the PyTorch model's greedy tokens."""


def genai_available() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


class _FlatCache(torch.nn.Module):
    """``model`` with the cache as flat tensors in and out (what an ONNX graph can carry)."""

    def __init__(self, model: torch.nn.Module, last_logits_only: bool) -> None:
        super().__init__()
        self.model = model
        # Generation needs only the last position's logits: with logits_to_keep=1 the output layer
        # runs on one position instead of every prompt token (a large share of prefill for a
        # small model with a 49k vocabulary).
        self.extra = {"logits_to_keep": 1} if last_logits_only else {}
        self.layers = model.config.num_hidden_layers
        # transformers 5.x renames forward's past_key_values to cache (the old name warns until 5.40).
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{self.cache_arg: cache}, **self.extra)
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [n.replace("past_key_values.", "present.") for n in past]


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def export_torch(model: torch.nn.Module, path: Path, *, opset: int = 17, last_logits_only: bool = True) -> Path:
    """Lepton's own exporter: write ``path`` (one .onnx file; external data when over 2 GB).
    ``last_logits_only``: ``logits`` has one position per row (the last), what generation uses;
    False keeps every position (scoring, perplexity)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ExportError("export with a KV cache: only decoder-only models (encoder-decoders are not supported yet)")
    layers, kv = config.num_hidden_layers, getattr(config, "num_key_value_heads", config.num_attention_heads)
    past_names, present_names = cache_names(layers)
    batch, seq, past_len = 2, 3, 4  # distinct sizes, so the tracer cannot confuse the axes
    dtype = next(model.parameters()).dtype
    example = [torch.randint(0, config.vocab_size, (batch, seq)), torch.ones(batch, past_len + seq, dtype=torch.long),
               torch.arange(past_len, past_len + seq).expand(batch, seq)]
    example += [torch.zeros(batch, kv, past_len, _head_dim(config), dtype=dtype) for _ in past_names]
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "total_sequence"},
                                       "position_ids": {0: "batch", 1: "sequence"},
                                       "logits": {0: "batch"} if last_logits_only else {0: "batch", 1: "sequence"}}
    axes.update({n: {0: "batch", 2: "past_sequence"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total_sequence"} for n in present_names})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns at every Python branch on a shape in transformers' cache and mask
            # code; those branches are the same for every length (the parity check verifies it).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*aten::index.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice
            torch.onnx.export(_FlatCache(model, last_logits_only), tuple(example), str(path), opset_version=opset,
                              dynamo=False,
                              input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                              output_names=["logits", *present_names], dynamic_axes=axes, do_constant_folding=True)
    except Exception as err:  # the exporter raises many types; the cause goes in the message
        raise ExportError(f"ONNX export of {type(model).__name__} with a KV cache failed: {err}") from err
    finally:
        model.train(was_training)
    return path


def export_genai(model_dir: Path, out_dir: Path, *, precision: str = "fp32",
                 extra_options: dict[str, str] | None = None) -> None:
    """ONNX Runtime GenAI's model builder on a local transformers folder, writing into ``out_dir``."""
    if precision not in GENAI_PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(GENAI_PRECISIONS)}, got {precision!r}")
    if not genai_available():
        raise ExportError("backend 'genai' needs onnxruntime-genai: pip install 'lepton[genai]'")
    # A subprocess, not builder.create_model: the builder prints progress and keeps module state,
    # and its Python entry needs its own option parsing first; the command line is its stable API.
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out_dir),
               "-p", precision, "-e", "cpu", "-c", cache]
        if extra_options:
            cmd += ["--extra_options", *[f"{k}={v}" for k, v in extra_options.items()]]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not (out_dir / ONNX_FILE).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"ONNX Runtime GenAI's builder failed on {model_dir}: {tail[0]}")


def export_decoder(model_dir: str | Path, out_dir: str | Path, *, backend: str = "torch", precision: str = "fp32",
                   opset: int = 17, last_logits_only: bool = True,
                   extra_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Export the transformers folder ``model_dir`` to ``out_dir`` (written atomically; config and
    tokenizer files are copied beside ``model.onnx``). ``backend``: ``"torch"`` (Lepton's exporter,
    fp32) or ``"genai"`` (ONNX Runtime GenAI's builder, any of :data:`GENAI_PRECISIONS`).

    ``"torch"`` is the default although the builder works offline here: the builder's
    GroupQueryAttention reads each row's cache as filled from the left, so a left-padded batch of
    prompts of different lengths gives wrong tokens (measured: 3 of 4 prompts differ, batch-1
    identical) unless the caller runs GenAI's own shared-buffer layout; Lepton's graph takes
    ``position_ids`` and serves mixed-length batches exactly. Returns what was done."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if backend not in ("genai", "torch"):
        raise ExportError(f"backend must be torch or genai, got {backend!r}")
    if backend == "torch" and precision != "fp32":
        raise ExportError("backend 'torch' exports fp32; quantize with lepton.stages.quantize.weight_only, "
                          f"not precision={precision!r}")
    info: dict[str, Any] = {"source": str(model_dir), "precision": precision, "backend": backend}

    def fill(tmp: Path) -> None:
        if backend == "genai":
            export_genai(model_dir, tmp, precision=precision, extra_options=extra_options)
            info["exporter"] = ("onnxruntime-genai model builder "
                                + importlib.import_module("onnxruntime_genai").__version__)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            export_torch(model, tmp / ONNX_FILE, opset=opset, last_logits_only=last_logits_only)
            info["exporter"] = EXPORTER
            info["last_logits_only"] = last_logits_only
        _copy_side_files(model_dir, tmp)

    write_folder(out_dir, fill)
    info["size_bytes"] = folder_size(out_dir)
    return info


def _copy_side_files(model_dir: Path, dest: Path) -> None:
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt"):
        if (model_dir / name).is_file() and not (dest / name).exists():
            shutil.copyfile(model_dir / name, dest / name)


def folder_size(folder: Path, suffixes: Sequence[str] = (".onnx", ".data", ".onnx_data")) -> int:
    """Bytes of the graph and its weights (external data included), not tokenizer files."""
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.suffix in suffixes or p.name.endswith(".onnx.data"))


def _torch_greedy(model: Any, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int, eos: set[int],
                  pad: int) -> tuple[list[list[int]], np.ndarray]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=sorted(eos) or None,
                             pad_token_id=pad, output_logits=True, return_dict_in_generate=True, num_beams=1)
    rows = []
    for seq in out.sequences[:, ids.shape[1]:].tolist():
        cut = next((i for i, t in enumerate(seq) if t in eos), len(seq))
        rows.append(seq[:cut])
    return rows, out.logits[0].float().numpy()


def check_parity(model: Any, tokenizer: Any, onnx_path: str | Path, prompts: Sequence[str], *,
                 max_new_tokens: int = 16, threads: int = 1) -> dict[str, Any]:
    """Greedy tokens of PyTorch ``generate`` and of the ONNX loop on ``prompts`` (one left-padded
    batch; one prompt at a time for a graph without ``position_ids``), and the largest difference
    of the first-step logits. Raises :class:`ParityError` if any prompt's tokens differ."""
    from lepton.runtimes.ort_decoder_loop import eos_ids

    model.eval()
    decoder = OrtDecoder(onnx_path, threads=threads)
    eos = eos_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    groups = [list(prompts)] if decoder.spec.has_position_ids else [[p] for p in prompts]
    reference: list[list[int]] = []
    candidate: list[list[int]] = []
    worst = 0.0
    for group in groups:
        ids, mask = encode_left_padded(tokenizer, group)
        ref_rows, ref_logits = _torch_greedy(model, ids, mask, max_new_tokens, eos, pad)
        rows, _ = generate_ids(decoder, ids, mask, SamplingSettings(max_new_tokens=max_new_tokens), eos=eos)
        first, _ = decoder.prefill(ids, mask)
        worst = max(worst, float(np.abs(first - ref_logits).max()))
        reference += ref_rows
        candidate += rows
    differing = [i for i, (a, b) in enumerate(zip(reference, candidate)) if a != b]
    report = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "identical": len(prompts) - len(differing),
              "max_abs_logit_diff": worst, "differing_prompts": differing}
    log.info("parity: %d/%d prompts identical, max |logit diff| %.3g", report["identical"], len(prompts), worst)
    if differing:
        i = differing[0]
        raise ParityError(f"{onnx_path}: greedy tokens differ from PyTorch on {len(differing)} of {len(prompts)} "
                          f"prompts (first: prompt {i}, torch {reference[i][:8]}... onnx {candidate[i][:8]}...; "
                          f"max |logit diff| {worst:.3g})")
    return report
