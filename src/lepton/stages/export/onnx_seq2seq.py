"""ONNX export of an encoder-decoder (T5, Marian, BART and their relatives) as two graphs, and
the parity check that guards it (the graphs' layout is described in ``lepton.runtimes.ort_seq2seq``).

Both graphs come from ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``) of wrappers
around the transformers model, so the attention, masks and positions are transformers' own:

- the encoder wrapper runs the encoder and, for every decoder layer, that layer's cross-attention
  key and value projections (where they sit is the one family-specific fact, ``CROSS_ATTENTION``);
- the decoder wrapper builds an ``EncoderDecoderCache`` from flat tensors: the self-attention part
  from ``past.*`` (empty at the first step) and the cross part from ``cross.*``, which marks the
  cross-attention as computed, so the graph never recomputes it (nor holds those weights).
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lepton.core.errors import StageError
from lepton.runtimes.ort_seq2seq import DECODER, ENCODER, Seq2SeqSettings, cache_names, right_pad

log = logging.getLogger(__name__)

EXPORTER = "torch.onnx TorchScript exporter (dynamo=False): encoder with cross-attention K/V; decoder with its cache"
# (module path inside a decoder layer, key projection, value projection)
CROSS_ATTENTION = (("encoder_attn", "k_proj", "v_proj"),  # BART, Marian, mBART, Pegasus, M2M100 ...
                   ("layer.1.EncDecAttention", "k", "v"))  # T5, mT5, LongT5 ...


class ParityError(StageError):
    """The ONNX graphs do not reproduce the PyTorch model's outputs."""


def _find(module: torch.nn.Module, path: str) -> Any:
    try:
        return functools.reduce(getattr, path.split("."), module)
    except AttributeError:
        return None


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    from lepton.models.decoder_structure import SEQ2SEQ_STACKS, seq2seq_layers

    return seq2seq_layers(model, next(s for s in SEQ2SEQ_STACKS if s.name == "decoder"))


def cross_projections(model: torch.nn.Module) -> list[tuple[Any, Any, int]]:
    """(key projection, value projection, head size) of every decoder layer's cross-attention."""
    found = []
    for i, layer in enumerate(decoder_layers(model)):
        for path, k, v in CROSS_ATTENTION:
            attn = _find(layer, path)
            if attn is not None and hasattr(attn, k) and hasattr(attn, v):
                head = getattr(attn, "head_dim", None) or getattr(attn, "key_value_proj_dim", None)
                found.append((getattr(attn, k), getattr(attn, v), int(head)))
                break
        else:
            raise StageError(f"export: decoder layer {i} of {type(model).__name__} has no cross-attention Lepton "
                             f"knows (looked for {', '.join(p for p, _, _ in CROSS_ATTENTION)})")
    return found


