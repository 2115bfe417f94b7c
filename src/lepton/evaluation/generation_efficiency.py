"""Speed and memory of a generative model, in MLPerf's scenarios, on the CPU.

- single stream (one request at a time, batch 1): time to first token (prefill of a prompt of a
  stated length plus one decoding step), time per output token after the first, output tokens/s;
- offline (all requests at once, a larger batch): generated tokens/s and prefill tokens/s;
- memory: peak resident memory of a fresh process while generating at a stated context (the
  KV cache of batch x context tokens included), and the size of the weights.

Prompts are synthetic (one ordinary token repeated), generation runs greedy with EOS disabled so
every run produces exactly ``output_tokens`` tokens: the figures measure the model, not its text.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lepton.core.config import StrictModel


class GenEfficiencyConfig(StrictModel):
    prompt_tokens: int = Field(default=128, ge=1, le=8192)
    output_tokens: int = Field(default=32, ge=2, le=4096)
    offline_batch: int = Field(default=8, ge=1, le=1024)
    memory_context: int = Field(default=512, ge=2, le=32768)  # prompt + output tokens for the memory probe
    repeats: int = Field(default=3, ge=1, le=100)
    threads: int | None = Field(default=None, ge=1)


class GenEfficiency(BaseModel):
    prompt_tokens: int
    output_tokens: int
    offline_batch: int
    threads: int
    single_stream: dict[str, float]  # ttft_ms, tpot_ms, tokens_per_s
    offline: dict[str, float]  # tokens_per_s, prefill_tokens_per_s
    peak_rss_mb: float | None
    memory_context: int
    size_mb: float
    note: str


def _ids(model: Any, batch: int, length: int) -> dict[str, Any]:
    import torch

    token = min(1000, model.config.vocab_size - 1)
    ids = torch.full((batch, length), token, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _generate_s(model: Any, inputs: dict[str, Any], new_tokens: int) -> float:
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, eos_token_id=None,
                              pad_token_id=0)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, generation_config=config)
    return time.perf_counter() - start


def _prefill_s(model: Any, inputs: dict[str, Any]) -> float:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        if getattr(model.config, "is_encoder_decoder", False):
            model.get_encoder()(**inputs)
        else:
            model(**inputs, use_cache=True)
    return time.perf_counter() - start


def weights_mb(model: Any) -> float:
    seen = {}
    for p in model.parameters():  # tied weights counted once
        seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values()) / 1e6


def measure(model: Any, config: GenEfficiencyConfig, *, folder: Path | None = None) -> GenEfficiency:
    """Both scenarios side by side in this process (median of ``repeats``), memory in a fresh one."""
    import torch

    if hasattr(model, "generation_timers"):  # an exported decoder (lepton.runtimes.ort_decoder)
        run_, prefill_, threads_, size_mb, note = model.generation_timers(config.prompt_tokens, config.threads)
        return report(config, threads_, scenarios(run_, prefill_, config), folder=folder, size_mb=size_mb,
                      note=note)
    model.eval()
    threads = config.threads or torch.get_num_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def run(batch: int, new_tokens: int) -> float:
            return _generate_s(model, _ids(model, batch, config.prompt_tokens), new_tokens)

        def prefill(batch: int) -> float:
            return _prefill_s(model, _ids(model, batch, config.prompt_tokens))

        timings = scenarios(run, prefill, config)
    finally:
        torch.set_num_threads(old)
    return report(config, threads, timings, folder=folder, size_mb=weights_mb(model),
                  note=f"CPU, {threads} thread(s), fp32 eager PyTorch")


def scenarios(run: Any, prefill: Any, config: GenEfficiencyConfig) -> dict[str, float]:
    """Median seconds of each scenario: ``run(batch, new_tokens)`` generates from a
    ``prompt_tokens`` prompt, ``prefill(batch)`` runs the prompt alone (one warm-up first)."""
    run(1, 2)
    return {"ttft": statistics.median(run(1, 1) for _ in range(config.repeats)),
            "full": statistics.median(run(1, config.output_tokens) for _ in range(config.repeats)),
            "offline": statistics.median(run(config.offline_batch, config.output_tokens)
                                         for _ in range(config.repeats)),
            "prefill": statistics.median(prefill(config.offline_batch) for _ in range(config.repeats))}


def report(config: GenEfficiencyConfig, threads: int, t: dict[str, float], *, folder: Path | None,
           size_mb: float, note: str) -> GenEfficiency:
    """The scenarios' figures from their timings (``scenarios``), memory in a fresh process."""
    peak = probe_memory(folder, config.memory_context) if folder is not None else None
    return GenEfficiency(
        prompt_tokens=config.prompt_tokens, output_tokens=config.output_tokens,
        offline_batch=config.offline_batch, threads=threads,
        single_stream={"ttft_ms": t["ttft"] * 1e3,
                       "tpot_ms": (t["full"] - t["ttft"]) / (config.output_tokens - 1) * 1e3,
                       "tokens_per_s": config.output_tokens / t["full"]},
        offline={"tokens_per_s": config.offline_batch * config.output_tokens / t["offline"],
                 "prefill_tokens_per_s": config.offline_batch * config.prompt_tokens / t["prefill"]},
        peak_rss_mb=peak, memory_context=config.memory_context, size_mb=size_mb,
        note=(f"{note}, greedy, prompt {config.prompt_tokens} tokens, {config.output_tokens} output "
              f"tokens, median of {config.repeats}"),
    )


def probe_memory(folder: Path, context: int, timeout: float = 600) -> float | None:
    """Peak RSS (MB) of a fresh process that loads ``folder`` and generates up to ``context`` tokens."""
    cmd = [sys.executable, "-m", "lepton.evaluation.generation_efficiency", str(folder), str(context)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, KeyError, OSError, ValueError):
        return None


def _probe_main(folder: str, context: int) -> None:
    from lepton.evaluation.memprobe import vm_status_mb

    if (Path(folder) / "model.onnx").is_file():  # an exported decoder
        from lepton.runtimes.ort_decoder import OrtCausalLM

        OrtCausalLM(folder).probe(context)
    else:
        from lepton.models.decoder import load_generative

        model, _ = load_generative(folder)
        prompt = max(1, context // 2)
        _generate_s(model, _ids(model, 1, prompt), context - prompt)
    print(json.dumps({"peak_rss_mb": vm_status_mb("VmHWM")}))


def measure_variants(variants: list[Any], split: Any, config: Any, *, memory: bool = True) -> list[Any]:
    """An ``Efficiency`` per generative variant: time to first token, time per output token and
    tokens per second (batch 1 and offline), as the harness's scorecards hold them."""
    from lepton.evaluation.scorecard import Efficiency, LatencyStats
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


if __name__ == "__main__":
    _probe_main(sys.argv[1], int(sys.argv[2]))
