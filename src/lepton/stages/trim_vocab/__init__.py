"""``trim_vocab``: keep only the vocabulary the task's data uses; rebuild the embedding matrix
and the tokenizer with new, dense ids.

Kept: every special and added token; every piece that occurs at least ``min_count`` times when
the recipe's ``splits`` (default ``[train]``) are tokenized; the single-character pieces, with
and without the ``##`` continuation prefix, as a floor: ``keep_characters: all`` (default) keeps
every one, so a word the model could spell before never becomes ``[UNK]``; ``seen`` keeps those
of the characters that occur in ``splits`` (after the tokenizer's normalizer), so only a word
with a character never seen there can become ``[UNK]``; ``none`` keeps no floor. With
``reference`` (a data file in the recipe's
columns) its ``reference_top`` most frequent pieces (all of them without ``reference_top``).
Kept pieces keep their relative order; the model's input embedding rows (and an output layer of
vocabulary size, tied or not, with its bias) are selected to match, and ``config.vocab_size``
and ``pad_token_id`` follow, so the model stays a plain transformers model.

Why tokenization is unchanged wherever the kept pieces allow: WordPiece splits each word greedily,
longest known prefix first. If all pieces of a word's old split are kept, each was the longest
match in the full vocabulary, so it is still the longest in the subset: the split is identical.
A word with a dropped piece gets the longest kept pieces instead (the closest spelling the kept
vocabulary allows), or ``[UNK]`` where even single characters are missing. The summary reports
the share of ``report_split`` tokens whose word is split differently, and the new unknowns.

Only WordPiece tokenizers (BERT, MiniLM, ELECTRA, DistilBERT) are rebuilt: the vocabulary of the
``tokenizers`` model is rewritten in the tokenizer's JSON together with every id that refers to it
(added tokens, the post-processor's special tokens, padding), and the result is loaded back with
``AutoTokenizer`` from a saved folder, exactly as plain transformers will load it. BPE and
Unigram tokenizers (GPT-2, RoBERTa, T5, Llama) are refused with a clear error: their merges or
scores would need the same treatment, which is not written yet.
"""

from __future__ import annotations

import collections
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from lepton.core.errors import StageError
from lepton.data import DataSplitConfig
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import StageConfig, register

log = logging.getLogger(__name__)

SplitName = Literal["train", "dev", "test"]


class TrimVocabConfig(StageConfig):
    contract_example: ClassVar[dict[str, Any]] = {}  # every setting has a default

    kind: Literal["trim_vocab"] = "trim_vocab"
    splits: list[SplitName] = Field(default_factory=lambda: ["train"])  # whose tokens are kept
    min_count: int = Field(default=1, ge=1)  # occurrences in ``splits`` a piece needs to stay
    keep_characters: Literal["all", "seen", "none"] = "all"  # the single-character floor
    reference: DataSplitConfig | None = None  # more text, in the recipe's columns
    reference_top: int | None = Field(default=None, ge=1)  # its most frequent N pieces (None: all)
    report_split: SplitName = "dev"  # where the share of changed tokens is measured

    @field_validator("splits")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one split whose tokens are kept, e.g. [train]")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _top_needs_reference(self) -> TrimVocabConfig:
        if self.reference_top is not None and self.reference is None:
            raise ValueError("reference_top needs reference: a data file whose pieces to count")
        return self


# ------------------------------------------------------------------- counting


def _texts(split: Any) -> list[list[Any]]:
    """The split's text lists: texts, plus the second sentences of pairs."""
    return [list(split.texts)] + ([list(split.text_pairs)] if split.text_pairs is not None else [])


def _tokenize(tokenizer: Any, texts: list[Any], words: bool) -> Any:
    """No special tokens, no truncation: every piece of every text counts."""
    return tokenizer(texts, add_special_tokens=False, truncation=False, is_split_into_words=words,
                     verbose=False)


def count_pieces(tokenizer: Any, split: Any) -> collections.Counter[int]:
    counts: collections.Counter[int] = collections.Counter()
    for texts in _texts(split):
        for ids in _tokenize(tokenizer, texts, split.kind == "tokens")["input_ids"]:
            counts.update(ids)
    return counts


def character_ids(vocab: dict[str, int], prefix: str, chars: set[str] | None = None) -> set[int]:
    """Ids of the single-character pieces ``x`` and ``##x`` (of the characters ``chars`` only,
    when given)."""
    out = set()
    for piece, i in vocab.items():
        char = piece[len(prefix):] if piece.startswith(prefix) else piece
        if len(char) == 1 and (chars is None or char in chars):
            out.add(i)
    return out