class EncoderWithCrossKV(torch.nn.Module):
    """The encoder, then every decoder layer's cross-attention keys and values (what encoder.onnx holds)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = model.get_encoder()
        self.cross = cross_projections(model)
        self.projections = torch.nn.ModuleList([m for k, v, _ in self.cross for m in (k, v)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        batch, length = hidden.shape[:2]
        out: list[torch.Tensor] = []
        for k, v, head in self.cross:
            out += [k(hidden).view(batch, length, -1, head).transpose(1, 2),
                    v(hidden).view(batch, length, -1, head).transpose(1, 2)]
        return tuple(out)


class DecoderWithCache(torch.nn.Module):
    """One decoder call with the self-attention cache and the cross keys/values as flat tensors
    (what decoder.onnx holds; the serving engine runs it eagerly for PyTorch models)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = len(decoder_layers(model))
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(self, decoder_input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache, EncoderDecoderCache

        class _TracedLength(DynamicCache):
            # The past length as a tensor read from the cache's shape: as a Python integer (what
            # DynamicCache returns) the tracer would freeze the example's past length into the
            # positions and masks the model derives from it.
            def get_seq_length(self, layer_idx: int = 0) -> Any:
                if layer_idx >= len(self.layers) or not getattr(self.layers[layer_idx], "is_initialized", True):
                    return 0
                return torch._shape_as_tensor(self.layers[layer_idx].keys)[-2]

        n = 2 * self.layers
        own, cross = _TracedLength(config=self.model.config), DynamicCache(config=self.model.config)
        for i in range(self.layers):
            own.update(caches[2 * i], caches[2 * i + 1], i)
            cross.update(caches[n + 2 * i], caches[n + 2 * i + 1], i)
        cache = EncoderDecoderCache(own, cross)
        # Only the shape of the encoder's output is read once the cross cache is filled.
        stand_in = encoder_attention_mask.unsqueeze(-1).to(caches[n].dtype)
        # The decoder's causal mask, (batch, 1, new, past + new), from tensor operations only: left
        # to the model, it comes from Python integers that the tracer freezes at the example's lengths.
        past_row = caches[0][:, 0, :, 0]
        seen = torch.cat([past_row, decoder_input_ids.to(past_row.dtype)], dim=1)
        key_pos = torch.ones_like(seen).cumsum(-1) - 1
        query_pos = (torch.ones_like(decoder_input_ids, dtype=seen.dtype).cumsum(-1) - 1
                     + torch.ones_like(past_row).sum(-1, keepdim=True))
        allowed = key_pos[:, None, None, :] <= query_pos[:, None, :, None]
        causal = torch.zeros_like(allowed, dtype=seen.dtype).masked_fill(~allowed, torch.finfo(seen.dtype).min)
        out = self.model(decoder_input_ids=decoder_input_ids, attention_mask=encoder_attention_mask,
                         decoder_attention_mask=causal,
                         encoder_outputs=(stand_in,), use_cache=True, **{self.cache_arg: cache})
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.self_attention_cache.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def export_seq2seq(model: torch.nn.Module, folder: Path, *, opset: int = 17) -> None:
    """Write ``encoder.onnx`` and ``decoder.onnx`` of ``model`` (float32) into ``folder``."""
    layers = len(decoder_layers(model))
    names = cache_names(layers)
    proj = cross_projections(model)
    heads = [int(k.out_features) // h for k, _, h in proj]
    batch, src, tgt, past = 2, 5, 3, 4  # distinct sizes, so the tracer cannot confuse the axes
    vocab = int(model.config.vocab_size)
    ids = torch.randint(3, vocab, (batch, src))
    mask = torch.ones(batch, src, dtype=torch.long)
    was_training = model.training
    # The wrappers in eval mode: torch.onnx.export puts the exported module back into the mode it
    # found it in, and a new module is in training mode (it would switch dropout on in ``model``).
    encoder, decoder = EncoderWithCrossKV(model).eval(), DecoderWithCache(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        try:
            torch.onnx.export(encoder, (ids, mask), str(folder / ENCODER), opset_version=opset, dynamo=False,
                              input_names=["input_ids", "attention_mask"], output_names=names["cross"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "source"},
                                            "attention_mask": {0: "batch", 1: "source"},
                                            **{n: {0: "batch", 2: "source"} for n in names["cross"]}},
                              do_constant_folding=True)
            own = [torch.zeros(batch, heads[i // 2], past, proj[i // 2][2]) for i in range(2 * layers)]
            cross = [torch.zeros(batch, heads[i // 2], src, proj[i // 2][2]) for i in range(2 * layers)]
            dec_ids = torch.randint(3, vocab, (batch, tgt))
            torch.onnx.export(decoder, (dec_ids, mask, *own, *cross), str(folder / DECODER),
                              opset_version=opset, dynamo=False,
                              input_names=["decoder_input_ids", "encoder_attention_mask", *names["past"],
                                           *names["cross"]],
                              output_names=["logits", *names["present"]],
                              dynamic_axes={"decoder_input_ids": {0: "batch", 1: "target"},
                                            "encoder_attention_mask": {0: "batch", 1: "source"},
                                            "logits": {0: "batch", 1: "target"},
                                            **{n: {0: "batch", 2: "past"} for n in names["past"]},
                                            **{n: {0: "batch", 2: "source"} for n in names["cross"]},
                                            **{n: {0: "batch", 2: "total"} for n in names["present"]}},
                              do_constant_folding=True)
        except StageError:
            raise
        except Exception as err:  # the exporter raises many types; the cause goes in the message
            raise StageError(f"export: ONNX export of {type(model).__name__} failed: {err}") from err
        finally:
            model.train(was_training)


def check_parity(model: Any, tokenizer: Any, graphs: Any, prompts: Sequence[str], *, max_new_tokens: int = 16,
                 num_beams: int = 4) -> dict[str, Any]:
    """Greedy and beam outputs of PyTorch ``generate`` against the graphs' loop on ``prompts`` (one
    right-padded batch), and the largest first-step logit difference. Raises :class:`ParityError`
    if any prompt's tokens differ."""
    pad = int(model.config.pad_token_id or 0)
    ids, mask = right_pad([tokenizer(p)["input_ids"] for p in prompts], pad)
    report: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": max_new_tokens}
    penalty = float(model.generation_config.length_penalty or 1.0)
    runs = (("greedy", 1, False), ("beam", num_beams, False), ("beam_early_stopping", num_beams, True))
    for name, beams, early in runs:
        with torch.no_grad():
            ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 do_sample=False, num_beams=beams, max_new_tokens=max_new_tokens,
                                 early_stopping=early, length_penalty=penalty)
        eos = set(graphs.graphs().eos)
        ref_rows = [[t for t in row[1:] if t not in eos and t != pad] for row in ref.tolist()]
        got = graphs.generate_ids(ids, mask, Seq2SeqSettings(max_new_tokens=max_new_tokens, num_beams=beams,
                                                             length_penalty=penalty, early_stopping=early))
        got = [[t for t in row if t != pad] for row in got]
        differing = [i for i, (a, b) in enumerate(zip(ref_rows, got)) if a != b]
        report[name] = {"identical": len(prompts) - len(differing), "differing_prompts": differing}
        if differing:
            i = differing[0]
            raise ParityError(f"export: {name} outputs of the ONNX graphs differ from PyTorch's on {len(differing)} "
                              f"of {len(prompts)} prompts (first: prompt {i}, torch {ref_rows[i][:8]}..., onnx "
                              f"{got[i][:8]}...)")
    with torch.no_grad():
        start = torch.full((ids.shape[0], 1), graphs.graphs().start)
        ref_logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                           decoder_input_ids=start).logits[:, -1].numpy()
    first = graphs.as_runtime().logits({"input_ids": ids, "attention_mask": mask})
    report["max_abs_logit_diff"] = float(np.abs(first - ref_logits).max())
    return report
