"""What the stages' implementations for generative models (decoder-only and encoder-decoder)
share: their training data, real prompts from the recipe's data, the greedy agreement of two models
on them, a new bundle around a replaced model, and the generation settings a trained model keeps."""

from __future__ import annotations

from typing import Any

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext

DOC_PROMPT_CHARS = 200  # language modelling: a document's opening as the prompt


def training_data(bundle: ModelBundle, ctx: RunContext) -> tuple[Any, Any]:
    """data.train and data.dev (None when absent) encoded as the task kind encodes them."""
    from lepton.tasks import kind_of

    kind = kind_of(bundle.task)
    if hasattr(kind, "training_data"):  # generative kinds: the layout depends on the model (seq2seq or causal)
        return kind.training_data(bundle, ctx)
    train = kind.encode(ctx.split("train"), bundle.task, bundle.tokenizer)
    dev_split = ctx.selection()
    dev = kind.encode(dev_split, bundle.task, bundle.tokenizer) if dev_split is not None else None
    return train, dev


def record_generation(bundle: ModelBundle) -> None:
    """The recipe's generation settings as the model's generation_config.json."""
    from lepton.tasks.generate import pad_ids
    from lepton.tasks.generative_kind import settings_of

    eos, pad = pad_ids(bundle.tokenizer)
    bundle.model.generation_config = settings_of(bundle.task).to_generation_config(
        eos_token_id=eos, pad_token_id=pad, base=bundle.model.generation_config)


def real_prompts(bundle: ModelBundle, ctx: RunContext, split_name: str, items: int) -> tuple[list[str], str]:
    """The first ``items`` inputs of ``split_name`` (or the next split there is) as the model is
    prompted with them (templated, chat-rendered), and the split's name."""
    from lepton.tasks import kind_of

    order = [split_name] + [s for s in ("dev", "test", "train") if s != split_name]
    name = next((s for s in order if s in ctx.splits and len(ctx.splits[s]) > 0), None)
    if name is None:
        raise StageError(f"stages.{ctx.stage_index}: this check needs real prompts; add data.dev "
                         "(or data.train) to the recipe")
    kind = kind_of(bundle.task)
    texts = [str(t) for t in ctx.splits[name].texts[:items]]
    if kind.split_kind != "pairs":  # documents: their openings
        texts = [t[:DOC_PROMPT_CHARS] for t in texts]
    return [kind.render(bundle.tokenizer, bundle.task, t) for t in texts], name


def rebundle(bundle: ModelBundle, model: Any, runtime: str | None = None) -> ModelBundle:
    return ModelBundle(model=model, tokenizer=bundle.tokenizer, task=bundle.task,
                       runtime=runtime or bundle.runtime, source=bundle.source, history=bundle.history,
                       train_hooks=bundle.train_hooks, heads=bundle.heads, main_task=bundle.main_task)


def agreement(reference: Any, candidate: Any, tokenizer: Any, prompts: list[str], *,
              new_tokens: int = 16, max_prompt_tokens: int | None = None) -> dict[str, Any]:
    """Greedy outputs of two models (PyTorch or exported) on ``prompts``: the share that are
    identical and the mean share of characters before the first difference."""
    from lepton.tasks.generate import generate
    from lepton.tasks.generation_settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens, batch_size=16)
    a = generate(reference, tokenizer, prompts, settings, max_prompt_tokens=max_prompt_tokens)
    b = generate(candidate, tokenizer, prompts, settings, max_prompt_tokens=max_prompt_tokens)
    same = sum(x == y for x, y in zip(a, b))
    prefix = [_common_prefix(x, y) / max(len(x), len(y), 1) for x, y in zip(a, b)]
    return {"prompts": len(prompts), "new_tokens": new_tokens, "identical": same,
            "identical_share": round(same / max(len(prompts), 1), 4),
            "mean_prefix_share": round(sum(prefix) / max(len(prefix), 1), 4)}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def require_torch_decoder(bundle: ModelBundle, ctx: RunContext, stage: str) -> Any:
    """The bundle's PyTorch decoder-only model, or one line saying why this stage cannot take it
    (the registry dispatches only decoder-only models here)."""
    where = f"stages.{ctx.stage_index}"
    if not bundle.runtime_info.trainable:
        raise StageError(f"{where}: {stage} needs the PyTorch model; this one already runs on {bundle.runtime} "
                         f"(put {stage} before export)")
    return bundle.model


SCORED_EXAMPLES = 64  # importance measures read at most this many training examples


def scoring_batches(bundle: ModelBundle, ctx: RunContext, batches: int, batch_size: int,
                    where: str) -> tuple[list[tuple[Any, Any]], int]:
    """Right-padded (ids, mask) batches of the first training examples (prompt and target) for an
    importance measure, and how many examples they hold."""
    from lepton.tasks.prompt_encoding import collate, pad_id_of

    train, _ = training_data(bundle, ctx)
    n = min(len(train), SCORED_EXAMPLES, batches * batch_size)
    if n == 0:
        raise StageError(f"{where}: the importance measure needs training examples in data.train")
    pad = pad_id_of(bundle.tokenizer)
    out = []
    for start in range(0, n, batch_size):
        rows = train.input_ids[start:min(n, start + batch_size)]
        batch = collate(rows, rows, pad, seq2seq=False)
        out.append((batch["input_ids"], batch["attention_mask"]))
    return out, n
