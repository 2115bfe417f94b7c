"""Choosing each next token, and turning tokens into text as they come.

- :class:`SamplingParams`: one request's settings (validated by the HTTP layer).
- :class:`Sampler`: greedy at temperature 0, else transformers' temperature / top-k / top-p
  warpers and a draw from the request's own seeded generator, so a seeded request gets the same
  tokens whatever else shares its batch (up to float rounding of batched matmuls).
- :class:`TextStream`: incremental detokenization and stop strings. Hand-written: tokenizers
  decode whole sequences; streaming needs text deltas that never split a UTF-8 character or a
  word piece, and must hold back text that may be the start of a stop string.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.greedy = params.temperature == 0
        warpers: list[Any] = []
        if not self.greedy:
            if params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
        self.warpers = LogitsProcessorList(warpers)
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from one row of logits ``[vocab]``."""
        if self.greedy:
            return int(torch.argmax(logits))
        scores = self.warpers(None, logits.float().unsqueeze(0))  # the warpers here ignore input_ids
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class TextStream:
    """Tokens in, text deltas out. ``push`` returns the text that is final so far; ``finish``
    returns the rest. ``stopped`` is set once a stop string appeared (the text ends before it)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to context already turned into text
        self._read = 0
        self.text = ""  # all decoded text (up to a stop string once found)
        self._sent = 0  # characters of ``text`` handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        # Decode a short window with some context before it: a word piece's leading space, or a
        # multi-byte character split over tokens, decodes right only with its neighbours.
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._add(after[len(before):])
            self._prefix, self._read = self._read, len(self.ids)
        return self._ready(final=False)

    def finish(self) -> str:
        """The text not yet handed out (an unfinished character decodes as U+FFFD)."""
        if not self.stopped and self._read < len(self.ids):
            before = self._decode(self.ids[self._prefix:self._read])
            self._add(self._decode(self.ids[self._prefix:])[len(before):])
            self._read = len(self.ids)
        return self._ready(final=True)

    def _add(self, new: str) -> None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += new
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _ready(self, final: bool) -> str:
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held()
        out = self.text[self._sent:end]
        self._sent = max(self._sent, end)
        return out

    def _held(self) -> int:
        """Characters at the end of the text that may begin a stop string: held back, since
        the next token may complete the stop string, and a stop string is never sent."""
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:n]):
                    held = n
                    break
        return held
