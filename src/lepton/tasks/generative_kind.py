"""What the two generative task kinds (``language_modeling``, ``generation``) share: the model
class chosen by the model (decoder-only or encoder-decoder), training through
``generative.training``, the speed scenarios, served generation and the model-card note.

Each kind is one module under ``lepton/tasks/`` with one registration; this base keeps them short.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from lepton.core.errors import LeptonError, StageError
from lepton.tasks.kind import Paired, TaskKind

if TYPE_CHECKING:
    from lepton.data import Split
    from lepton.tasks.common import TaskConfig, TaskSpec

log = logging.getLogger(__name__)


class GeneratedText(BaseModel):
    generated_text: str = Field(description="the model's output for the prompt")


class AutoGenerative:
    """``from_pretrained`` that picks AutoModelForCausalLM or AutoModelForSeq2SeqLM from the
    model's config, and refuses a model with neither head (one line)."""

    @staticmethod
    def from_pretrained(location: Any, **kwargs: Any) -> Any:
        from lepton.models.decoder import architecture_of, auto_class

        arch = architecture_of(str(location), trust_remote_code=kwargs.get("trust_remote_code", False))
        return auto_class(arch).from_pretrained(location, **kwargs)

    @staticmethod
    def from_config(config: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        return auto.from_config(config, **kwargs)


def settings_of(task: TaskSpec) -> Any:
    from lepton.tasks.generation_settings import GenerationSettings

    return GenerationSettings.model_validate(task.options.get("generation") or {})


def paired_of(metric: str, test: dict) -> Paired:
    return Paired(metric=metric, delta=test["delta"], ci95_low=test["ci95_low"], ci95_high=test["ci95_high"],
                  p_bootstrap=test["p_bootstrap"], significant=test["significant"], p_mcnemar=None)


class GenerativeKind(TaskKind):
    uses_labels = False
    labels_per_text = False
    @property
    def supported_stages(self) -> tuple[str, ...]:  # type: ignore[override]
        """The training stages (their hooks below) and those with a decoder handler."""
        from lepton.stages.decoder_dispatch import stage_kinds

        return ("finetune", "pretrain", *stage_kinds())

    def stage_handler(self, config: Any) -> Any:
        from lepton.stages.decoder_dispatch import handler_of

        return handler_of(config)

    def stage_contract(self, config_cls: Any) -> Any:
        from lepton.stages.decoder_dispatch import contract_of

        return contract_of(config_cls)
    pipeline_tag = "text-generation"
    hub_task_name = "Text Generation"
    example_input = "Translate English to German: A dog runs on the beach."

    def auto_model(self) -> Any:
        return AutoGenerative

    def check_config(self, config: TaskConfig) -> None:
        if config.text_pair is not None or config.labels is not None:
            raise ValueError(f"text_pair and labels do not apply to {self.name}")

    def transfer_labels(self, enc: Any) -> list[Any]:
        raise StageError(f"{self.name}: distillation's transfer text is not supported for generative models")

    def notes(self, enc: Any) -> list[str]:
        trunc = getattr(enc, "truncation", None)
        if trunc is None or not (trunc.prompts or trunc.targets or trunc.documents):
            return []
        return [f"length limits: {trunc.describe()}"]

    # ------------------------------------------------------------------ efficiency

    def measure_efficiency(self, variants: list[Any], split: Split, config: Any, *, memory: bool) -> list[Any]:
        from lepton.evaluation.scorecard import Efficiency, LatencyStats
        from lepton.evaluation.generation_efficiency import GenEfficiencyConfig, measure
        from lepton.runtimes import for_bundle

        gen = GenEfficiencyConfig(repeats=max(1, min(config.rounds, 5)), threads=config.threads,
                                  offline_batch=max(config.batch_sizes))
        out = []
        for v in variants:
            model = v.bundle.model
            eff = measure(model, gen, folder=v.folder if memory else None)
            params, nonzero = for_bundle(v.bundle).parameter_counts()
            request = eff.single_stream["ttft_ms"] + eff.single_stream["tpot_ms"] * (eff.output_tokens - 1)
            stats = {k: LatencyStats(p50=x, p95=x, p99=x, mean=x, min=x, max=x, n=gen.repeats,
                                     tokens_mean=float(eff.prompt_tokens), round_medians=[x])
                     for k, x in (("b1_real", request), ("ttft", eff.single_stream["ttft_ms"]),
                                  ("tpot", eff.single_stream["tpot_ms"]))}
            out.append(Efficiency(
                runtime=v.bundle.runtime, device="cpu", threads=eff.threads, warmup=1, rounds=gen.repeats,
                latency_ms=stats,
                throughput={"b1": eff.single_stream["tokens_per_s"], f"b{eff.offline_batch}": eff.offline["tokens_per_s"]},
                peak_rss_mb=eff.peak_rss_mb,
                peak_rss_note=(f"peak RSS of a fresh process generating to a context of {eff.memory_context} "
                               "tokens (KV cache included)") if eff.peak_rss_mb else "not measured",
                size_mb=eff.size_mb, params=params, nonzero_params=nonzero,
                sparsity=1 - nonzero / params if params else 0.0, flops_per_item=None, seconds=0.0,
                generative=eff.model_dump()))
        return out

    # ------------------------------------------------------------------ training

    def finetune(self, bundle: Any, config: Any, ctx: Any) -> dict[str, Any]:
        """The finetune stage for this kind (the stage hands over when the kind has this hook)."""
        train, dev = self.training_data(bundle, ctx)
        from lepton.stages.training_decoder import train_generative

        summary = train_generative(bundle, config, ctx, train, dev_enc=dev, label="finetune")
        self._record_generation(bundle)
        return summary

    def training_data(self, bundle: Any, ctx: Any) -> tuple[Any, Any]:
        train = self.encode(ctx.split("train"), bundle.task, bundle.tokenizer)
        dev_split = ctx.splits.get("dev")
        dev = self.encode(dev_split, bundle.task, bundle.tokenizer) if dev_split is not None else None
        return train, dev

    def pretrain(self, bundle: Any, config: Any, ctx: Any, texts: list[str]) -> dict[str, Any]:
        """Continued causal-LM pretraining on ``texts`` (the pretrain stage hands over to this)."""
        from lepton.tasks.prompt_encoding import encode_documents
        from lepton.tasks.generate import is_encoder_decoder
        from lepton.stages.training_decoder import train_generative

        if is_encoder_decoder(bundle.model):
            raise StageError(f"stages.{ctx.stage_index}: continued pretraining of an encoder-decoder "
                             "model is not supported (its denoising objective differs per family)")
        rng = np.random.default_rng(ctx.seed)
        order = rng.permutation(len(texts))
        n_held = max(1, int(round(len(texts) * config.held_out))) if len(texts) > 1 else 0
        held = [texts[i] for i in order[:n_held]]
        rest = [texts[i] for i in order[n_held:]]
        enc, _ = encode_documents(bundle.tokenizer, rest, max_length=config.max_length or bundle.task.max_length)
        dev, _ = encode_documents(bundle.tokenizer, held, max_length=config.max_length or bundle.task.max_length)
        before = self._held_out(bundle, held, config)
        summary = train_generative(bundle, config, ctx, enc, dev_enc=dev if held else None, label="pretrain")
        after = self._held_out(bundle, held, config)
        summary.pop("evals", None)
        summary.update({"objective": "causal language modelling", "documents": len(rest),
                        "held_out_documents": len(held), "held_out_before": before, "held_out_after": after})
        return summary

    def _held_out(self, bundle: Any, held: list[str], config: Any) -> dict[str, float] | None:
        if not held:
            return None
        from lepton.tasks.scoring import document_losses
        from lepton.tasks.text_metrics import lm_scores

        scores = lm_scores(document_losses(bundle.model, bundle.tokenizer, held,
                                           max_length=config.max_length or bundle.task.max_length),
                           resamples=200)
        return {k: round(v.value, 4) for k, v in scores.items()}

    def _record_generation(self, bundle: Any) -> None:
        """The recipe's generation settings as the model's generation_config.json."""
        from lepton.tasks.generate import _pad_ids

        eos, pad = _pad_ids(bundle.tokenizer)
        bundle.model.generation_config = settings_of(bundle.task).to_generation_config(
            eos_token_id=eos, pad_token_id=pad, base=bundle.model.generation_config)

    # ------------------------------------------------------------------ serving

    def generate(self, predictor: Any, prompts: list[str], **settings: Any) -> list[str]:
        from lepton.tasks.generate import generate
        from lepton.tasks.generation_settings import GenerationSettings

        task = predictor.task
        merged = GenerationSettings.parse({**(task.options.get("generation") or {}), **settings})
        rendered = [self.render(predictor.bundle.tokenizer, task, p) for p in prompts]
        return generate(predictor.bundle.model, predictor.bundle.tokenizer, rendered, merged)

    def serve_app(self, predictor: Any, settings: Any, name: str) -> Any:
        """Decoder-only models: OpenAI-style completions with iteration-level batching and
        streaming (lepton.serve.generation). Encoder-decoders keep the shared app for now."""
        from lepton.tasks.generate import is_encoder_decoder

        model = predictor.bundle.model
        if is_encoder_decoder(model):
            return None
        from lepton.serve.generation.app import GenerateSettings, create_generate_app

        engine = None
        if hasattr(model, "decoder"):  # an exported decoder: the ONNX Runtime engine
            from lepton.serve.generation.ort_engine import OrtEngine

            limit = getattr(model.config, "max_position_embeddings", None) or 2048
            engine = OrtEngine(model.decoder(getattr(settings, "threads", None)), max_context=int(limit))

        config = getattr(model, "generation_config", None)
        defaults = {k: getattr(config, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                    "do_sample", "eos_token_id")
                    if config is not None and getattr(config, k, None) is not None}
        return create_generate_app(model.eval(), predictor.bundle.tokenizer, GenerateSettings.from_serve(settings),
                                   model_name=name, generation_defaults=defaults, engine=engine)

    def render(self, tokenizer: Any, task: TaskSpec, prompt: str) -> str:
        return prompt

    def predict(self, predictor: Any, chunk: list[Any]) -> list[dict[str, Any]]:
        if not all(isinstance(x, str) for x in chunk):
            raise LeptonError("pass a prompt or a list of prompts")
        return [{"generated_text": t} for t in self.generate(predictor, list(chunk))]

    def prediction_schema(self) -> type[BaseModel]:
        return GeneratedText

    def input_help(self, task: TaskSpec) -> str:
        return "a prompt or a list of prompts"

    def warmup_input(self, task: TaskSpec) -> Any:
        return "Hello"

    def card_notes(self, source: str) -> list[str]:
        from lepton.models.gguf import PROVENANCE

        if source == "builtin:smollm2-135m":
            return [f"**Weights:** {PROVENANCE}.", ""]
        return []

