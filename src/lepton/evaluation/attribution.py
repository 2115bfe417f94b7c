"""Token attributions for classifiers: which input tokens a prediction rests on.

Two methods, one output: a score per token (special tokens left out) toward one class, positive
where the token supports it.

- ``occlusion`` (leave one token out): the drop in the class's probability when the token is
  deleted from the input (the sequence gets one shorter; nothing is put in its place, so no
  mask token the model never saw at this position skews it). Model-agnostic: it only asks the
  runtime for logits, so it runs on PyTorch, ONNX and INT8 artifacts as shipped. Every deletion
  of every example goes through the runtime in length-sorted batches.
- ``ig`` (integrated gradients, Sundararajan et al. 2017, through captum's
  ``LayerIntegratedGradients``): gradients of the class's probability along a straight path from
  a baseline input (every non-special token replaced by the padding token, specials and
  positions kept) to the input, at the word-embedding layer, summed over the embedding. Needs a
  PyTorch model with gradients (``pip install 'lepton[explain]'``). Completeness: the scores of
  an example sum to p(input) - p(baseline), up to the path integral's error (``steps``).

Tokens are the model's sub-word tokens, not words: that is what the model sees, and what
deletion removes. The generative kinds and token classification are refused (``ExplainError``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from lepton.core.errors import LeptonError, MissingExtraError
from lepton.runtimes import Runtime, runtime_info
from lepton.tasks import Encoded, collate, kind_of, softmax, sorted_batches


class ExplainError(LeptonError):
    """A model or request that cannot be explained (its kind, its runtime, the method)."""


@dataclass
class Example:
    """One tokenized input: ids (specials included), token types, and where its content is."""

    ids: list[int]
    types: list[int] | None
    content: list[int]  # positions of the non-special tokens, in order


def check_explainable(task: Any, where: str) -> None:
    """Refuse, in one line naming ``where``, a task whose kind has no attributions yet."""
    kind = kind_of(task)
    if not kind.labels_per_text:
        raise ExplainError(f"{where}: token attributions are implemented for sequence classification; "
                           f"{kind.title} models are not supported yet")


def check_method(method: str, where: str) -> None:
    if method not in ("occlusion", "ig"):
        raise ExplainError(f"{where}: unknown attribution method {method!r} (known: ig, occlusion)")


def special_ids(tokenizer: Any) -> set[int]:
    return {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}


def examples_of(enc: Encoded, indices: Sequence[int], specials: set[int]) -> list[Example]:
    """The examples ``indices`` of ``enc``, with the positions of their non-special tokens."""
    out = []
    for i in indices:
        ids = list(enc.input_ids[i])
        types = list(enc.token_type_ids[i]) if enc.token_type_ids is not None else None
        out.append(Example(ids, types, [p for p, t in enumerate(ids) if t not in specials]))
    return out


def removed(ex: Example, positions: Sequence[int]) -> Example:
    """``ex`` with the tokens at ``positions`` deleted."""
    drop = set(positions)
    keep = [p for p in range(len(ex.ids)) if p not in drop]
    return _subset(ex, keep)


def kept(ex: Example, positions: Sequence[int]) -> Example:
    """``ex`` with only its special tokens and the tokens at ``positions`` (in their order)."""
    content = set(ex.content)
    wanted = set(positions)
    return _subset(ex, [p for p in range(len(ex.ids)) if p not in content or p in wanted])


def _subset(ex: Example, keep: list[int]) -> Example:
    types = [ex.types[p] for p in keep] if ex.types is not None else None
    where = {p: n for n, p in enumerate(keep)}
    return Example([ex.ids[p] for p in keep], types, [where[p] for p in ex.content if p in where])


def probabilities(runtime: Runtime, inputs: Sequence[Example], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (n, K) of ``inputs``, run in length-sorted padded batches."""
    if not inputs:
        return np.zeros((0, 0))
    has_types = all(x.types is not None for x in inputs)
    enc = Encoded(input_ids=[x.ids for x in inputs],
                  token_type_ids=[x.types for x in inputs] if has_types else None,  # type: ignore[misc]
                  labels=None)
    out: list[Any] = [None] * len(inputs)
    for idx in sorted_batches(enc.lengths, batch_size):
        probs = softmax(np.asarray(runtime.logits(collate(enc, idx, pad_id, with_labels=False)), dtype=np.float64))
        for row, i in enumerate(idx):
            out[i] = probs[row]
    return np.stack(out)