def seen_characters(tokenizer: Any, split: Any) -> set[str]:
    """The characters of ``split``'s text as the tokenizer's normalizer leaves them."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    chars: set[str] = set()
    for texts in _texts(split):
        for text in texts:
            for part in (text if isinstance(text, list) else [text]):
                chars.update(normalizer.normalize_str(part) if normalizer is not None else part)
    return chars


# ------------------------------------------------------------------- the tokenizer


def _remap_post_processor(proc: dict[str, Any] | None, new_id: dict[int, int]) -> None:
    """Rewrite the special-token ids a post-processor holds (in place)."""
    if proc is None:
        return
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for special in proc.get("special_tokens", {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], new_id[proc[key][1]]]
    elif kind == "Sequence":
        for inner in proc.get("processors", []):
            _remap_post_processor(inner, new_id)
    elif kind != "ByteLevel":  # ByteLevel holds no ids
        raise ValueError(f"post-processor {kind} is not supported")


def trimmed_tokenizer(tokenizer: Any, keep: list[int]) -> Any:
    """A WordPiece fast tokenizer over only the pieces ``keep`` (ascending old ids), renumbered
    0..len(keep)-1 in that order; loaded back through AutoTokenizer. ValueError when the
    tokenizer is not WordPiece or refers to an id that is not kept."""
    from transformers import AutoTokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ValueError(f"only WordPiece tokenizers can be trimmed; this one is {model.get('type')}")
    new_id = {old: new for new, old in enumerate(keep)}
    piece = {i: p for p, i in model["vocab"].items()}
    missing = [i for i in keep if i not in piece]
    if missing:
        raise ValueError(f"id {missing[0]} is an added token outside the WordPiece vocabulary")
    model["vocab"] = {piece[i]: new_id[i] for i in keep}
    for added in spec.get("added_tokens") or []:
        if added["id"] not in new_id:
            raise ValueError(f"added token {added['content']!r} is not kept")
        added["id"] = new_id[added["id"]]
    _remap_post_processor(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory(prefix="lepton-trim-") as tmp:
        tokenizer.save_pretrained(tmp)  # the config files (class, special tokens, lower-casing)
        for stale in ("vocab.txt", "tokenizer.json"):
            (Path(tmp) / stale).unlink(missing_ok=True)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        new = AutoTokenizer.from_pretrained(tmp)
    if len(new) != len(keep):
        raise ValueError(f"the rebuilt tokenizer has {len(new)} tokens, not {len(keep)}")
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        old_token = getattr(tokenizer, name, None)
        if old_token is None:
            continue
        if new.convert_tokens_to_ids(old_token) != new_id[tokenizer.convert_tokens_to_ids(old_token)]:
            raise ValueError(f"{name} {old_token!r} did not keep its place")
    return new


# ------------------------------------------------------------------- the model


def _swap_parameter(model: nn.Module, old: nn.Parameter, new: nn.Parameter) -> None:
    """Point every module that holds ``old`` (ties share one Parameter) at ``new``."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is old:
                module._parameters[name] = new


