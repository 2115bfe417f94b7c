"""``generate(model, tokenizer, prompts, settings)``: batched generation for decoder-only and
encoder-decoder models, with stop strings and seeded sampling.

transformers does the decoding. What this adds: prompts are sorted by length and batched (less
padding), decoder-only prompts are left-padded (generation continues from the last position of
every row), sampling is seeded per call so one seed gives one text whatever the batch order, and
stop strings cut the text after decoding (transformers' ``stop_strings`` also stops early, which
saves time, but needs the tokenizer at every step; the cut here makes the result exact).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lepton.tasks.generation_settings import GenerationSettings

log = logging.getLogger(__name__)


def is_encoder_decoder(model: Any) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def pad_ids(tokenizer: Any) -> tuple[Any, Any]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return eos, pad


def check_prompts(model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings, *,
                  max_prompt_tokens: int | None = None) -> None:
    """Refuse, in one line naming the prompt, one that is empty, not valid Unicode, or (when not
    truncated to ``max_prompt_tokens``) too long for the model's context with the tokens to come."""
    from lepton.tasks.prompt_limits import PromptError, chars_problem, model_context, text_problem, tokens_problem

    seq2seq = is_encoder_decoder(model)
    context = None if max_prompt_tokens is not None else model_context(model)
    if context is not None and not seq2seq and settings.max_new_tokens >= context:
        raise PromptError(f"max_new_tokens: {settings.max_new_tokens:,} leaves no room for a prompt in the "
                          f"model's context of {context:,} tokens")
    room = None if context is None else (context if seq2seq else context - settings.max_new_tokens)
    for i, text in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt {i + 1} of {len(prompts)}"
        problem = text_problem(text) or chars_problem(text, room)
        if problem is None:
            n = len(tokenizer(text, add_special_tokens=seq2seq)["input_ids"])
            n = n if max_prompt_tokens is None else min(n, max_prompt_tokens)
            problem = tokens_problem(n, settings.max_new_tokens, context, seq2seq=seq2seq)
        if problem is not None:
            raise PromptError(f"{where}: {problem}")


def generate(model: Any, tokenizer: Any, prompts: Sequence[str],
             settings: GenerationSettings | None = None, *, max_prompt_tokens: int | None = None) -> list[str]:
    """The generated continuation (decoder-only) or output (encoder-decoder) of each prompt."""
    import torch

    settings = settings or GenerationSettings()
    check_prompts(model, tokenizer, prompts, settings, max_prompt_tokens=max_prompt_tokens)
    if hasattr(model, "generate_texts"):  # an exported decoder (lepton.runtimes.ort_decoder)
        return model.generate_texts(tokenizer, prompts, settings, max_prompt_tokens=max_prompt_tokens)
    if tokenizer.pad_token is None:  # decoder-only tokenizers often have none; padding is masked
        tokenizer.pad_token = tokenizer.eos_token
    eos, pad = pad_ids(tokenizer)
    config = settings.to_generation_config(eos_token_id=eos, pad_token_id=pad,
                                           base=getattr(model, "generation_config", None))
    if settings.stop:
        config.stop_strings = list(settings.stop)
    seq2seq = is_encoder_decoder(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "right" if seq2seq else "left"
    model.eval()
    try:
        for start in range(0, len(order), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            batch = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                              truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens,
                              add_special_tokens=seq2seq)
            if settings.strategy == "sample":
                # One seed per batch position in sorted order: reproducible for the same prompts.
                torch.manual_seed(settings.seed + start)
            with torch.inference_mode():
                ids = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
            new = ids if seq2seq else ids[:, batch["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in zip(rows, texts):
                out[i] = cut_at_stop(text, settings.stop).strip() if settings.stop else text.strip()
    finally:
        tokenizer.padding_side = side
    return out
