"""Token ids for generative training and scoring, and the batches they are collated into.

Decoder-only (causal) models see ``prompt + target + eos`` as one sequence; the labels are -100 on
the prompt, so the loss counts the target tokens only. Encoder-decoder models (Marian, T5, BART)
take the prompt as ``input_ids`` and the target as ``labels``; the model shifts the labels into
its decoder inputs itself. Language modelling cuts each document into windows that overlap by
one token, so every token of the text is scored exactly once.

Truncation is counted, never silent: ``Truncation`` says how many prompts, targets and documents
were cut, and the caller logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

IGNORE = -100  # label id the loss skips (transformers' convention)


@dataclass
class Truncation:
    examples: int = 0
    prompts: int = 0  # prompts cut from the left (the end, next to the target, is kept)
    targets: int = 0
    documents: int = 0  # language modelling: documents longer than one window (split, not cut)

    def describe(self) -> str:
        if self.documents:
            return f"{self.documents} of {self.examples} documents split into several windows"
        if self.prompts or self.targets:
            return f"{self.prompts} of {self.examples} prompts and {self.targets} targets truncated"
        return f"nothing truncated ({self.examples} examples)"


@dataclass
class GenEncoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    truncation: Truncation = field(default_factory=Truncation)

    def __len__(self) -> int:
        return len(self.input_ids)

    def token_lengths(self, *, seq2seq: bool) -> list[int]:
        """Tokens per example (for length-grouped batches)."""
        if seq2seq:
            return [len(a) + len(b) for a, b in zip(self.input_ids, self.labels)]
        return [len(a) for a in self.input_ids]


def render_prompt(tokenizer: Any, prompt: str, *, chat: bool, system: str | None = None) -> str:
    """The prompt as the model sees it: with ``chat``, wrapped in the tokenizer's chat template."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        from lepton.core.errors import ModelLoadError

        raise ModelLoadError("task.chat: the tokenizer has no chat template; set chat: false")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, text: str, *, chat: bool) -> list[int]:
    # A chat template already holds its special tokens; a plain prompt gets the tokenizer's own
    # (BOS for Llama-style tokenizers, nothing for GPT-2 style ones).
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def encode_causal(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], *, chat: bool = False,
                  max_prompt_tokens: int = 256, max_target_tokens: int = 128) -> GenEncoded:
    eos = tokenizer.eos_token_id
    out = GenEncoded([], [], Truncation(examples=len(prompts)))
    for prompt, target in zip(prompts, targets):
        p = prompt_ids(tokenizer, prompt, chat=chat)
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(p) > max_prompt_tokens:
            p, out.truncation.prompts = p[-max_prompt_tokens:], out.truncation.prompts + 1
        if len(t) > max_target_tokens:
            t, out.truncation.targets = t[:max_target_tokens], out.truncation.targets + 1
        t = t + ([eos] if eos is not None else [])
        out.input_ids.append(p + t)
        out.labels.append([IGNORE] * len(p) + t)
    _log(out.truncation)
    return out


def encode_seq2seq(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], *,
                   max_prompt_tokens: int = 256, max_target_tokens: int = 128) -> GenEncoded:
    src = tokenizer(list(prompts), truncation=False)["input_ids"]
    tgt = tokenizer(text_target=list(targets), truncation=False)["input_ids"]
    out = GenEncoded([], [], Truncation(examples=len(prompts)))
    for s, t in zip(src, tgt):
        if len(s) > max_prompt_tokens:  # keep the closing special token (</s>)
            s, out.truncation.prompts = s[:max_prompt_tokens - 1] + s[-1:], out.truncation.prompts + 1
        if len(t) > max_target_tokens:
            t, out.truncation.targets = t[:max_target_tokens - 1] + t[-1:], out.truncation.targets + 1
        out.input_ids.append(s)
        out.labels.append(t)
    _log(out.truncation)
    return out


def context_token(tokenizer: Any) -> int:
    """The token every document is scored after: BOS, else EOS (GPT-2 style tokenizers' separator),
    so the first real token is scored too and bits per byte covers every byte."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        from lepton.core.errors import ModelLoadError

        raise ModelLoadError("model: the tokenizer has neither a BOS nor an EOS token to start documents with")
    return tid


def encode_documents(tokenizer: Any, texts: Sequence[str], *, max_length: int = 256) -> tuple[GenEncoded, list[int]]:
    """Windows of at most ``max_length`` tokens over every document, and each window's document index.

    Window k+1 starts with the last token of window k (scored there, context here), so each text
    token is a label exactly once."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    start = context_token(tokenizer)
    out = GenEncoded([], [], Truncation(examples=len(texts)))
    owner: list[int] = []
    for d, text in enumerate(texts):
        ids = [start] + tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_length:
            out.truncation.documents += 1
        pos = 0
        while pos < len(ids) - 1:
            window = ids[pos:pos + max_length]
            out.input_ids.append(window)
            out.labels.append([IGNORE] + window[1:])  # the model shifts: label i is predicted at i-1
            owner.append(d)
            pos += max_length - 1
    _log(out.truncation)
    return out, owner


def _log(trunc: Truncation) -> None:
    if trunc.prompts or trunc.targets or trunc.documents:
        log.warning("length limits: %s", trunc.describe())


# ------------------------------------------------------------------------------ collation


def collate(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int, *,
            seq2seq: bool) -> dict[str, Any]:
    """A right-padded training/scoring batch: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, x in enumerate(input_ids):
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    lab_width = max(len(y) for y in labels) if seq2seq else width
    lab = torch.full((len(labels), lab_width), IGNORE, dtype=torch.long)
    for i, y in enumerate(labels):
        lab[i, :len(y)] = torch.tensor(y, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def pad_id_of(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)
