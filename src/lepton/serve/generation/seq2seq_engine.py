"""A :class:`GenerationEngine` over an encoder-decoder (PyTorch, or the two ONNX graphs of an
exported one), so translation models get the same routes, streaming and scheduler as decoders.

Prefill encodes a request's source once (the encoder and every decoder layer's cross-attention
keys and values) and runs the first decoder step from the start token. Decode steps run request by
request: rows that joined at different times have decoder caches of different lengths, and these
graphs take one position for the whole batch, so requests are interleaved step by step rather
than stacked into one matrix product (the scheduler still serves them all concurrently).
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
        out = []
        for s, token in zip(states, last_tokens):
            logits, s.past = self.step(np.full((1, 1), int(token), np.int64), s.mask, s.past, s.cross)
            out.append(np.asarray(logits)[0])
        return np.stack(out)

    def release(self, states: Sequence[Any]) -> None:
        for s in states:
            s.cross, s.past = [], []


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

    from lepton.stages.export.onnx_seq2seq import _Decoder, _Encoder

    encoder, decoder = _Encoder(model).eval(), _Decoder(model).eval()

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
