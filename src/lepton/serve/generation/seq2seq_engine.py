"""A :class:`GenerationEngine` over an encoder-decoder (PyTorch, or the two ONNX graphs of an
exported one), so translation models get the same routes, streaming and scheduler as decoders.

Prefill encodes a request's source once (the encoder and every decoder layer's cross-attention
keys and values) and runs the first decoder step from the start token. A decode step batches the
requests whose decoder caches have the same length (those prefilled together, which then move in
lockstep): their sources are padded to the longest and masked, their cross keys/values padded
alike. Requests that joined at other times form other groups, one decoder call each: the graphs
take one decoder position for a whole batch, so caches of different lengths cannot share a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class _Sequence:
    mask: np.ndarray
    cross: list[Any]
    past: list[Any] = field(default_factory=list)


class Seq2SeqEngine:
    def __init__(self, encode: Any, step: Any, empty_past: Any, start: int, *, max_context: int) -> None:
        self.encode, self.step, self.empty_past, self.start = encode, step, empty_past, start
        self.max_context = max_context

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[list[Any], Any]:
        states, logits = [], []
        for ids in prompts:
            arr = np.asarray([list(ids)], dtype=np.int64)
            mask = np.ones_like(arr)
            cross = self.encode(arr, mask)
            first, past = self.step(np.full((1, 1), self.start, np.int64), mask, self.empty_past(cross), cross)
            states.append(_Sequence(mask, cross, past))
            logits.append(np.asarray(first)[0])
        return states, np.stack(logits)

    def decode_step(self, states: Sequence[Any], last_tokens: Sequence[int]) -> Any:
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(states):
            groups.setdefault(int(s.past[0].shape[2]), []).append(i)
        out: list[Any] = [None] * len(states)
        for rows in groups.values():
            group = [states[i] for i in rows]
            width = max(s.mask.shape[1] for s in group)
            mask = np.zeros((len(group), width), np.int64)
            for j, s in enumerate(group):
                mask[j, :s.mask.shape[1]] = 1
            cross = [_cat([_pad_source(s.cross[n], width) for s in group]) for n in range(len(group[0].cross))]
            past = [_cat([s.past[n] for s in group]) for n in range(len(group[0].past))]
            tokens = np.asarray([[int(last_tokens[i])] for i in rows], np.int64)
            logits, present = self.step(tokens, mask, past, cross)
            for j, (i, s) in enumerate(zip(rows, group)):
                out[i] = np.asarray(logits)[j]
                s.past = [p[j:j + 1] for p in present]
        return np.stack(out)

    def release(self, states: Sequence[Any]) -> None:
        for s in states:
            s.cross, s.past = [], []


def _cat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=0)
    import torch

    return torch.cat(parts, dim=0)


def _pad_source(kv: Any, width: int) -> Any:
    """A cross key/value (1, heads, source, head size) zero-padded to ``width`` source positions
    (masked out by the padded encoder mask)."""
    extra = width - kv.shape[2]
    if extra == 0:
        return kv
    if isinstance(kv, np.ndarray):
        return np.pad(kv, ((0, 0), (0, 0), (0, extra), (0, 0)))
    import torch

    return torch.nn.functional.pad(kv, (0, 0, 0, extra))


def seq2seq_engine(model: Any, threads: int | None = None) -> Seq2SeqEngine:
    """The engine for an exported encoder-decoder (its ONNX Runtime graphs) or a PyTorch one (the
    export's own wrappers, run eagerly: the same computation the graphs hold)."""
    config = model.config
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
    limit = int(getattr(config, "max_position_embeddings", None) or 1024)
    if hasattr(model, "graphs"):  # lepton.runtimes.ort_seq2seq.OrtSeq2SeqLM
        g = model.graphs(threads)
        return Seq2SeqEngine(g.encode, g.step, lambda cross: g.empty_past(1), int(start), max_context=limit)
    import torch

    from lepton.stages.export.onnx_seq2seq import DecoderWithCache, EncoderWithCrossKV

    encoder, decoder = EncoderWithCrossKV(model).eval(), DecoderWithCache(model).eval()

    def encode(ids: np.ndarray, mask: np.ndarray) -> list[Any]:
        with torch.inference_mode():
            return list(encoder(torch.from_numpy(ids), torch.from_numpy(mask)))

    def step(tokens: np.ndarray, mask: np.ndarray, past: list[Any], cross: list[Any]) -> tuple[Any, list[Any]]:
        with torch.inference_mode():
            out = decoder(torch.from_numpy(tokens), torch.from_numpy(mask), *past, *cross)
        return out[0][:, -1].float().numpy(), list(out[1:])

    def empty(cross: list[Any]) -> list[Any]:
        return [c.new_zeros((1, c.shape[1], 0, c.shape[3])) for c in cross]

    return Seq2SeqEngine(encode, step, empty, int(start), max_context=limit)
