"""``language_modeling``: a text column scored and trained with the causal-LM loss. Metrics:
bits per byte (headline: comparable across tokenizers, so across a vocabulary change) and
token-level perplexity, each with a bootstrap CI over documents; variants compared by a paired
bootstrap over the same documents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lepton.tasks.generative_kind import GenerativeKind, paired_of
from lepton.tasks.kind import MetricInfo, register_task_kind

if TYPE_CHECKING:
    from lepton.data import Split
    from lepton.tasks.common import TaskConfig, TaskSpec


def _losses(pred: list[list[float]]) -> Any:
    from lepton.tasks.text_metrics import DocumentLoss

    return DocumentLoss(nll=[p[0] for p in pred], tokens=[int(p[1]) for p in pred], bytes=[int(p[2]) for p in pred])


class LanguageModeling(GenerativeKind):
    name = "language_modeling"
    title = "language modelling"
    split_kind = "sequence"
    card_what = "causal language"
    example_input = "The quarterly report shows"
    metrics = (MetricInfo("bits_per_byte", higher_is_better=False, upper=None),
               MetricInfo("perplexity", higher_is_better=False, upper=None),
               MetricInfo("loss", higher_is_better=False, upper=None))

    def default_columns(self) -> tuple[Any, Any]:
        return "text", None

    def check_config(self, config: TaskConfig) -> None:
        super().check_config(config)
        if config.label is not None or config.prompt_template or config.target is not None:
            raise ValueError("language_modeling reads one text column: label, target and "
                             "prompt_template do not apply")

    def build_spec(self, config: TaskConfig, train: Split | None) -> TaskSpec:
        from lepton.tasks.common import TaskSpec

        return TaskSpec(kind=self.name, max_length=config.max_length, options={
            "generation": config.generation.model_dump() if config.generation else {}})

    def encode(self, split: Split, task: TaskSpec, tokenizer: Any) -> Any:
        from lepton.tasks.prompt_encoding import encode_documents

        return encode_documents(tokenizer, list(split.texts), max_length=task.max_length)[0]

    def quality(self, task: TaskSpec, gold: Any, pred: Any, *, resamples: int, seed: int) -> Any:
        from lepton.tasks.quality import Quality
        from lepton.tasks.text_metrics import lm_scores

        metrics = lm_scores(_losses(pred), resamples=resamples, seed=seed)
        return Quality(task=self.name, headline=self.headline, metrics=metrics, per_class=[], labels=[],
                       confusion=None, bootstrap={"resamples": resamples, "seed": seed, "confidence": 0.95})

    def measure_quality(self, variant: Any, split: Split, config: Any, seed: int) -> tuple[Any, Any, Any]:
        from lepton.tasks.scoring import document_losses

        bundle = variant.bundle
        losses = document_losses(bundle.model, bundle.tokenizer, list(split.texts),
                                 max_length=bundle.task.max_length)
        variant.predictions = [[n, t, b] for n, t, b in zip(losses.nll, losses.tokens, losses.bytes)]
        return self.quality(bundle.task, None, variant.predictions, resamples=config.bootstrap, seed=seed), None, None

    def paired(self, task: TaskSpec, gold: Any, base: Any, other: Any, *, resamples: int, seed: int) -> Any:
        from lepton.tasks.text_metrics import paired_lm

        test = paired_lm(_losses(base), _losses(other), resamples=resamples, seed=seed)
        return paired_of("bits_per_byte", test["bits_per_byte"])

    def training_data(self, bundle: Any, ctx: Any) -> tuple[Any, Any]:
        train = self.encode(ctx.split("train"), bundle.task, bundle.tokenizer)
        dev_split = ctx.selection()
        return train, (self.encode(dev_split, bundle.task, bundle.tokenizer) if dev_split is not None else None)


register_task_kind(LanguageModeling())
