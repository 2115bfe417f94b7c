"""A :class:`GenerationEngine` over Lepton's ONNX decoder graph (KV cache as inputs and outputs),
so ``create_generate_app(..., engine=OrtEngine(...))`` serves an exported (and quantized) decoder
with the same scheduler, batching and routes as the PyTorch engine.

Each request is prefilled alone. Running requests share one batched ``DecodeState`` (caches
left-padded to the longest, masked, with each row's own positions); the batch is rebuilt only when
its set of requests changes, and between changes every step just extends it by one token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lepton.runtimes.ort_decoder_loop import DecodeState, OrtDecoder, merge_states


@dataclass(eq=False)
class _Sequence:
    state: DecodeState | None  # None while the shared batch holds this sequence's cache
    released: bool = False


class OrtEngine:
    def __init__(self, decoder: OrtDecoder, *, max_context: int) -> None:
        self.decoder = decoder
        self.max_context = max_context
        self._batch: tuple[list[_Sequence], DecodeState] | None = None

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[list[Any], Any]:
        states, logits = [], []
        for ids in prompts:
            arr = np.asarray([list(ids)], dtype=np.int64)
            last, state = self.decoder.prefill(arr, np.ones_like(arr))
            states.append(_Sequence(state))
            logits.append(last[0])
        return states, np.stack(logits)

    def decode_step(self, states: Sequence[Any], last_tokens: Sequence[int]) -> Any:
        seqs = list(states)
        if self._batch is None or self._batch[0] != seqs:
            self._split()
            merged = seqs[0].state if len(seqs) == 1 else merge_states([s.state for s in seqs])
            for s in seqs:
                s.state = None
            self._batch = (seqs, merged)
        return self.decoder.step(self._batch[1], list(last_tokens))

    def release(self, states: Sequence[Any]) -> None:
        for s in states:
            s.released, s.state = True, None

    def _split(self) -> None:
        """Give each live sequence of the current batch its own state again (the set changes)."""
        if self._batch is None:
            return
        seqs, merged = self._batch
        self._batch = None
        live = [i for i, s in enumerate(seqs) if not s.released]
        for i in live:
            seqs[i].state = merged if len(seqs) == 1 else merged.select([i])
