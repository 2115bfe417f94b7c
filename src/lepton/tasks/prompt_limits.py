"""What a prompt must be before a generative model sees it, shared by ``lepton generate``,
``lepton.load(path).generate`` and the generative server (``lepton.serve.generation``).

- Text: not empty, valid Unicode (no lone surrogates such as ``"\\ud800"``, which JSON escapes
  and undecodable command-line bytes produce and no tokenizer can encode).
- Length: a prompt's tokens plus the tokens to generate fit the model's context. A prompt over
  ``MAX_CHARS_PER_TOKEN`` characters per allowed token is refused before it is tokenized at all.

Each check returns what is wrong (``None``: nothing) so the caller words the error its own way
(a ``PromptError`` line on the command line, a 400 naming the field on the server).
"""

from __future__ import annotations

from typing import Any

from lepton.core.errors import LeptonError

# No tokenizer's tokens average more characters than this on text a model can take, so a longer
# text is over its token limit whatever the tokenizer: it is refused without being tokenized.
MAX_CHARS_PER_TOKEN = 32


class PromptError(LeptonError):
    """A prompt that cannot be generated from: empty, not valid Unicode, or over the context."""


def text_problem(text: Any, *, allow_empty: bool = False) -> str | None:
    """What is wrong with ``text`` as text a tokenizer can encode, or None."""
    if not isinstance(text, str):
        return f"expected text, got {type(text).__name__}"
    if not text and not allow_empty:
        return "is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        return (f"holds a lone surrogate (U+{ord(bad):04X}) at character {err.start}: not valid Unicode "
                "text (an unpaired \\ud800-\\udfff escape, or bytes that are not UTF-8)")
    return None


def check_text(text: Any, where: str, *, allow_empty: bool = False) -> None:
    problem = text_problem(text, allow_empty=allow_empty)
    if problem is not None:
        raise PromptError(f"{where}: {problem}")


def model_context(model: Any) -> int | None:
    """The most positions (prompt + generated tokens) the model's config allows, or None if it names none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def prompt_room(max_context: int | None, max_new_tokens: int, *, cap: int | None = None,
                seq2seq: bool = False) -> int | None:
    """The most prompt tokens that leave room for ``max_new_tokens`` (an encoder-decoder's output
    has its own positions), at most ``cap``; None: no limit known."""
    room = None if max_context is None else max_context - (0 if seq2seq else max_new_tokens)
    if cap is not None:
        room = cap if room is None else min(room, cap)
    return room


def chars_problem(text: str, room: int | None) -> str | None:
    """A text too long to be within ``room`` tokens by any tokenizer (refused before tokenizing)."""
    if room is not None and len(text) > max(room, 1) * MAX_CHARS_PER_TOKEN:
        return (f"{len(text):,} characters is over the limit of {max(room, 1) * MAX_CHARS_PER_TOKEN:,} "
                f"({MAX_CHARS_PER_TOKEN} per token of the {room:,}-token prompt limit)")
    return None


def tokens_problem(n_prompt: int, max_new_tokens: int, max_context: int | None, *, cap: int | None = None,
                   seq2seq: bool = False, new_tokens_name: str = "max_new_tokens") -> str | None:
    """What is wrong with a prompt of ``n_prompt`` tokens followed by ``max_new_tokens`` new ones."""
    if n_prompt == 0:
        return "the prompt has no tokens"
    if cap is not None and n_prompt > cap:
        return f"{n_prompt:,} tokens is over the limit of {cap:,} prompt tokens"
    if max_context is None:
        return None
    if seq2seq:
        if n_prompt > max_context:
            return f"{n_prompt:,} tokens is over the model's context of {max_context:,} tokens"
        return None
    if max_new_tokens >= max_context:
        return (f"{new_tokens_name} {max_new_tokens:,} leaves no room for a prompt in the model's context "
                f"of {max_context:,} tokens")
    if n_prompt + max_new_tokens > max_context:
        return (f"the prompt ({n_prompt:,} tokens) plus {max_new_tokens:,} new tokens ({new_tokens_name}) is "
                f"over the model's context of {max_context:,} tokens: at most {max_context - max_new_tokens:,} "
                "prompt tokens")
    return None
