"""The model side of generative serving: an engine protocol, and an engine over a PyTorch
``AutoModelForCausalLM`` with transformers' ``DynamicCache``.

The scheduler (scheduler.py) talks to the model only through :class:`GenerationEngine`, so an
ONNX Runtime engine (past keys/values as inputs and outputs) plugs in by implementing the same
four members. All engine calls come from one worker thread: an engine need not be thread-safe.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from lepton.core.errors import LeptonError

log = logging.getLogger(__name__)


class EngineError(LeptonError):
    """The model cannot be served by this engine (e.g. a cache layout it does not handle)."""


@runtime_checkable
class GenerationEngine(Protocol):
    """What the scheduler needs from a model runtime.

    - ``max_context``: the most tokens (prompt + generated) one sequence may hold.
    - ``prefill(prompts)``: run each prompt (a list of token ids); return one opaque state per
      prompt (holding its KV cache) and the logits for the first new token, shape
      ``[len(prompts), vocab]`` (a torch tensor or a numpy array, float).
    - ``decode_step(states, last_tokens)``: one token for each sequence, all in one batch;
      ``last_tokens[i]`` is the token just chosen for ``states[i]``. Appends it to that state's
      cache and returns the next logits ``[len(states), vocab]``. The set of states may change
      from one call to the next (requests join after their prefill and leave when done).
    - ``release(states)``: these sequences are finished; free their caches.
    """

    max_context: int

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[list[Any], Any]: ...

    def decode_step(self, states: Sequence[Any], last_tokens: Sequence[int]) -> Any: ...

    def release(self, states: Sequence[Any]) -> None: ...


@dataclass(eq=False)
class TorchSequence:
    """One request's place in the torch engine. Its cache lives either in ``kv`` (its own
    per-layer keys/values, ``[1, kv_heads, length, head_dim]``) or in row ``row`` of the
    engine's current batch cache, left-padded to the batch's width."""

    length: int  # tokens in its cache
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)
    batch: _Batch | None = field(default=None, repr=False)
    row: int = -1
    released: bool = False


@dataclass(eq=False)
class _Batch:
    states: tuple[TorchSequence, ...]
    cache: Any  # a DynamicCache, [B, kv_heads, width, head_dim] per layer
    mask: torch.Tensor  # [B, width]: 1 for a real position, 0 for left padding

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


class TorchEngine:
    """A transformers causal LM with a per-request KV cache, batched per decode step.

    How sequences of different lengths share a step: each decode step runs one batch whose
    cache holds every sequence left-padded to the longest one, with a 2-D attention mask that
    hides the padding and explicit position ids (each row's own length), which is how
    ``generate`` runs a left-padded batch too. Rebuilding that padded cache is a copy of every
    sequence's keys/values, so it is done only when the set of sequences changes (a request
    joins or leaves), not at every step: between changes the batch cache just grows by one
    column per step. A rebuild also drops padding columns that no remaining sequence needs.
    Prefill runs one prompt at a time (no padding in the prompt pass, so the first token's
    logits are exactly those of the prompt alone; on a CPU a long prompt is compute-bound and
    gains little from batching with others).
    Hand-written: transformers offers no continuous-batching cache for CPU serving.
    """

    def __init__(self, model: Any, *, max_context: int | None = None) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.model = model.eval()
        self.config = model.config
        self._cache_cls = DynamicCache
        probe = DynamicCache(config=self.config)
        odd = {type(layer).__name__ for layer in probe.layers if type(layer) is not DynamicLayer}
        if odd:  # sliding-window or linear-attention layers cannot be left-padded this way
            raise EngineError(f"model {type(model).__name__}: cache layers {sorted(odd)} are not supported "
                              "by the torch generation engine (only full-attention DynamicLayer)")
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" in params
        limit = getattr(self.config.get_text_config(decoder=True), "max_position_embeddings", None) or 2048
        self.max_context = int(min(max_context or limit, limit))
        self._batch: _Batch | None = None
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ prefill

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[list[TorchSequence], torch.Tensor]:
        states, logits = [], []
        for prompt in prompts:
            if not prompt:
                raise EngineError("an empty prompt has nothing to continue")
            cache = self._cache_cls(config=self.config)
            ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
            kwargs: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
            if self._keep_kw:
                kwargs["logits_to_keep"] = 1
            out = self.model(input_ids=ids, **kwargs)
            kv = [(layer.keys, layer.values) for layer in cache.layers]
            states.append(TorchSequence(length=len(prompt), kv=kv))
            logits.append(out.logits[0, -1].float())
        return states, torch.stack(logits)

    # ------------------------------------------------------------------ decode

    def decode_step(self, states: Sequence[TorchSequence], last_tokens: Sequence[int]) -> torch.Tensor:
        if len(states) != len(last_tokens) or not states:
            raise ValueError("decode_step needs one last token per state, and at least one state")
        batch = self._batch
        if batch is None or batch.states != tuple(states):  # identity: TorchSequence has eq=False
            batch = self._rebuild(states)
        batch.mask = F.pad(batch.mask, (0, 1), value=1)
        positions = torch.tensor([[s.length] for s in states], dtype=torch.long, device=self.device)
        ids = torch.tensor([[t] for t in last_tokens], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, attention_mask=batch.mask, position_ids=positions,
                         **{self._cache_kw: batch.cache, "use_cache": True})
        for s in states:
            s.length += 1
        return out.logits[:, -1].float()

    def release(self, states: Sequence[TorchSequence]) -> None:
        for s in states:
            s.released, s.kv = True, None
        if self._batch is not None and all(s.released for s in self._batch.states):
            self._batch = None  # nothing left in it: free the memory now

    def _own_kv(self, s: TorchSequence) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The sequence's keys/values without padding (views into the batch cache if it is there)."""
        if s.kv is not None:
            return s.kv
        assert s.batch is not None
        start = s.batch.width - s.length  # its real positions are the last ``length`` columns
        return [(layer.keys[s.row:s.row + 1, :, start:], layer.values[s.row:s.row + 1, :, start:])
                for layer in s.batch.cache.layers]

    def _rebuild(self, states: Sequence[TorchSequence]) -> _Batch:
        old = self._batch
        keep = set(map(id, states))
        if old is not None:  # sequences left out of this step but not finished keep their cache
            for s in old.states:
                if not s.released and id(s) not in keep:
                    s.kv = [(k.clone(), v.clone()) for k, v in self._own_kv(s)]
                    s.batch = None
        width = max(s.length for s in states)
        per_seq = [self._own_kv(s) for s in states]
        layers = []
        for layer in range(len(per_seq[0])):
            keys = torch.cat([F.pad(kv[layer][0], (0, 0, width - s.length, 0)) for s, kv in zip(states, per_seq)])
            values = torch.cat([F.pad(kv[layer][1], (0, 0, width - s.length, 0)) for s, kv in zip(states, per_seq)])
            layers.append((keys, values))
        mask = torch.zeros((len(states), width), dtype=torch.long, device=self.device)
        for row, s in enumerate(states):
            mask[row, width - s.length:] = 1
        batch = _Batch(states=tuple(states), cache=self._cache_cls(ddp_cache_data=layers), mask=mask)
        for row, s in enumerate(states):
            s.kv, s.batch, s.row = None, batch, row
        self._batch = batch
        return batch
