"""An encoder-decoder exported to ONNX, run by Lepton's ONNX Runtime generation loop.

The folder holds two graphs (``lepton.stages.export.onnx_seq2seq`` writes them):

- ``encoder.onnx``: ``input_ids``, ``attention_mask`` -> ``cross.<i>.key/value`` for every decoder
  layer: the encoder and the cross-attention projections, computed once per input;
- ``decoder.onnx``: ``decoder_input_ids``, ``encoder_attention_mask``, ``past.<i>.key/value`` (the
  self-attention cache, length 0 at the first step) and the cross keys/values -> ``logits`` of every
  fed position and ``present.<i>.key/value``.

Decoding is greedy or beam search. The beam search is written here because ONNX Runtime has none
for these graphs on the CPU (its ``BeamSearch`` contrib op needs graphs in its own layout); it
follows transformers' ``generate`` step for step (2 x beams candidates per step, finished
hypotheses scored by length-normalised log-probability, transformers' early-stop heuristic), so the
same model gives the same outputs on both runtimes (tested). ``forced_eos_token_id`` of the
generation config is honoured; other logits processors are not offered here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton.core.errors import LeptonError
from lepton.runtimes.formats import WeightsFormat, register_format
from lepton.runtimes.ort_decoder import DecoderRuntime

WEIGHTS_FORMAT = "onnx-seq2seq"
ENCODER, DECODER = "encoder.onnx", "decoder.onnx"
GRAPH_SUFFIXES = (".onnx", ".onnx.data", ".onnx_data")
NEG = -1.0e9


def cache_names(layers: int) -> dict[str, list[str]]:
    """Input and output names of the graphs' caches."""
    def names(prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]

    return {"cross": names("cross"), "past": names("past"), "present": names("present")}


@dataclass
class Seq2SeqSettings:
    max_new_tokens: int = 32
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False


