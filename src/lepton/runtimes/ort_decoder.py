"""A decoder-only model exported to ONNX with its KV cache, as the model of a bundle on ONNX Runtime.

``OrtCausalLM`` is what the ``export`` stage leaves for a generative task (and what ``quantize``
replaces with an int8 or int4 graph): a folder with ``model.onnx`` (plus external data when large),
``config.json`` and ``generation_config.json``. It offers what the generative code asks of a model
beside PyTorch's: generation through Lepton's ONNX Runtime loop (``ort_generate``, the cache kept
between steps), the NLL of reference tokens (target perplexity, bits per byte) by feeding them
through the same loop, the speed scenarios of ``generative.efficiency``, and ``save_pretrained``
for the artifact (format ``onnx-decoder``).

Greedy and seeded sampling run here; beam search does not (the loop keeps one hypothesis per
request) and is refused with the setting named.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lepton.core.errors import LeptonError
from lepton.runtimes.formats import WeightsFormat, register_format
from lepton.runtimes.ort_decoder_loop import left_pad
from lepton.tasks.generate import cut_at_stop

WEIGHTS_FORMAT = "onnx-decoder"
GRAPH_FILES = ("model.onnx", "model.onnx.data", "model.onnx_data")
SIDE_FILES = ("config.json", "generation_config.json")
IGNORE = -100


class OrtCausalLM:
    """The exported decoder in ``folder``; sessions are opened on first use, one per thread count."""

    weights_format = WEIGHTS_FORMAT
    runtime = "onnxruntime"

    def __init__(self, folder: str | Path, *, info: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        if not (self.folder / "model.onnx").is_file():
            raise LeptonError(f"{self.folder / 'model.onnx'}: missing (not an exported decoder folder)")
        self.config, self.generation_config = graph_configs(self.folder)
        self.info = dict(info or {})
        self._decoders: dict[int, Any] = {}

    # ------------------------------------------------------------------ files

    def decoder(self, threads: int | None = None) -> Any:
        from lepton.runtimes.ort_decoder_loop import OrtDecoder

        n = int(threads or _default_threads())
        if n not in self._decoders:
            self._decoders[n] = OrtDecoder(self.folder, threads=n)
        return self._decoders[n]

    def save_pretrained(self, dest: str | Path) -> None:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name in GRAPH_FILES + ("config.json",):
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, dest / name)
        self.generation_config.save_pretrained(dest)

    def size_bytes(self) -> int:
        return sum((self.folder / n).stat().st_size for n in GRAPH_FILES if (self.folder / n).is_file())

    def num_parameters(self) -> int:
        return int(self.info.get("params") or 0)

    def as_runtime(self) -> DecoderRuntime:
        """What ``lepton.runtimes.for_bundle`` hands out for this model."""
        return DecoderRuntime(self)

    def eval(self) -> OrtCausalLM:  # what callers of a torch model do; nothing to switch here
        return self

    # ------------------------------------------------------------------ generation

    def generate_texts(self, tokenizer: Any, prompts: Sequence[str], settings: Any, *,
                       max_prompt_tokens: int | None = None) -> list[str]:
        """``generative.generate.generate`` on this graph: prompts as that function encodes them
        for a decoder-only model (no special tokens added, truncated at ``max_prompt_tokens``),
        batches of ``settings.batch_size`` sorted by length, text cut at a stop string and stripped."""
        from lepton.runtimes.ort_decoder_loop import eos_ids, generate_ids

        sampling = sampling_of(settings)
        eos = eos_ids(tokenizer, self.generation_config.eos_token_id)
        rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if max_prompt_tokens is not None:
            rows = [r[:max_prompt_tokens] for r in rows]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = [""] * len(rows)
        decoder = self.decoder()
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            ids, mask = left_pad([rows[i] for i in chunk], _pad_id(tokenizer))
            if sampling.do_sample:  # one seed per batch position in sorted order, as on PyTorch
                sampling = _with_seed(sampling, settings.seed + start)
            new, _ = generate_ids(decoder, ids, mask, sampling, eos=eos,
                                  is_stopped=_stop_check(tokenizer, sampling.stop))
            for i, toks in zip(chunk, new):
                out[i] = cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), sampling.stop).strip()
        return out

    # ------------------------------------------------------------------ scoring

    def token_nll_sums(self, enc: Any, pad_id: int, *, batch_size: int = 8) -> tuple[list[float], list[int]]:
        """(summed NLL, scored tokens) per example of ``enc`` (input ids with labels aligned to them,
        -100 before the first scored token): the unscored head is the prompt, prefilled at once;
        each scored token is then fed one step at a time, reading the logits that predict it."""
        decoder = self.decoder()
        starts = []
        for ids, labels in zip(enc.input_ids, enc.labels):
            first = next((j for j, x in enumerate(labels) if x != IGNORE), len(ids))
            starts.append(max(first, 1))  # position 0 has nothing before it to predict it from
        order = sorted(range(len(enc.input_ids)), key=lambda i: len(enc.input_ids[i]) - starts[i])
        nll, count = [0.0] * len(order), [0] * len(order)
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            heads = [list(enc.input_ids[i][:starts[i]]) for i in chunk]
            tails = [list(enc.input_ids[i][starts[i]:]) for i in chunk]
            scored = [[x != IGNORE for x in enc.labels[i][starts[i]:]] for i in chunk]
            ids, mask = left_pad(heads, pad_id)
            logits, state = decoder.prefill(ids, mask)
            steps = max(map(len, tails), default=0)
            for t in range(steps):
                logp = _log_softmax(logits)
                for k, i in enumerate(chunk):
                    if t < len(tails[k]) and scored[k][t]:
                        nll[i] -= float(logp[k, tails[k][t]])
                        count[i] += 1
                if t + 1 < steps:
                    logits = decoder.step(state, [row[t] if t < len(row) else pad_id for row in tails])
        return nll, count

    # ------------------------------------------------------------------ speed

    def generation_timers(self, prompt_tokens: int, threads: int | None) -> tuple[Any, Any, int, float, str]:
        """What ``lepton.evaluation.generation_efficiency.measure`` times on this graph:
        (``run(batch, new_tokens)``, ``prefill(batch)``, threads, size in MB, a note). Same prompts
        as for PyTorch: one ordinary token repeated, greedy, exactly ``new_tokens`` tokens."""
        threads = int(threads or _default_threads())
        decoder = self.decoder(threads)
        token = min(1000, int(self.config.vocab_size) - 1)

        def prompt(batch: int) -> np.ndarray:
            return np.full((batch, prompt_tokens), token, np.int64)

        def run(batch: int, new_tokens: int) -> float:
            ids = prompt(batch)
            start = time.perf_counter()
            logits, state = decoder.prefill(ids, np.ones_like(ids))
            for _ in range(new_tokens - 1):
                logits = decoder.step(state, logits.argmax(-1))
            logits.argmax(-1)
            return time.perf_counter() - start

        def prefill(batch: int) -> float:
            ids = prompt(batch)
            start = time.perf_counter()
            decoder.prefill(ids, np.ones_like(ids))
            return time.perf_counter() - start

        note = (f"CPU, {threads} thread(s), ONNX Runtime {self.info.get('precision', '')} graph with "
                "its KV cache (Lepton's loop)")
        return run, prefill, threads, self.size_bytes() / 1e6, note

    def probe(self, context: int) -> None:
        """Generate to ``context`` tokens at batch 1 (the memory probe's work)."""
        token = min(1000, int(self.config.vocab_size) - 1)
        decoder = self.decoder()
        prompt = max(1, context // 2)
        ids = np.full((1, prompt), token, np.int64)
        logits, state = decoder.prefill(ids, np.ones_like(ids))
        for _ in range(context - prompt - 1):
            logits = decoder.step(state, logits.argmax(-1))


def graph_configs(folder: Path) -> tuple[Any, Any]:
    """(config, generation config) an exported model's folder holds (the generation config made
    from the model's when the folder has none)."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    try:
        return config, GenerationConfig.from_pretrained(folder)
    except OSError:
        return config, GenerationConfig.from_model_config(config)


class DecoderRuntime:
    """The ``Runtime`` protocol over an exported decoder: ``logits`` of a padded batch are the
    next-token logits after each row's last real token, shape (batch, vocabulary)."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, model: OrtCausalLM) -> None:
        self.model = model

    def logits(self, batch: dict[str, Any]) -> np.ndarray:
        ids = np.asarray(batch["input_ids"])
        mask = np.asarray(batch.get("attention_mask", np.ones_like(ids)))
        rows = [[int(t) for t, m in zip(r, k) if m] for r, k in zip(ids, mask)]
        left, left_mask = left_pad(rows, 0)
        logits, _ = self.model.decoder().prefill(left, left_mask)
        return logits

    def parameter_counts(self) -> tuple[int, int]:
        n = self.model.num_parameters()
        return n, n

    def size_bytes(self) -> int:
        return self.model.size_bytes()

    def flops_per_item(self, tokens: float) -> float | None:
        return None


# ---------------------------------------------------------------------- helpers


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sampling_of(settings: Any) -> Any:
    """``GenerationSettings`` (the recipe's) as the ORT loop's ``SamplingSettings``."""
    from lepton.runtimes.ort_decoder_loop import SamplingSettings

    if settings.strategy == "beam":
        raise LeptonError("generation.strategy: beam search runs on PyTorch only; the ONNX Runtime "
                          "loop decodes greedy or sample")
    if settings.repetition_penalty != 1.0:
        raise LeptonError("generation.repetition_penalty: not available on the ONNX Runtime loop "
                          "(leave it at 1.0 or generate with the PyTorch model)")
    sample = settings.strategy == "sample"
    return SamplingSettings(max_new_tokens=settings.max_new_tokens, do_sample=sample,
                            temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                            seed=settings.seed if sample else None, stop=tuple(settings.stop)).validate()


def _with_seed(sampling: Any, seed: int) -> Any:
    import dataclasses

    return dataclasses.replace(sampling, seed=seed)


def _stop_check(tokenizer: Any, stops: Sequence[str]) -> Any:
    if not stops:
        return None

    def stopped(_: int, new: list[int]) -> bool:
        text = tokenizer.decode(new, skip_special_tokens=True)
        return cut_at_stop(text, stops) != text

    return stopped


def _load_onnx_decoder(folder: Path, manifest: dict[str, Any], auto: Any, structure: Any, device: str) -> Any:
    """An exported decoder (its graph with a KV cache) run by Lepton's ONNX Runtime loop."""
    info = manifest.get("onnx")
    return OrtCausalLM(folder, info=dict(info) if isinstance(info, dict) else {})


register_format(WeightsFormat(
    "onnx-decoder", "onnxruntime", "model.onnx", _load_onnx_decoder,
    how_it_loads=("The weights are an ONNX graph with its KV cache (`model.onnx`), run by ONNX Runtime with "
                  "Lepton's generation loop: load it with `lepton.load`, or serve it with `lepton serve`.")))
