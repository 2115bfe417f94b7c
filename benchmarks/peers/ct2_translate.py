"""CTranslate2 peer of the translation benchmark: convert a Lepton Marian artifact, translate, measure.

Runs inside the venv of ct2_setup.sh, never in Lepton's environment:

    .ct2-venv/bin/python ct2_translate.py MODEL_FOLDER SOURCES REFS OUT_JSON [--quantization int8] [--beam 4]

Lepton's Marian models keep `<pad>` at id 0 and start the decoder from the `<pad>` embedding (a trained,
non-zero row of the tied embedding matrix). CTranslate2's stock Marian loader assumes the OPUS-MT layout
(`<pad>` is the last token, the decoder starts from a zero vector) and drops the last row of the embedding
matrix, so such a model fails validation ("vocabulary ... has size V but the model expected V-1").
`LeptonMarianLoader` converts such models as they are; OPUS-MT style models keep the stock loader.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ctranslate2
import sacrebleu
import tokenizers
import transformers
from ctranslate2.converters import TransformersConverter
from ctranslate2.converters.transformers import BartLoader, MarianMTLoader, register_loader

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


class LeptonMarianLoader(MarianMTLoader):
    """Marian loader for a vocabulary whose `<pad>` (the decoder start token) is not the last token."""

    def get_model_spec(self, model):
        model.config.normalize_before = False
        model.config.normalize_embedding = False
        return BartLoader.get_model_spec(self, model)  # keeps every row: no pad row to drop

    def set_config(self, config, model, tokenizer):
        config.eos_token = tokenizer.eos_token
        config.unk_token = tokenizer.unk_token
        config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

    def set_decoder(self, spec, decoder):
        BartLoader.set_decoder(self, spec, decoder)  # start from the start token's embedding, as transformers

    def get_vocabulary(self, model, tokenizer):
        return BartLoader.get_vocabulary(self, model, tokenizer)


def read_lines(path: str) -> list[str]:
    """Lines of a plain or gzip text file, without line ends."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def cpu_info() -> dict:
    """CPU model name and the SIMD/AMX flags that matter for int8 GEMM."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "flags": {f: f in flags for f in CPU_FLAGS}}


def convert(model_dir: str, out_dir: str, quantization: str) -> float:
    """Convert a transformers Marian folder to a CTranslate2 model; returns seconds."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("pad_token_id") != config["vocab_size"] - 1:
        register_loader("MarianConfig")(LeptonMarianLoader)
    t0 = time.perf_counter()
    TransformersConverter(model_dir).convert(out_dir, quantization=quantization, force=True)
    return time.perf_counter() - t0