class Seq2SeqGraphs:
    """The two ONNX Runtime sessions of one folder, with ``threads`` intra-op threads."""

    def __init__(self, folder: Path, threads: int, layers: int, start: int, eos: Sequence[int],
                 forced_eos: int | None, pad: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.encoder = ort.InferenceSession(str(folder / ENCODER), opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(folder / DECODER), opts, providers=["CPUExecutionProvider"])
        self.names = cache_names(layers)
        self.start, self.eos, self.forced_eos, self.pad = start, list(eos), forced_eos, pad
        self.decoder_inputs = {i.name for i in self.decoder.get_inputs()}
        past = next(i for i in self.decoder.get_inputs() if i.name == "past.0.key")
        self.heads, self.head_dim = int(past.shape[1]), int(past.shape[3])

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        return self.encoder.run(self.names["cross"], {"input_ids": ids, "attention_mask": mask})

    def step(self, tokens: np.ndarray, mask: np.ndarray, past: list[np.ndarray],
             cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits of the last fed position (rows, vocabulary) and the grown self-attention cache."""
        feed: dict[str, np.ndarray] = {"decoder_input_ids": tokens, "encoder_attention_mask": mask}
        feed.update(zip(self.names["past"], past))
        feed.update(zip(self.names["cross"], cross))
        out = self.decoder.run(["logits", *self.names["present"]], feed)
        return out[0][:, -1, :], out[1:]

    def empty_past(self, rows: int) -> list[np.ndarray]:
        return [np.zeros((rows, self.heads, 0, self.head_dim), np.float32) for _ in self.names["past"]]

    def process(self, logp: np.ndarray, new_len: int, max_new: int) -> np.ndarray:
        """transformers' ForcedEOSTokenLogitsProcessor: the last allowed position can only be EOS."""
        if self.forced_eos is not None and new_len == max_new - 1:
            logp = np.full_like(logp, -np.inf)
            logp[:, self.forced_eos] = 0.0
        return logp

    # -------------------------------------------------------------- decoding

    def greedy(self, ids: np.ndarray, mask: np.ndarray, max_new: int) -> list[list[int]]:
        cross = self.encode(ids, mask)
        rows = ids.shape[0]
        past = self.empty_past(rows)
        tokens = np.full((rows, 1), self.start, np.int64)
        out: list[list[int]] = [[] for _ in range(rows)]
        done = np.zeros(rows, bool)
        for t in range(max_new):
            logits, past = self.step(tokens, mask, past, cross)
            nxt = self.process(logits, t, max_new).argmax(-1)
            nxt = np.where(done, self.pad, nxt)
            for r in np.flatnonzero(~done):
                out[r].append(int(nxt[r]))
            done |= np.isin(nxt, self.eos)
            if done.all():
                break
            tokens = nxt[:, None].astype(np.int64)
        return [[t for t in row if t not in self.eos] for row in out]

    def _candidates(self, logits: np.ndarray, run_scores: np.ndarray, keep: int, t: int,
                    max_new: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The ``keep`` best (beam x vocabulary) continuations of each sentence, best first, and
        their accumulated log-probabilities. Each beam's own best ``keep`` tokens are found on the
        logits first (log-softmax only shifts a row), so the full rows are only summed, not sorted."""
        rows_k, vocab = logits.shape
        batch, k = run_scores.shape
        if self.forced_eos is not None and t == max_new - 1:  # transformers' ForcedEOSTokenLogitsProcessor
            logp = self.process(_log_softmax(logits), t, max_new).reshape(batch, -1) + np.repeat(run_scores, vocab, 1)
            top, scores = _top(logp, keep)
            return top, scores, vocab
        part = np.argpartition(logits, vocab - keep, axis=1)[:, vocab - keep:]  # (beams, keep), unordered
        r = np.arange(rows_k)[:, None]
        peak = logits.max(axis=1, keepdims=True)
        lse = peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
        cand = (logits[r, part] - lse + run_scores.reshape(-1, 1)).reshape(batch, k * keep)
        flat_idx = (part + (np.arange(rows_k) % k)[:, None] * vocab).reshape(batch, k * keep)
        pick, scores = _top_of(cand, flat_idx, keep)
        return pick, scores, vocab

    def beam(self, ids: np.ndarray, mask: np.ndarray, s: Seq2SeqSettings) -> list[list[int]]:
        """transformers' beam search (``GenerationMixin._beam_search``) on these graphs."""
        batch, k, max_new = ids.shape[0], s.num_beams, s.max_new_tokens
        cross = [np.repeat(c, k, axis=0) for c in self.encode(ids, mask)]
        mask_k = np.repeat(mask, k, axis=0)
        past = self.empty_past(batch * k)
        running = np.full((batch, k, max_new), self.pad, np.int64)
        run_scores = np.zeros((batch, k), np.float32)
        run_scores[:, 1:] = NEG
        finished = np.full((batch, k, max_new), self.pad, np.int64)
        fin_scores = np.full((batch, k), NEG, np.float32)
        fin_len = np.zeros((batch, k), np.int64)
        is_fin = np.zeros((batch, k), bool)
        unsatisfied = np.ones((batch, 1), bool)
        tokens = np.full((batch * k, 1), self.start, np.int64)
        keep, rows = 2 * k, np.arange(batch)[:, None]  # rows: fancy indexing per sentence
        is_eos = (lambda x: x == self.eos[0]) if len(self.eos) == 1 else (lambda x: np.isin(x, self.eos))
        for t in range(max_new):
            logits, present = self.step(tokens, mask_k, past, cross)
            top, top_scores, vocab = self._candidates(logits, run_scores, keep, t, max_new)
            src_beam, tok = top // vocab, top % vocab
            cand = running[rows, src_beam]
            cand[:, :, t] = tok
            hits = is_eos(tok) | (t + 1 >= max_new)
            # running beams: the best k candidates that did not stop
            live = top_scores + hits * NEG
            order = np.argsort(-live, axis=1, kind="stable")[:, :k]
            running, run_scores = cand[rows, order], live[rows, order]
            beam_idx = src_beam[rows, order] + rows * k
            # finished hypotheses: stopped candidates among the top k, length-normalised
            norm = top_scores / float(t + 1) ** s.length_penalty
            just = hits & (np.arange(keep) < k)[None, :]
            full = is_fin.all(axis=1, keepdims=True) & (s.early_stopping is True)
            norm = norm + full * NEG + (~unsatisfied) * NEG + (~just) * NEG
            finished, fin_scores, fin_len, is_fin = _best_k(
                k, (finished, cand), (fin_scores, norm), (fin_len, np.full((batch, keep), t + 1)), (is_fin, just))
            # transformers' early-stop heuristic (early_stopping False: the current length)
            hypothetical = max_new if s.early_stopping == "never" and s.length_penalty > 0 else t + 1
            best_running = run_scores[:, :1] / float(hypothetical) ** s.length_penalty
            worst = np.where(is_fin, fin_scores.min(axis=1, keepdims=True), NEG)
            unsatisfied = unsatisfied & (best_running > worst).any(axis=1, keepdims=True)
            open_beam = not (is_fin.all() and s.early_stopping is True)
            if not (unsatisfied.any() and open_beam and not hits.all()):
                break
            flat_idx = beam_idx.reshape(-1)
            past = [p[flat_idx] for p in present]
            tokens = running[:, :, t].reshape(-1, 1)
        out = []
        for b in range(batch):
            row = finished[b, 0, :fin_len[b, 0]].tolist()
            out.append([x for x in row if x not in self.eos])
        return out


class OrtSeq2SeqLM:
    """The exported encoder-decoder in ``folder``; sessions are opened on first use."""

    weights_format = WEIGHTS_FORMAT
    runtime = "onnxruntime"

    def __init__(self, folder: str | Path, *, info: dict[str, Any] | None = None) -> None:
        from lepton.runtimes.ort_decoder import graph_configs

        self.folder = Path(folder)
        for name in (ENCODER, DECODER):
            if not (self.folder / name).is_file():
                raise LeptonError(f"{self.folder / name}: missing (not an exported encoder-decoder folder)")
        self.config, self.generation_config = graph_configs(self.folder)
        self.info = dict(info or {})
        self._graphs: dict[int, Seq2SeqGraphs] = {}

    def graphs(self, threads: int | None = None) -> Seq2SeqGraphs:
        n = int(threads or _default_threads())
        if n not in self._graphs:
            g, c = self.generation_config, self.config
            eos = g.eos_token_id if g.eos_token_id is not None else c.eos_token_id
            eos = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
            start = c.decoder_start_token_id if c.decoder_start_token_id is not None else c.pad_token_id
            forced = getattr(g, "forced_eos_token_id", None)
            self._graphs[n] = Seq2SeqGraphs(self.folder, n, _decoder_layers(c), int(start), eos,
                                            None if forced is None else int(forced), int(c.pad_token_id or 0))
        return self._graphs[n]

    def save_pretrained(self, dest: str | Path) -> None:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for p in self.folder.iterdir():
            if p.name.endswith(GRAPH_SUFFIXES) or p.name == "config.json":
                shutil.copyfile(p, dest / p.name)
        self.generation_config.save_pretrained(dest)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.name.endswith(GRAPH_SUFFIXES))

    def num_parameters(self) -> int:
        return int(self.info.get("params") or 0)

    def as_runtime(self) -> _Seq2SeqRuntime:
        return _Seq2SeqRuntime(self)

    def eval(self) -> OrtSeq2SeqLM:
        return self

    # ------------------------------------------------------------------ generation

    def generate_ids(self, ids: np.ndarray, mask: np.ndarray, settings: Seq2SeqSettings,
                     threads: int | None = None) -> list[list[int]]:
        graphs = self.graphs(threads)
        if settings.num_beams > 1:
            return graphs.beam(ids, mask, settings)
        return graphs.greedy(ids, mask, settings.max_new_tokens)

    def generate_texts(self, tokenizer: Any, prompts: Sequence[str], settings: Any, *,
                       max_prompt_tokens: int | None = None) -> list[str]:
        """``lepton.tasks.generate.generate`` on the graphs: prompts with the tokenizer's special
        tokens (truncated at ``max_prompt_tokens``, keeping the closing one), right-padded batches
        of ``settings.batch_size`` sorted by length, outputs cut at a stop string and stripped."""
        from lepton.tasks.generate import cut_at_stop

        s = seq2seq_settings(settings, self.generation_config)
        rows = [tokenizer(p)["input_ids"] for p in prompts]
        if max_prompt_tokens is not None:
            rows = [r if len(r) <= max_prompt_tokens else r[:max_prompt_tokens - 1] + r[-1:] for r in rows]
        pad = int(self.config.pad_token_id or 0)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = [""] * len(rows)
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            ids, mask = right_pad([rows[i] for i in chunk], pad)
            for i, toks in zip(chunk, self.generate_ids(ids, mask, s)):
                text = tokenizer.decode(toks, skip_special_tokens=True)
                out[i] = cut_at_stop(text, settings.stop).strip() if settings.stop else text.strip()
        return out

    # ------------------------------------------------------------------ scoring

    def token_nll_sums(self, enc: Any, pad_id: int, *, batch_size: int = 8) -> tuple[list[float], list[int]]:
        """(summed NLL, scored tokens) per example of ``enc`` (sources, target labels): each target
        fed to the decoder at once behind the start token (teacher forcing, as training scores it)."""
        g = self.graphs()
        nll, count = [0.0] * len(enc.input_ids), [0] * len(enc.input_ids)
        order = sorted(range(len(enc.input_ids)), key=lambda i: len(enc.labels[i]))
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            ids, mask = right_pad([list(enc.input_ids[i]) for i in chunk], pad_id)
            labels = [[x for x in enc.labels[i] if x != -100] for i in chunk]
            width = max(map(len, labels))
            dec = np.full((len(chunk), width), pad_id, np.int64)
            dec[:, 0] = g.start
            for r, lab in enumerate(labels):
                dec[r, 1:len(lab)] = lab[:-1]
            cross = g.encode(ids, mask)
            feed = {"decoder_input_ids": dec, "encoder_attention_mask": mask}
            feed.update(zip(g.names["past"], g.empty_past(len(chunk))))
            feed.update(zip(g.names["cross"], cross))
            logp = _log_softmax(g.decoder.run(["logits"], feed)[0])
            for r, (i, lab) in enumerate(zip(chunk, labels)):
                nll[i] = -float(sum(logp[r, j, x] for j, x in enumerate(lab)))
                count[i] = len(lab)
        return nll, count

    # ------------------------------------------------------------------ speed

    def generation_timers(self, prompt_tokens: int, threads: int | None) -> tuple[Any, Any, int, float, str]:
        """``lepton.evaluation.generation_efficiency``'s timers: a source of ``prompt_tokens``
        (one ordinary token repeated), exactly ``new_tokens`` greedy steps."""
        threads = int(threads or _default_threads())
        g = self.graphs(threads)
        token = min(1000, int(self.config.vocab_size) - 1)

        def source(batch: int) -> tuple[np.ndarray, np.ndarray]:
            ids = np.full((batch, prompt_tokens), token, np.int64)
            return ids, np.ones_like(ids)

        def run(batch: int, new_tokens: int) -> float:
            ids, mask = source(batch)
            start = time.perf_counter()
            cross = g.encode(ids, mask)
            past, tokens = g.empty_past(batch), np.full((batch, 1), g.start, np.int64)
            for _ in range(new_tokens):
                logits, past = g.step(tokens, mask, past, cross)
                tokens = logits.argmax(-1)[:, None].astype(np.int64)
            return time.perf_counter() - start

        def prefill(batch: int) -> float:
            ids, mask = source(batch)
            start = time.perf_counter()
            g.encode(ids, mask)
            return time.perf_counter() - start

        note = (f"CPU, {threads} thread(s), ONNX Runtime {self.info.get('precision', '')} encoder and "
                "decoder graphs with the self-attention cache (Lepton's loop)")
        return run, prefill, threads, self.size_bytes() / 1e6, note

    def probe(self, context: int) -> None:
        run, _, _, _, _ = self.generation_timers(max(1, context // 2), None)
        run(1, max(1, context - context // 2))


class _Seq2SeqRuntime(DecoderRuntime):
    """The ``Runtime`` protocol over the exported encoder-decoder: ``logits`` are the first
    decoding step's, shape (batch, vocabulary)."""

    def logits(self, batch: dict[str, Any]) -> np.ndarray:
        g = self.model.graphs()
        ids = np.asarray(batch["input_ids"], np.int64)
        mask = np.asarray(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        cross = g.encode(ids, mask)
        logits, _ = g.step(np.full((ids.shape[0], 1), g.start, np.int64), mask, g.empty_past(ids.shape[0]), cross)
        return logits


# ---------------------------------------------------------------------- helpers


def seq2seq_settings(settings: Any, generation_config: Any) -> Seq2SeqSettings:
    """The recipe's ``GenerationSettings`` as this loop's; sampling and penalties are refused."""
    if settings.strategy == "sample":
        raise LeptonError("generation.strategy: the ONNX Runtime encoder-decoder loop decodes greedy or beam")
    if settings.repetition_penalty != 1.0:
        raise LeptonError("generation.repetition_penalty: not available on the ONNX Runtime loop "
                          "(leave it at 1.0 or generate with the PyTorch model)")
    # The values PyTorch's generate() gets from the same settings (lepton.tasks.generate).
    config = settings.to_generation_config(base=generation_config)
    return Seq2SeqSettings(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams or 1,
                           length_penalty=float(config.length_penalty if config.length_penalty is not None else 1.0),
                           early_stopping=config.early_stopping or False)


def _top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best columns of each row, best first (a partition, then a sort of those ``n``:
    a full sort of beams x vocabulary per step would cost more than the decoder step)."""
    rows = np.arange(scores.shape[0])[:, None]
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    vals = scores[rows, part]
    order = np.lexsort((part, -vals), axis=1)  # ties: the lower index first, as a stable sort would
    return part[rows, order], vals[rows, order]


def _top_of(scores: np.ndarray, index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best of each row of ``scores``, best first, as their ``index`` values (ties: the
    lower index first, as transformers' top-k over the whole row gives them)."""
    rows = np.arange(scores.shape[0])[:, None]
    order = np.lexsort((index, -scores), axis=1)[:, :n]
    return index[rows, order], scores[rows, order]


def _best_k(k: int, sequences: tuple[np.ndarray, np.ndarray], *others: tuple[np.ndarray, np.ndarray]) -> list[Any]:
    """The ``k`` best of finished hypotheses and new candidates, by the scores (``others[0]``)."""
    scores = np.concatenate(others[0], axis=1)
    rows = np.arange(scores.shape[0])[:, None]
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [np.concatenate(sequences, axis=1)[rows, best]] + [np.concatenate(p, axis=1)[rows, best] for p in others]


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def _decoder_layers(config: Any) -> int:
    return int(getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None)
               or config.num_layers)


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)  # a new float32 array (the graph's output stays as it is)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def _load(folder: Path, manifest: dict[str, Any], auto: Any, structure: Any, device: str) -> Any:
    info = manifest.get("onnx")
    return OrtSeq2SeqLM(folder, info=dict(info) if isinstance(info, dict) else {})


register_format(WeightsFormat(
    WEIGHTS_FORMAT, "onnxruntime", ENCODER, _load,
    how_it_loads=("The weights are two ONNX graphs, `encoder.onnx` (with the cross-attention keys and values) and "
                  "`decoder.onnx` (with its self-attention cache), run by ONNX Runtime with Lepton's generation "
                  "loop (greedy or beam search): load it with `lepton.load`, or serve it with `lepton serve`.")))