def trim_model(model: nn.Module, keep: list[int], pad_id: int | None) -> None:
    """Keep only the embedding rows ``keep`` (in order), in the input embeddings and in an output
    layer of vocabulary size (tied or not, bias included); update the config to match."""
    from lepton.models.int8_embedding import Int8Embedding

    index = torch.tensor(keep, dtype=torch.long)
    old_in = model.get_input_embeddings()
    rows = old_in.num_embeddings
    if keep[-1] >= rows:
        raise ValueError(f"token id {keep[-1]} has no embedding row (the table has {rows})")
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = out is not None and isinstance(old_in, nn.Embedding) and out.weight is old_in.weight
    if isinstance(old_in, Int8Embedding):
        new_in: nn.Module = old_in.select(index, pad_id)
    else:
        weight = old_in.weight.detach().index_select(0, index.to(old_in.weight.device)).clone()
        new_in = nn.Embedding(len(keep), weight.shape[1], padding_idx=pad_id,
                              device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new_in.weight.copy_(weight)
        new_in.weight.requires_grad_(old_in.weight.requires_grad)
    model.set_input_embeddings(new_in)
    if out is not None and isinstance(out, nn.Linear) and out.out_features == rows:
        if tied:
            _swap_parameter(model, out.weight, new_in.weight)
        else:
            new_w = nn.Parameter(out.weight.detach().index_select(0, index.to(out.weight.device)).clone(),
                                 requires_grad=out.weight.requires_grad)
            _swap_parameter(model, out.weight, new_w)
        if out.bias is not None:
            new_b = nn.Parameter(out.bias.detach().index_select(0, index.to(out.bias.device)).clone(),
                                 requires_grad=out.bias.requires_grad)
            _swap_parameter(model, out.bias, new_b)
        out.out_features = len(keep)
    model.config.vocab_size = len(keep)
    if getattr(model.config, "pad_token_id", None) is not None and pad_id is not None:
        model.config.pad_token_id = pad_id


# ------------------------------------------------------------------- what changed


def _word_pieces(enc: Any, i: int) -> list[tuple[int, ...]]:
    words: list[list[int]] = []
    previous = None
    for token, word in zip(enc["input_ids"][i], enc.word_ids(i)):
        if word is None or word != previous:
            words.append([])
        words[-1].append(token)
        previous = word
    return [tuple(w) for w in words]


def changed_tokens(old_tok: Any, new_tok: Any, split: Any) -> dict[str, Any]:
    """How many of ``split``'s tokens (old tokenizer) sit in words the new tokenizer splits
    differently (compared piece by piece, as strings), and how many words became [UNK]."""
    words = split.kind == "tokens"
    unk_old, unk_new = old_tok.unk_token, new_tok.unk_token
    total = changed = n_words = words_changed = new_unknown = 0
    for texts in _texts(split):
        a, b = _tokenize(old_tok, texts, words), _tokenize(new_tok, texts, words)
        for i in range(len(texts)):
            wa = [tuple(old_tok.convert_ids_to_tokens(list(w))) for w in _word_pieces(a, i)]
            wb = [tuple(new_tok.convert_ids_to_tokens(list(w))) for w in _word_pieces(b, i)]
            total += sum(len(w) for w in wa)
            n_words += len(wa)
            if len(wa) != len(wb):  # cannot happen (same normalizer and pre-tokenizer); count all
                changed += sum(len(w) for w in wa)
                words_changed += len(wa)
                continue
            for x, y in zip(wa, wb):
                if x != y:
                    changed += len(x)
                    words_changed += 1
                    new_unknown += int(unk_new in y and unk_old not in x)
    return {"tokens": total, "tokens_changed": changed,
            "share_changed": round(changed / total, 6) if total else 0.0,
            "words": n_words, "words_changed": words_changed, "words_now_unknown": new_unknown}


# ------------------------------------------------------------------- the stage


def _kept_ids(bundle: ModelBundle, config: TrimVocabConfig, ctx: RunContext,
              where: str) -> tuple[list[int], dict[str, Any]]:
    """(kept ids ascending, what each source contributed)."""
    from lepton.data import load_split

    tok = bundle.tokenizer
    counts: collections.Counter[int] = collections.Counter()
    for name in config.splits:
        counts += count_pieces(tok, ctx.split(name))
    keep = {i for i, c in counts.items() if c >= config.min_count}
    info: dict[str, Any] = {"from_data": len(keep), "splits": config.splits, "min_count": config.min_count}
    special = set(tok.all_special_ids) | {int(i) for i in tok.added_tokens_decoder}
    keep |= special
    vocab = tok.get_vocab()
    if config.keep_characters != "none":
        seen = None
        if config.keep_characters == "seen":
            seen = set().union(*(seen_characters(tok, ctx.split(name)) for name in config.splits))
        prefix = json.loads(tok.backend_tokenizer.to_str())["model"].get("continuing_subword_prefix") or "##"
        chars = character_ids(vocab, prefix, seen)
        info["characters"] = len(chars)
        keep |= chars
    if config.reference is not None:
        if ctx.columns is None:
            raise StageError(f"{where}.reference: the run does not say which columns hold the text")
        ref = load_split(config.reference, ctx.columns, name=f"{where}.reference", kind=bundle.task.split_kind)
        ref_counts = count_pieces(tok, ref)
        top = [i for i, _ in ref_counts.most_common(config.reference_top)]
        info["reference"] = {"path": config.reference.path, "examples": len(ref), "pieces": len(top)}
        keep |= set(top)
    return sorted(keep), info


@register(TrimVocabConfig)
def trim_vocab(bundle: ModelBundle, config: TrimVocabConfig, ctx: RunContext) -> ModelBundle:
    """Trim the tokenizer and the embedding rows to the pieces the data needs."""
    where = f"stages.{ctx.stage_index}"
    if not bundle.runtime_info.trainable:
        raise StageError(f"{where}: trim_vocab works on the PyTorch model; put it before export")
    old_tok = bundle.tokenizer
    keep, info = _kept_ids(bundle, config, ctx, where)
    try:
        new_tok = trimmed_tokenizer(old_tok, keep)
        params_before = sum(p.numel() for p in bundle.model.parameters())
        rows_before = bundle.model.get_input_embeddings().num_embeddings
        trim_model(bundle.model, keep, new_tok.pad_token_id)
    except ValueError as err:
        raise StageError(f"{where}: cannot trim the vocabulary: {err}") from None
    for head in bundle.heads.values():  # extra heads share the encoder; their configs follow
        if head.model is not None:
            head.model.config.vocab_size = len(keep)
    bundle.tokenizer = new_tok
    summary: dict[str, Any] = {
        "vocab_before": len(old_tok), "vocab_after": len(keep), "embedding_rows_before": rows_before,
        "kept": info, "params_before": params_before,
        "params_after": sum(p.numel() for p in bundle.model.parameters())}
    report = ctx.splits.get(config.report_split)
    if report is not None and len(report) and report.kind == bundle.task.split_kind:
        summary["changed"] = {"split": config.report_split, **changed_tokens(old_tok, new_tok, report)}
    ctx.stage_summary = summary
    log.info("trim_vocab: %d -> %d pieces%s", len(old_tok), len(keep),
             f", {100 * summary['changed']['share_changed']:.2f}% of {config.report_split} tokens split "
             "differently" if "changed" in summary else "")
    return bundle
