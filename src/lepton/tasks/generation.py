"""``generation``: text from a prompt (a column or a ``prompt_template`` over columns; the
tokenizer's chat template with ``chat: true``) to a target, with a decoder-only or an
encoder-decoder model (chosen by the model). Loss on the target tokens only. Metrics: BLEU and
chrF (sacrebleu, signature in the report), exact match and target perplexity, with bootstrap CIs
over sentences; variants compared by paired bootstrap resampling of BLEU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lepton.tasks.generative_kind import GenerativeKind, paired_of, settings_of
from lepton.tasks.kind import MetricInfo, register_task_kind

if TYPE_CHECKING:
    from lepton.data import Split
    from lepton.tasks.common import TaskConfig, TaskSpec


class Generation(GenerativeKind):
    name = "generation"
    title = "text generation"
    split_kind = "pairs"
    card_what = "text generation (prompt to target)"
    metrics = (MetricInfo("bleu", upper=100.0), MetricInfo("chrf", upper=100.0), MetricInfo("exact_match"),
               MetricInfo("target_perplexity", higher_is_better=False, upper=None),
               MetricInfo("loss", higher_is_better=False, upper=None))

    def default_columns(self) -> tuple[Any, Any]:
        return "prompt", "target"

    def build_spec(self, config: TaskConfig, train: Split | None) -> TaskSpec:
        from lepton.tasks.common import TaskSpec

        return TaskSpec(kind=self.name, max_length=config.max_length, options={
            "prompt_template": config.prompt_template, "chat": config.chat, "system": config.system,
            "max_target_length": config.max_target_length,
            "generation": config.generation.model_dump() if config.generation else {}})

    def render(self, tokenizer: Any, task: TaskSpec, prompt: str) -> str:
        from lepton.tasks.prompt_encoding import render_prompt

        return render_prompt(tokenizer, prompt, chat=bool(task.options.get("chat")),
                             system=task.options.get("system"))

    def encode_for(self, model: Any, split: Split, task: TaskSpec, tokenizer: Any) -> Any:
        from lepton.tasks.generate import is_encoder_decoder
        from lepton.tasks.prompt_encoding import encode_causal, encode_seq2seq

        limits = {"max_prompt_tokens": task.max_length,
                  "max_target_tokens": int(task.options.get("max_target_length") or 128)}
        if model is not None and is_encoder_decoder(model):
            return encode_seq2seq(tokenizer, list(split.texts), list(split.labels), **limits)
        prompts = [self.render(tokenizer, task, p) for p in split.texts]
        return encode_causal(tokenizer, prompts, list(split.labels), chat=bool(task.options.get("chat")), **limits)

    def encode(self, split: Split, task: TaskSpec, tokenizer: Any) -> Any:
        # Without the model at hand the decoder-only layout is assumed (used for notes only).
        return self.encode_for(None, split, task, tokenizer)

    def training_data(self, bundle: Any, ctx: Any) -> tuple[Any, Any]:
        train = self.encode_for(bundle.model, ctx.split("train"), bundle.task, bundle.tokenizer)
        dev_split = ctx.selection()
        dev = (self.encode_for(bundle.model, dev_split, bundle.task, bundle.tokenizer)
               if dev_split is not None else None)
        return train, dev

    def quality(self, task: TaskSpec, gold: Any, pred: Any, *, resamples: int, seed: int) -> Any:
        from lepton.tasks.quality import Quality
        from lepton.tasks.text_metrics import text_scores

        scores = text_scores(pred, gold, resamples=resamples, seed=seed)
        return Quality(task=self.name, headline=self.headline, metrics=dict(scores.metrics), per_class=[],
                       labels=[], confusion=None, bootstrap=scores.bootstrap, signatures=scores.signatures)

    def measure_quality(self, variant: Any, split: Split, config: Any, seed: int) -> tuple[Any, Any, Any]:
        from lepton.tasks.generate import generate
        from lepton.tasks.scoring import target_losses
        from lepton.tasks.text_metrics import lm_scores

        bundle, task = variant.bundle, variant.bundle.task
        prompts = [self.render(bundle.tokenizer, task, p) for p in split.texts]
        hyps = generate(bundle.model, bundle.tokenizer, prompts, settings_of(task),
                        max_prompt_tokens=task.max_length)
        variant.predictions = hyps
        quality = self.quality(task, list(split.labels), hyps, resamples=config.bootstrap, seed=seed)
        losses = target_losses(bundle.model, bundle.tokenizer, prompts, list(split.labels),
                               chat=bool(task.options.get("chat")), max_prompt_tokens=task.max_length,
                               max_target_tokens=int(task.options.get("max_target_length") or 128))
        quality.metrics["target_perplexity"] = lm_scores(losses, resamples=config.bootstrap,
                                                         seed=seed)["perplexity"]
        return quality, None, None

    def paired(self, task: TaskSpec, gold: Any, base: Any, other: Any, *, resamples: int, seed: int) -> Any:
        from lepton.tasks.text_metrics import paired_text

        return paired_of("bleu", paired_text(gold, base, other, resamples=resamples, seed=seed)["bleu"])


register_task_kind(Generation())