def dir_bytes(path: str) -> int:
    """Total size of the files under a folder."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def time_pass(
    translate: Callable[..., list[list[str]]], src_tokens: list[list[str]], batch_size: int
) -> tuple[list[list[str]], dict]:
    """Translate every sentence once; batch 1 times each call, larger batches time the whole file."""
    if batch_size == 1:
        hyps, lat = [], []
        for s in src_tokens:
            t0 = time.perf_counter()
            hyps += translate([s])
            lat.append(time.perf_counter() - t0)
        seconds = sum(lat)
        stats = {
            "p50_ms": 1e3 * statistics.median(lat),
            "mean_ms": 1e3 * seconds / len(lat),
            "p95_ms": 1e3 * percentile(lat, 95),
        }
    else:  # CTranslate2 sorts the inputs by source length, then cuts batches of batch_size
        t0 = time.perf_counter()
        hyps = translate(src_tokens, max_batch_size=batch_size)
        seconds, stats = time.perf_counter() - t0, {}
    return hyps, {"seconds": seconds, "sentences_per_s": len(src_tokens) / seconds, **stats}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="transformers MarianMTModel folder (a Lepton artifact)")
    p.add_argument("sources", help="source sentences, one per line (.gz or plain)")
    p.add_argument("refs", help="reference translations, one per line (.gz or plain)")
    p.add_argument("out_json")
    p.add_argument("--quantization", default="int8", help="int8, int8_float32, int16, float32, ...")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--max-len", type=int, default=80, help="max_decoding_length (target tokens)")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--threads", type=int, default=1, help="intra_threads")
    p.add_argument("--rounds", type=int, default=2, help="timed passes over the file per batch size")
    p.add_argument("--warmup", type=int, default=5, help="sentences translated before timing")
    p.add_argument("--limit", type=int, default=0, help="use only the first N sentences (0: all)")
    p.add_argument("--ct2-dir", help="keep the converted model here (default: a temporary folder)")
    args = p.parse_args(argv)

    sources, refs = read_lines(args.sources), read_lines(args.refs)
    if len(sources) != len(refs):
        sys.exit(f"{len(sources)} sources but {len(refs)} references")
    if args.limit:
        sources, refs = sources[: args.limit], refs[: args.limit]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    tok = tokenizers.Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    # A tokenizer.json saved by transformers can carry padding and truncation settings; padded
    # sources would reach CTranslate2 as real <pad> tokens (its output degenerates).
    tok.no_padding()
    tok.no_truncation()
    eos = "</s>"
    src_tokens = [e.tokens if e.tokens[-1:] == [eos] else [*e.tokens, eos] for e in tok.encode_batch(sources)]

    with tempfile.TemporaryDirectory(prefix="ct2-") as tmp:
        ct2_dir = args.ct2_dir or tmp
        convert_s = convert(args.model, ct2_dir, args.quantization)
        translator = ctranslate2.Translator(ct2_dir, device="cpu", intra_threads=args.threads, inter_threads=1)
        opts = {"beam_size": args.beam, "max_decoding_length": args.max_len}

        def translate(batch: list[list[str]], max_batch_size: int = 0) -> list[list[str]]:
            results = translator.translate_batch(batch, max_batch_size=max_batch_size, **opts)
            return [r.hypotheses[0] for r in results]

        translate(src_tokens[: args.warmup])
        timings, outputs = {}, {}
        for b in batch_sizes:
            rounds = []
            for _ in range(args.rounds):
                outputs[b], stats = time_pass(translate, src_tokens, b)
                rounds.append(stats)
            timings[str(b)] = {**{k: statistics.median(r[k] for r in rounds) for k in rounds[0]}, "rounds": rounds}
        model_bytes = (Path(ct2_dir) / "model.bin").stat().st_size
        total_bytes = dir_bytes(ct2_dir)
        compute_type = translator.compute_type

    def detok(tokens: list[str]) -> str:
        return tok.decode([tok.token_to_id(t) for t in tokens], skip_special_tokens=True)

    texts = {b: [detok(h) for h in hyps] for b, hyps in outputs.items()}
    hypotheses = texts[batch_sizes[0]]
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    result = {
        "runtime": "ctranslate2",
        "model": str(Path(args.model).resolve()),
        "sources": args.sources,
        "refs": args.refs,
        "n_sentences": len(sources),
        "quantization": args.quantization,
        "compute_type": compute_type,
        "beam_size": args.beam,
        "max_decoding_length": args.max_len,
        "intra_threads": args.threads,
        "inter_threads": 1,
        "rounds": args.rounds,
        "warmup_sentences": args.warmup,
        "bleu": bleu.corpus_score(hypotheses, [refs]).score,
        "chrf": chrf.corpus_score(hypotheses, [refs]).score,
        "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
        "hypotheses_from_batch_size": batch_sizes[0],
        "hypotheses_differing_by_batch_size": {
            str(b): sum(x != y for x, y in zip(t, hypotheses)) for b, t in texts.items()
        },
        "batch1_latency_ms": {k: timings["1"][k] for k in ("p50_ms", "mean_ms", "p95_ms")} if "1" in timings else None,
        "sentences_per_s": {b: t["sentences_per_s"] for b, t in timings.items()},
        "timings": timings,
        "batching": "batch 1: one translate_batch call per sentence; batch b>1: translate_batch(max_batch_size=b) "
        "over the whole file (CTranslate2 sorts by source length); times exclude (de)tokenization",
        "model_bin_bytes": model_bytes,
        "converted_bytes": total_bytes,
        "convert_seconds": convert_s,
        "versions": {
            "ctranslate2": ctranslate2.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sacrebleu": sacrebleu.__version__,
            "python": platform.python_version(),
        },
        "cpu": {**cpu_info(), "ct2_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu"))},
        "hypotheses": hypotheses,
    }
    Path(args.out_json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(
        f"BLEU {result['bleu']:.2f} chrF {result['chrf']:.2f} | "
        + " | ".join(f"b{b}: {t['sentences_per_s']:.1f} sent/s" for b, t in timings.items())
        + f" | {total_bytes} bytes"
    )


if __name__ == "__main__":
    main()
