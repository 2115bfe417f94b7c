"""Text generation with ONNX Runtime on a decoder exported with its KV cache.

Two levels:

- the per-step API an iteration-level scheduler needs: :meth:`OrtDecoder.prefill` runs the
  prompts of new requests and returns their last logits and a :class:`DecodeState` (attention
  mask, positions and the cache as ONNX Runtime values); :meth:`OrtDecoder.step` feeds one token
  per row and returns the next logits; :meth:`DecodeState.select` drops finished rows and
  :func:`merge_states` joins states of different lengths (the shorter caches are left-padded and
  masked), so new requests join a running batch between steps;
- :func:`generate`: a batch of prompts (left padding), greedy or sampling with a seed,
  ``max_new_tokens``, stop strings and end-of-sequence tokens.

Works on both graph shapes Lepton produces (:mod:`lepton.stages.export.onnx_decoder`): its own export
(inputs ``input_ids, attention_mask, position_ids, past_key_values.<i>.key/value``) and ONNX Runtime
GenAI's model builder (no ``position_ids``: its GroupQueryAttention derives positions from the mask).

The cache stays in ONNX Runtime values between steps (``run_with_ort_values``): the present
tensors of one step are fed back as the past of the next without a copy through numpy. Written by
hand because onnxruntime has no generation loop for arbitrary graphs, and ONNX Runtime GenAI's
generator runs only graphs its own builder wrote, without a per-row join of new requests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton.core.errors import StageError
from lepton.runtimes.ort import require

log = logging.getLogger(__name__)

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class GenerationError(StageError):
    """A generation setting is out of range or a prompt cannot be run (the message names it)."""


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen; ``validate`` names the field that is out of range."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def validate(self) -> SamplingSettings:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise GenerationError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise GenerationError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise GenerationError(f"stop must be non-empty strings, got {list(self.stop)!r}")
        return self


def choose_next(logits: np.ndarray, settings: SamplingSettings, rng: np.random.Generator | None) -> int:
    """The next token id from one row of logits: argmax, or a draw after temperature, top-k, top-p."""
    if not settings.do_sample:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / settings.temperature
    if settings.top_k and settings.top_k < z.size:
        kth = np.partition(z, -settings.top_k)[-settings.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if settings.top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < settings.top_p  # smallest set reaching top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(p.size, p=p))


@dataclass
class DecodeState:
    """The running state of a batch: mask over cache + current token, and the cache per layer."""

    attention_mask: np.ndarray  # (batch, total) int64; total = cache length after the last run
    past: list[Any]  # OrtValues in the session's past input order
    _owner: OrtDecoder = field(repr=False)

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])

    def select(self, rows: Sequence[int]) -> DecodeState:
        """The state of only ``rows`` (finished requests leave the batch); trims common left padding."""
        rows = list(rows)
        mask = self.attention_mask[rows]
        start = _first_used_column(mask)
        past = [self._owner._value(p.numpy()[rows][:, :, start:]) for p in self.past]
        return DecodeState(np.ascontiguousarray(mask[:, start:]), past, self._owner)


def _first_used_column(mask: np.ndarray) -> int:
    used = mask.any(axis=0)
    return int(np.argmax(used)) if used.any() else mask.shape[1]


def merge_states(states: Sequence[DecodeState]) -> DecodeState:
    """One batch from several: each cache is left-padded (masked out) to the longest one.

    Needs a graph with ``position_ids`` (Lepton's own export): with them, a row's positions do not
    depend on where its cache starts."""
    owner = states[0]._owner
    if not owner.spec.has_position_ids:
        raise GenerationError("joining running batches needs a graph with position_ids (Lepton's own "
                              "ONNX export); this graph derives positions from the attention mask")
    total = max(s.length for s in states)
    masks, pasts = [], [[] for _ in states[0].past]
    for s in states:
        pad = total - s.length
        masks.append(np.pad(s.attention_mask, ((0, 0), (pad, 0))))
        for i, p in enumerate(s.past):
            pasts[i].append(np.pad(p.numpy(), ((0, 0), (0, 0), (pad, 0), (0, 0))))
    return DecodeState(np.concatenate(masks), [owner._value(np.concatenate(p)) for p in pasts], owner)


@dataclass(frozen=True)
class DecoderSpec:
    """What the loop reads off the graph: cache tensor names, shapes and type."""

    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    kv_heads: int
    head_dim: int
    dtype: Any
    has_position_ids: bool


def read_spec(session: Any, folder: Path) -> DecoderSpec:
    inputs = {i.name: i for i in session.get_inputs()}
    past = tuple(n for n in inputs if n.startswith("past_key_values."))
    outputs = [o.name for o in session.get_outputs()]
    present = tuple(n.replace("past_key_values.", "present.") for n in past)
    missing = [n for n in ("input_ids", "attention_mask", *present, "logits") if n not in inputs and n not in outputs]
    if not past or missing:
        raise GenerationError(f"{folder}: not a decoder graph with a KV cache "
                              f"(missing {missing or 'past_key_values.*'})")
    shape = inputs[past[0]].shape
    kv_heads, head_dim = shape[1], shape[3]
    if not isinstance(head_dim, int) or not isinstance(kv_heads, int):
        # ONNX Runtime GenAI's builder leaves the head size symbolic; its genai_config.json has it.
        cfg = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        kv_heads, head_dim = cfg["num_key_value_heads"], cfg["head_size"]
    dtype = _NP_TYPES.get(inputs[past[0]].type)
    if dtype is None:
        raise GenerationError(f"{folder}: cache type {inputs[past[0]].type} is not supported")
    return DecoderSpec(past, present, int(kv_heads), int(head_dim), dtype, "position_ids" in inputs)


class OrtDecoder:
    """An ONNX decoder graph with its KV cache, run on ONNX Runtime's CPU execution provider."""

    def __init__(self, path: str | Path, *, threads: int = 1, session_options: Any = None) -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / "model.onnx"
        if not self.path.is_file():
            raise GenerationError(f"{self.path}: no ONNX model here")
        options = session_options or ort.SessionOptions()
        if session_options is None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.spec = read_spec(self.session, self.path.parent)
        self._ort = ort
        self._outputs = ["logits", *self.spec.present_names]

    def _value(self, array: np.ndarray) -> Any:
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        feeds = {"input_ids": self._value(ids.astype(np.int64)), "attention_mask": self._value(mask)}
        if self.spec.has_position_ids:
            feeds["position_ids"] = self._value(positions.astype(np.int64))
        feeds.update(zip(self.spec.past_names, past))
        out = self.session.run_with_ort_values(self._outputs, feeds)
        return out[0].numpy()[:, -1, :].astype(np.float32), list(out[1:])

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, DecodeState]:
        """Run left-padded prompts ``(batch, seq)``; returns the last logits ``(batch, vocab)`` and the state."""
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if mask.shape != input_ids.shape or not mask[:, -1].all():
            raise GenerationError("prompts must be left-padded: attention_mask's last column must be all ones")
        if not self.spec.has_position_ids and not mask.all():
            # GroupQueryAttention (ONNX Runtime GenAI's graphs) reads a row's cache as filled from
            # the left; a left-padded row would get wrong positions and attend to padding.
            raise GenerationError(f"{self.path}: this graph has no position_ids, so prompts of different "
                                  "lengths cannot share a batch; run them one at a time or export with backend 'torch'")
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        empty = np.zeros((mask.shape[0], self.spec.kv_heads, 0, self.spec.head_dim), self.spec.dtype)
        logits, past = self._run(input_ids, mask, positions, [self._value(empty)] * len(self.spec.past_names))
        return logits, DecodeState(mask, past, self)

    def step(self, state: DecodeState, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feed one token per row; updates ``state`` in place and returns the next logits."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        positions = state.attention_mask.sum(axis=1, keepdims=True)  # valid tokens so far
        mask = np.concatenate([state.attention_mask, np.ones_like(tokens)], axis=1)
        logits, state.past = self._run(tokens, mask, positions, state.past)
        state.attention_mask = mask
        return logits


@dataclass
class Generated:
    text: str
    token_ids: list[int]  # generated tokens, without the end-of-sequence token
    finish_reason: str  # "eos", "stop" or "length"
    prompt_tokens: int


def eos_ids(tokenizer: Any, eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, (int, np.integer)) else {int(i) for i in eos_token_id}


def encode_left_padded(tokenizer: Any, prompts: Sequence[str], *,
                       add_special_tokens: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask of ``prompts``, padded on the left (the pad id is never attended to)."""
    rows = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    return left_pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id rows as one left-padded batch: (ids, attention mask)."""
    if any(not r for r in rows):
        raise GenerationError(f"prompt {next(i for i, r in enumerate(rows) if not r)} has no tokens")
    width = max(map(len, rows))
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def generate_ids(decoder: OrtDecoder, input_ids: np.ndarray, attention_mask: np.ndarray,
                 settings: SamplingSettings, *, eos: set[int] = frozenset(),
                 is_stopped: Any = None) -> tuple[list[list[int]], list[str]]:
    """Token-level loop: the new ids per row and why each row ended. ``is_stopped(row, ids)``
    (optional) ends a row early (stop strings)."""
    settings.validate()
    rng = np.random.default_rng(settings.seed)
    logits, state = decoder.prefill(input_ids, attention_mask)
    rows = list(range(input_ids.shape[0]))  # original row of each state row
    out: list[list[int]] = [[] for _ in rows]
    reasons = ["length"] * len(rows)
    for _ in range(settings.max_new_tokens):
        nxt, keep = [], []
        for k, row in enumerate(rows):
            tok = choose_next(logits[k], settings, rng)
            if tok in eos:
                reasons[row] = "eos"
                continue
            out[row].append(tok)
            if is_stopped is not None and is_stopped(row, out[row]):
                reasons[row] = "stop"
                continue
            nxt.append(tok)
            keep.append(k)
        if not keep or all(len(out[rows[k]]) >= settings.max_new_tokens for k in keep):
            break
        if len(keep) < len(rows):
            state = state.select(keep)
            rows = [rows[k] for k in keep]
        logits = decoder.step(state, nxt)
    return out, reasons


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def generate(decoder: OrtDecoder, tokenizer: Any, prompts: Sequence[str], settings: SamplingSettings | None = None,
             *, eos_token_id: int | Sequence[int] | None = None, add_special_tokens: bool = True) -> list[Generated]:
    """Generate for a batch of prompts (left-padded together); greedy unless ``settings.do_sample``."""
    settings = (settings or SamplingSettings()).validate()
    ids, mask = encode_left_padded(tokenizer, prompts, add_special_tokens=add_special_tokens)

    def is_stopped(_: int, new: list[int]) -> bool:
        # Decoding the whole continuation each step is quadratic, but cheap next to a decode step
        # at the lengths a stop string is used for; it is exact where token pieces merge.
        return _cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), settings.stop)[1]

    new, reasons = generate_ids(decoder, ids, mask, settings, eos=eos_ids(tokenizer, eos_token_id),
                                is_stopped=is_stopped if settings.stop else None)
    results = []
    for i, toks in enumerate(new):
        text, _ = _cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), settings.stop)
        results.append(Generated(text, toks, reasons[i], int(mask[i].sum())))
    return results
