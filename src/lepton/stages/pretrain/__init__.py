"""``pretrain``: domain-adaptive masked-language-model pretraining of the encoder on raw text.

The text (``text.path``) is one of:

- ``format: lines``: a text file, one document (or sentence) per line; blank lines are skipped.
- ``format: files``: a folder; every ``*.txt`` file below it is one document.
- ``format: folder``: Lepton's labelled-folder layout, a folder or ``.tar.gz`` (as in ``data:``,
  with ``subdir`` and ``classes``); the labels are ignored. IMDB's training reviews:
  ``{path: aclImdb_train_test.tar.gz, format: folder, subdir: aclImdb/train}``.

Default format: ``folder`` for a ``.tar.gz``/``.tgz``, ``files`` for a folder, else ``lines``.
A seeded ``held_out`` share of the documents is kept aside. Documents are cut into pieces of at
most ``max_length`` tokens (default: the task's), never across documents.

The model trained is a masked-LM model built around the task model's own encoder (shared, not
copied: training updates it in place, the task head is untouched). Its MLM head comes from the
starting checkpoint when that has one, else it is created, its decoder tied to the word
embeddings as BERT does (all-MiniLM-L6-v2 ships without one). Masking is transformers'
``DataCollatorForLanguageModeling``: ``mlm_probability`` (15%) of the tokens, of which 80% become
[MASK], 10% a random token, 10% stay; ``whole_word_mask`` masks all sub-tokens of a word together
(and always with [MASK], as transformers does).

Reported before and after: the **masked-LM loss** on the held-out text with one fixed, seeded
masking, and the **masked-LM perplexity** ``exp(loss)``; and the **pseudo-perplexity** (Salazar
et al. 2020: mask every token in turn) on a small sample of held-out pieces
(``pseudo_perplexity_sample``). With a created head the "before" figures are those of an untrained
head. The next ``finetune`` starts from the adapted encoder.

Training computes the MLM head only at the masked positions (``MaskedPositionsLM``): the head's
vocabulary-sized output layer costs about as much per token as the whole 6-layer MiniLM encoder,
and 85% of the positions carry no loss. The loss is the same (a test checks it against the full
model's); transformers' masked-LM models always score every position, hence this wrapper.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from lepton.core.config import StrictModel
from lepton.core.errors import DataError, StageError
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.base import register
from lepton.stages.training import TrainJob, TrainSettings, train
from lepton.tasks import Encoded, sorted_batches

log = logging.getLogger(__name__)


class TextConfig(StrictModel):
    path: str  # text file, folder, or .tar.gz / .tgz
    format: Literal["lines", "files", "folder"] | None = None
    subdir: str | None = None  # format folder: sub-folder whose child folders are the labels
    classes: list[str] | None = None  # format folder: only these label folders
    encoding: str = "utf-8"
    limit: int | None = Field(default=None, gt=0)  # keep at most this many documents
    seed: int | None = None  # with limit: a seeded random sample

    smoke_caps: ClassVar[dict[str, Any]] = {"limit": 64}
    smoke_defaults: ClassVar[dict[str, Any]] = {"seed": 0}  # a seeded sample: every label turns up


class PretrainConfig(TrainSettings):
    contract_example: ClassVar[dict[str, Any]] = {"text": {"path": "{text}"}, "epochs": 1, "batch_size": 8,
                                                  "pseudo_perplexity_sample": 1}

    kind: Literal["pretrain"] = "pretrain"
    text: TextConfig
    held_out: float = Field(default=0.05, gt=0, lt=1)  # share of the documents kept for scoring
    held_out_max: int = Field(default=1000, ge=1)  # score at most this many held-out pieces
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    whole_word_mask: bool = False
    max_length: int | None = Field(default=None, ge=8, le=8192)  # default: the task's max_length
    pseudo_perplexity_sample: int = Field(default=4, ge=0)  # held-out pieces; 0: skip it

    smoke_caps: ClassVar[dict[str, Any]] = {**TrainSettings.smoke_caps, "held_out_max": 16,
                                            "pseudo_perplexity_sample": 1}

    @field_validator("metric")
    @classmethod
    def _loss_only(cls, value: str | None) -> str | None:
        if value not in (None, "loss"):
            raise ValueError("pretrain selects on the held-out masked-LM loss; metric can only be 'loss'")
        return value


# ---------------------------------------------------------------------------------------------
# Text


def read_documents(config: TextConfig, where: str) -> list[str]:
    path = Path(config.path).expanduser()
    if not path.exists():
        raise DataError(f"{where}.path: not found: {path}")
    fmt = config.format
    if fmt is None:
        fmt = ("folder" if path.name.lower().endswith((".tar.gz", ".tgz"))
               else "files" if path.is_dir() else "lines")
    if fmt != "folder" and (config.subdir is not None or config.classes is not None):
        raise DataError(f"{where}: subdir and classes apply to format folder only, not {fmt}")
    if fmt == "folder":
        from lepton.data import Columns, DataSplitConfig, load_split

        split = load_split(DataSplitConfig(path=str(path), format="folder", subdir=config.subdir,
                                           classes=config.classes, encoding=config.encoding,
                                           limit=config.limit, seed=config.seed),
                           Columns(text="text"), name=where.replace("stages.", "stage-"))
        return list(split.texts)  # type: ignore[arg-type]
    if fmt == "lines":
        if path.is_dir():
            raise DataError(f"{where}.path: {path} is a folder; format lines reads one text file")
        try:
            with open(path, encoding=config.encoding, errors="replace") as fh:
                docs = [line.strip() for line in fh]
        except OSError as err:
            raise DataError(f"{where}.path: cannot read {path}: {err.strerror}") from None
    else:
        if not path.is_dir():
            raise DataError(f"{where}.path: format files needs a folder of .txt files, not {path}")
        docs = [f.read_text(encoding=config.encoding, errors="replace").strip()
                for f in sorted(path.rglob("*.txt")) if f.is_file()]
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(f"{where}.path: no text in {path}")
    if config.limit is not None and len(docs) > config.limit:
        if config.seed is None:
            docs = docs[:config.limit]
        else:
            keep = sorted(random.Random(config.seed).sample(range(len(docs)), config.limit))
            docs = [docs[i] for i in keep]
    return docs


class Pieces:
    """Documents cut into model inputs: token ids with special tokens, and what masking needs."""

    def __init__(self, docs: list[str], tokenizer: Any, max_length: int) -> None:
        # A fast tokenizer's overflow: each piece of a long document comes back with its own
        # special tokens, and offsets into the document (whole-word masking finds words by them).
        enc = tokenizer(docs, truncation=True, max_length=max_length, return_overflowing_tokens=True,
                        return_special_tokens_mask=True, return_offsets_mapping=True) if docs else {}
        self.input_ids: list[list[int]] = list(enc.get("input_ids", []))
        self.special: list[list[int]] = list(enc.get("special_tokens_mask", []))
        self.offsets: list[list[tuple[int, int]]] = [[tuple(o) for o in offs]
                                                     for offs in enc.get("offset_mapping", [])]
        self.encoded = Encoded(self.input_ids, None, None)

    def __len__(self) -> int:
        return len(self.input_ids)


def _collator(tokenizer: Any, config: PretrainConfig) -> Any:
    from transformers import DataCollatorForLanguageModeling

    if tokenizer.mask_token is None:
        raise StageError("pretrain: the tokenizer has no mask token; masked-LM pretraining needs one")
    replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if config.whole_word_mask else {}
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mlm_probability,
                                           whole_word_mask=config.whole_word_mask, **replace)


def masked_batch(pieces: Pieces, idx: list[int], collator: Any, pad: int,
                 whole_word: bool) -> dict[str, torch.Tensor]:
    """Pad the pieces and mask them (the collator's generator, else the global torch RNG)."""
    width = max(len(pieces.input_ids[i]) for i in idx)
    n = len(idx)
    ids = torch.full((n, width), pad, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    special = torch.ones((n, width), dtype=torch.long)
    offsets = torch.zeros((n, width, 2), dtype=torch.long)
    for row, i in enumerate(idx):
        m = len(pieces.input_ids[i])
        ids[row, :m] = torch.tensor(pieces.input_ids[i])
        attention[row, :m] = 1
        special[row, :m] = torch.tensor(pieces.special[i])
        offsets[row, :m] = torch.tensor(pieces.offsets[i])
    inputs, labels = collator.torch_mask_tokens(ids, special_tokens_mask=special,
                                                offset_mapping=offsets if whole_word else None)
    return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


# ---------------------------------------------------------------------------------------------
# The masked-LM model around the task model's encoder


def _head_from_checkpoint(mlm: Any, source: str) -> str | None:
    """Load the MLM head from the starting checkpoint when it has one; where it came from."""
    from safetensors import safe_open

    from lepton.models import resolve_model

    try:
        folder = Path(resolve_model(source))
    except Exception:  # noqa: BLE001 - a hub id or a vanished folder: no head to reuse
        return None
    weights = folder / "model.safetensors"
    if not source or not weights.is_file():
        return None
    prefix = mlm.base_model_prefix + "."
    head = {k: v for k, v in mlm.state_dict().items() if not k.startswith(prefix)}
    tied = set(getattr(mlm, "all_tied_weights_keys", {}) or {})
    wanted = {k for k in head if k not in tied}
    with safe_open(str(weights), framework="pt") as fh:
        keys = set(fh.keys())
        if not wanted or not wanted <= keys:
            return None
        loaded = {k: fh.get_tensor(k) for k in wanted}
    if any(loaded[k].shape != head[k].shape for k in wanted):
        return None
    mlm.load_state_dict(loaded, strict=False)
    return str(folder)


def masked_lm_model(bundle: ModelBundle, where: str) -> tuple[Any, str]:
    """A masked-LM model whose encoder *is* the task model's; (model, "created" | "loaded from ...")."""
    from transformers import AutoModelForMaskedLM

    task_model = bundle.model
    prefix = getattr(task_model, "base_model_prefix", "")
    encoder = getattr(task_model, prefix, None)
    if encoder is None:
        raise StageError(f"{where}: {type(task_model).__name__} has no base encoder to pretrain")
    try:
        mlm = AutoModelForMaskedLM.from_config(copy.deepcopy(task_model.config))
    except ValueError as err:
        raise StageError(f"{where}: transformers has no masked-LM model for "
                         f"{task_model.config.model_type} ({str(err).splitlines()[0]})") from None
    setattr(mlm, mlm.base_model_prefix, encoder)  # shared: the task model's encoder trains in place
    mlm.tie_weights()
    loaded = _head_from_checkpoint(mlm, bundle.source)
    mlm.tie_weights()
    return mlm, f"loaded from {loaded}" if loaded else "created"


# Where a transformers masked-LM model keeps its head (applied position by position).
_MLM_HEADS = ("cls", "lm_head")


class MaskedPositionsLM(torch.nn.Module):
    """A masked-LM model whose forward runs the head only where ``labels`` != -100.

    Training calls the wrapper (so a DistributedDataParallel wrapper around it sees every forward);
    the weights are the wrapped model's own (``mlm.*`` in its state dict).
    """

    def __init__(self, mlm: Any) -> None:
        super().__init__()
        self.mlm = mlm
        self.head_name = next((h for h in _MLM_HEADS if hasattr(mlm, h)), None)

    def forward(self, labels: torch.Tensor, **inputs: Any) -> Any:
        from transformers.modeling_outputs import MaskedLMOutput

        if self.head_name is None:  # an architecture whose head Lepton does not know: score all
            return self.mlm(**inputs, labels=labels)
        encoder = getattr(self.mlm, self.mlm.base_model_prefix)
        hidden = encoder(**inputs).last_hidden_state
        chosen = labels != -100
        logits = getattr(self.mlm, self.head_name)(hidden[chosen])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[chosen])
        return MaskedLMOutput(loss=loss)


def masked_lm_loss(model: Any, batches: list[dict[str, torch.Tensor]], device: str) -> dict[str, float]:
    """Mean loss over every masked token of pre-masked batches, and its exp."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            n = int((batch["labels"] != -100).sum())
            if n == 0:
                continue
            out = model(**{k: v.to(device) for k, v in batch.items()})
            total += float(out.loss) * n
            tokens += n
    model.train(was_training)
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "masked_tokens": tokens}


def pseudo_perplexity(model: Any, pieces: Pieces, indices: list[int], mask_id: int, device: str,
                      batch_size: int = 64) -> dict[str, float]:
    """exp of the mean negative log-likelihood of each token with it alone masked (Salazar et al.)."""
    model.eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in indices:
            ids = torch.tensor(pieces.input_ids[i])
            positions = [p for p, s in enumerate(pieces.special[i]) if not s]
            for start in range(0, len(positions), batch_size):
                chunk = positions[start:start + batch_size]
                inputs = ids.repeat(len(chunk), 1)
                rows = torch.arange(len(chunk))
                inputs[rows, torch.tensor(chunk)] = mask_id
                logits = model(input_ids=inputs.to(device),
                               attention_mask=torch.ones_like(inputs).to(device)).logits
                logp = torch.log_softmax(logits[rows, torch.tensor(chunk)].float(), dim=-1)
                nll -= float(logp[rows, ids[chunk]].sum())
                count += len(chunk)
    mean = nll / max(count, 1)
    return {"pseudo_perplexity": math.exp(min(mean, 50.0)), "tokens": count}


# ---------------------------------------------------------------------------------------------
# The stage


def read_stage_documents(config: PretrainConfig, ctx: RunContext) -> list[str]:
    """The stage's documents (``text``), at least two: some are held out for scoring."""
    where = f"stages.{ctx.stage_index}"
    docs = read_documents(config.text, f"{where}.text")
    if len(docs) < 2:
        raise DataError(f"{where}.text: {len(docs)} document; pretraining needs at least 2 "
                        "(some are held out for scoring)")
    return docs


def _split_documents(docs: list[str], config: PretrainConfig, seed: int) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents), a seeded share held out, at least one each."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_held = min(len(docs) - 1, max(1, round(config.held_out * len(docs))))
    return [docs[i] for i in sorted(order[n_held:])], [docs[i] for i in sorted(order[:n_held])]