def occlusion(runtime: Runtime, examples: Sequence[Example], pad_id: int,
              targets: Sequence[int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Leave-one-token-out scores per example (one per content token) toward ``targets`` (default:
    each example's predicted class), and the probabilities of the whole inputs (n, K)."""
    inputs: list[Example] = []
    for ex in examples:
        inputs.append(ex)
        inputs += [removed(ex, [p]) for p in ex.content]
    probs = probabilities(runtime, inputs, pad_id)
    scores, full, at = [], [], 0
    for n, ex in enumerate(examples):
        block = probs[at:at + 1 + len(ex.content)]
        at += 1 + len(ex.content)
        target = int(np.argmax(block[0])) if targets is None else int(targets[n])
        scores.append(block[0, target] - block[1:, target])
        full.append(block[0])
    return scores, np.stack(full) if full else np.zeros((0, 0))


def require(module: str, extra: str = "explain") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{module} is needed here: pip install 'lepton[{extra}]'") from err


def integrated_gradients(bundle: Any, examples: Sequence[Example], pad_id: int, *, steps: int = 64,
                         targets: Sequence[int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Integrated-gradients scores per example (one per content token) toward ``targets``
    (default: the predicted class) and the probabilities of the whole inputs (n, K)."""
    if not runtime_info(bundle.runtime).trainable:
        raise ExplainError(f"integrated gradients need a PyTorch model; this one runs on {bundle.runtime}: "
                           "use the occlusion method")
    import torch

    attr = require("captum.attr")
    model = bundle.model.eval()
    device = next(model.parameters()).device

    def forward(ids: Any, mask: Any, types: Any) -> Any:
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            kwargs["token_type_ids"] = types
        return torch.softmax(model(**kwargs).logits.float(), dim=-1)

    method = attr.LayerIntegratedGradients(forward, model.get_input_embeddings())
    scores, full = [], []
    for n, ex in enumerate(examples):
        ids = torch.tensor([ex.ids], device=device)
        base = ids.clone()
        base[0, ex.content] = pad_id
        mask = torch.ones_like(ids)
        types = torch.tensor([ex.types], device=device) if ex.types is not None else None
        with torch.no_grad():
            probs = forward(ids, mask, types)[0].double().cpu().numpy()
        target = int(np.argmax(probs)) if targets is None else int(targets[n])
        try:
            values = method.attribute(ids, baselines=base, additional_forward_args=(mask, types), target=target,
                                      n_steps=steps, internal_batch_size=max(steps, 1))
        except (RuntimeError, NotImplementedError) as err:  # e.g. int8 kernels without a backward pass
            raise ExplainError(f"integrated gradients failed on this model ({err}); use the occlusion method") \
                from None
        per_token = values.sum(dim=-1)[0].detach().double().cpu().numpy()
        scores.append(per_token[ex.content])
        full.append(probs)
    return scores, np.stack(full) if full else np.zeros((0, 0))


def attribute(bundle: Any, runtime: Runtime, examples: Sequence[Example], *, method: str, steps: int = 64,
              targets: Sequence[int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Scores per example and whole-input probabilities by ``method`` ("occlusion" or "ig")."""
    pad = bundle.tokenizer.pad_token_id or 0
    if method == "ig":
        return integrated_gradients(bundle, examples, pad, steps=steps, targets=targets)
    return occlusion(runtime, examples, pad, targets)


def _encode_items(task: Any, tok: Any, items: Sequence[Any]) -> tuple[Any, list[Example], bool]:
    """Raw inputs tokenized as the task's model reads them (with character offsets where the
    tokenizer is a fast one), as examples; a wrong shape or an empty text is an ExplainError."""
    if task.pair and not all(isinstance(x, (tuple, list)) and len(x) == 2 for x in items):
        raise ExplainError("explain: this model classifies sentence pairs: pass (text, text_pair) tuples")
    if not task.pair and not all(isinstance(x, str) for x in items):
        raise ExplainError("explain: pass a text or a list of texts")
    firsts = [x[0] if task.pair else x for x in items]
    seconds = [x[1] for x in items] if task.pair else None
    fast = bool(getattr(tok, "is_fast", False))
    enc = tok(firsts, seconds, truncation=True, max_length=task.max_length, return_offsets_mapping=fast)
    examples = examples_of(Encoded(enc["input_ids"], enc.get("token_type_ids"), None), range(len(items)),
                           special_ids(tok))
    for i, ex in enumerate(examples):
        if not ex.content:
            where = f"input {i + 1} of {len(items)}" if len(items) > 1 else "the input"
            raise ExplainError(f"explain: {where} has no tokens to attribute (an empty text)")
    return enc, examples, fast


def explain_inputs(bundle: Any, runtime: Runtime, items: Sequence[Any], *, method: str = "occlusion",
                   steps: int = 64, target: str | None = None) -> list[dict[str, Any]]:
    """Raw texts (or (text, pair) tuples) explained: the prediction, and each token with its
    character span in its text (``text``: 0 the first, 1 the pair) and its score toward the
    predicted label, or toward label ``target`` where given (``explained`` names it)."""
    task = bundle.task
    check_explainable(task, "explain")
    check_method(method, "explain")
    if target is not None and target not in task.labels:
        raise ExplainError(f"explain: {target!r} is not a label of this model (its labels: {', '.join(task.labels)})")
    tok = bundle.tokenizer
    enc, examples, fast = _encode_items(task, tok, items)
    targets = [task.labels.index(target)] * len(examples) if target is not None else None
    scores, probs = attribute(bundle, runtime, examples, method=method, steps=steps, targets=targets)
    out = []
    for i, (ex, s, p) in enumerate(zip(examples, scores, probs)):
        best = int(np.argmax(p))
        words = tok.convert_ids_to_tokens([ex.ids[q] for q in ex.content])
        seq = enc.sequence_ids(i) if fast else [None] * len(ex.ids)
        spans = enc["offset_mapping"][i] if fast else [(None, None)] * len(ex.ids)
        tokens = [{"token": w, "score": float(v), "text": seq[q] or 0, "start": spans[q][0], "end": spans[q][1]}
                  for w, v, q in zip(words, s, ex.content)]
        out.append({"label": task.labels[best], "score": float(p[best]), "method": method,
                    "explained": target if target is not None else task.labels[best],
                    "scores": {lab: float(x) for lab, x in zip(task.labels, p)}, "tokens": tokens})
    return out


def word_scores(tokens: Sequence[dict[str, Any]], which: int = 0) -> list[dict[str, Any]]:
    """Tokens of text ``which`` (as ``explain_inputs`` gives them) merged into words: runs of
    tokens whose character spans touch ("stu", "##lt", "##ifying"), each with the summed score."""
    words: list[dict[str, Any]] = []
    for t in tokens:
        if t.get("text", 0) != which or t.get("start") is None:
            continue
        if words and words[-1]["end"] == t["start"]:
            words[-1]["end"] = t["end"]
            words[-1]["score"] += t["score"]
        else:
            words.append({"start": t["start"], "end": t["end"], "score": t["score"]})
    return words
