"""Negative log-likelihoods a model assigns: per document (language modelling) or per target.

The sums come back per document (``DocumentLoss``) so perplexity and bits per byte can be
bootstrapped over documents (``text_metrics.lm_scores``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lepton.tasks.generate import is_encoder_decoder
from lepton.tasks.prompt_encoding import (
    IGNORE,
    GenEncoded,
    collate,
    encode_causal,
    encode_documents,
    encode_seq2seq,
    pad_id_of,
)
from lepton.tasks.text_metrics import DocumentLoss


def token_nll_sums(model: Any, enc: GenEncoded, pad_id: int, *, batch_size: int = 8) -> tuple[list[float], list[int]]:
    """(summed NLL in nats, scored tokens) per encoded example."""
    if hasattr(model, "token_nll_sums"):  # an exported decoder (lepton.runtimes.ort_decoder)
        return model.token_nll_sums(enc, pad_id, batch_size=batch_size)
    import torch
    import torch.nn.functional as F

    seq2seq = is_encoder_decoder(model)
    nll: list[float] = []
    count: list[int] = []
    model.eval()
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    result: dict[int, tuple[float, int]] = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = collate([enc.input_ids[i] for i in rows], [enc.labels[i] for i in rows], pad_id,
                            seq2seq=seq2seq)
            labels = batch.pop("labels")
            if seq2seq:
                logits = model(**batch, labels=labels).logits
            else:
                logits = model(**batch).logits[:, :-1]
                labels = labels[:, 1:]
            flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   labels.reshape(-1).clamp(min=0), reduction="none").view(labels.shape)
            keep = labels != IGNORE
            sums = (flat * keep).sum(1)
            for row, i in enumerate(rows):
                result[i] = (float(sums[row]), int(keep[row].sum()))
    for i in range(len(enc)):
        nll.append(result[i][0])
        count.append(result[i][1])
    return nll, count


def document_losses(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 256,
                    batch_size: int = 8) -> DocumentLoss:
    """Every token of every document scored (windows that overlap by one token)."""
    enc, owner = encode_documents(tokenizer, texts, max_length=max_length)
    nll, count = token_nll_sums(model, enc, pad_id_of(tokenizer), batch_size=batch_size)
    doc_nll, doc_tok = [0.0] * len(texts), [0] * len(texts)
    for d, n, c in zip(owner, nll, count):
        doc_nll[d] += n
        doc_tok[d] += c
    return DocumentLoss(nll=doc_nll, tokens=doc_tok, bytes=[len(t.encode("utf-8")) for t in texts])


def target_losses(model: Any, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], *,
                  chat: bool = False, max_prompt_tokens: int = 256, max_target_tokens: int = 128,
                  batch_size: int = 8) -> DocumentLoss:
    """NLL of each reference target given its prompt (target perplexity), with an EOS at the end."""
    if is_encoder_decoder(model):
        enc = encode_seq2seq(tokenizer, prompts, targets, max_prompt_tokens=max_prompt_tokens,
                             max_target_tokens=max_target_tokens)
    else:
        enc = encode_causal(tokenizer, prompts, targets, chat=chat, max_prompt_tokens=max_prompt_tokens,
                            max_target_tokens=max_target_tokens)
    nll, count = token_nll_sums(model, enc, pad_id_of(tokenizer), batch_size=batch_size)
    return DocumentLoss(nll=nll, tokens=count, bytes=[len(t.encode("utf-8")) for t in targets])