def _held_out_batches(held: Pieces, tokenizer: Any, config: PretrainConfig, seed: int,
                      pad: int) -> tuple[list[Any], set[int]]:
    """The held-out pieces scored (at most ``held_out_max``) as masked batches, and their indices.
    One fixed masking from its own seeded generator (the global RNG, which training's masking
    uses, is left alone)."""
    scoring = _collator(tokenizer, config)
    scoring.generator = torch.Generator().manual_seed(seed + 1)
    held_idx = sorted_batches(held.encoded.lengths, 32)
    kept = set(sorted(range(len(held)))[:config.held_out_max])
    batches = [masked_batch(held, [i for i in idx if i in kept], scoring, pad, config.whole_word_mask)
               for idx in held_idx if any(i in kept for i in idx)]
    return batches, kept


def _pseudo_perplexity_summary(before: dict[str, float], after: dict[str, float], pieces: int) -> dict[str, Any]:
    return {"measure": f"each token masked in turn, {pieces} held-out pieces",
            "before": round(before["pseudo_perplexity"], 4),
            "after": round(after["pseudo_perplexity"], 4), "tokens": after["tokens"]}


@register(PretrainConfig)
def pretrain(bundle: ModelBundle, config: PretrainConfig, ctx: RunContext) -> ModelBundle:
    """Continue pretraining the encoder with masked-LM on raw text; the task head is untouched."""
    where = f"stages.{ctx.stage_index}"
    docs = read_stage_documents(config, ctx)
    train_docs, held_docs = _split_documents(docs, config, ctx.seed)
    tokenizer = bundle.tokenizer
    max_length = config.max_length or bundle.task.max_length
    train_pieces = Pieces(train_docs, tokenizer, max_length)
    held = Pieces(held_docs, tokenizer, max_length)
    pad = tokenizer.pad_token_id or 0

    mlm, head = masked_lm_model(bundle, where)
    mlm.to(ctx.device)
    held_batches, kept = _held_out_batches(held, tokenizer, config, ctx.seed, pad)
    sample = list(range(min(config.pseudo_perplexity_sample, len(held))))
    mask_id = tokenizer.mask_token_id

    before = masked_lm_loss(mlm, held_batches, ctx.device)
    pppl_before = pseudo_perplexity(mlm, held, sample, mask_id, ctx.device) if sample else None
    log.info("pretrain: held-out masked-LM loss %.4f (perplexity %.2f) before, head %s",
             before["loss"], before["perplexity"], head)

    training = _collator(tokenizer, config)  # no generator: the checkpointed global torch RNG
    summary = train(bundle, config, ctx, TrainJob(
        data=train_pieces.encoded, model=MaskedPositionsLM(mlm),
        batch_fn=lambda idx: masked_batch(train_pieces, idx, training, pad, config.whole_word_mask),
        evaluate=lambda: masked_lm_loss(mlm, held_batches, ctx.device), metric="loss", label="pretrain"))
    after = masked_lm_loss(mlm, held_batches, ctx.device)
    pppl_after = pseudo_perplexity(mlm, held, sample, mask_id, ctx.device) if sample else None
    log.info("pretrain: held-out masked-LM loss %.4f -> %.4f (perplexity %.2f -> %.2f)",
             before["loss"], after["loss"], before["perplexity"], after["perplexity"])
    bundle.model.eval()
    summary.update({
        "mlm_head": head,
        "documents": {"train": len(train_docs), "held_out": len(held_docs)},
        "pieces": {"train": len(train_pieces), "held_out_scored": len(kept),
                   "max_length": max_length},
        "train_tokens": sum(train_pieces.encoded.lengths),
        "masking": {"mlm_probability": config.mlm_probability, "whole_word": config.whole_word_mask},
        "masked_lm": {
            "measure": "mean loss over masked held-out tokens, one fixed seeded masking; "
                       "perplexity = exp(loss) (masked-LM perplexity)",
            "before": {k: round(v, 6) for k, v in before.items()},
            "after": {k: round(v, 6) for k, v in after.items()},
        },
    })
    if pppl_before is not None and pppl_after is not None:
        summary["pseudo_perplexity"] = _pseudo_perplexity_summary(pppl_before, pppl_after, len(sample))
    ctx.stage_summary = summary
    return bundle

# Registered on import: the implementation for generative models.
from lepton.stages.pretrain import decoder as _decoder  # noqa: E402, F401
