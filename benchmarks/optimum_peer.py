"""The peer's default: Hugging Face Optimum's stock dynamic INT8 for this CPU, on a model folder.

Runs in its own virtual environment (Optimum pins transformers < 5, which Lepton cannot use):

    python -m venv /tmp/optimum-venv
    /tmp/optimum-venv/bin/pip install torch==2.13.0 'optimum[onnxruntime]'
    /tmp/optimum-venv/bin/python benchmarks/optimum_peer.py MODEL_FOLDER OUT_FOLDER

MODEL_FOLDER is a fine-tuned transformers folder (config.json, model.safetensors, tokenizer);
OUT_FOLDER receives ``model_quantized.onnx`` and ``peer.json`` (versions, the config used, the
CPU's int8 instructions). ``benchmarks/quantization.py`` wraps that .onnx as a Lepton artifact and
measures it with the same harness as Lepton's own variants.

Stock config: ``AutoQuantizationConfig.avx512_vnni`` where the CPU has AVX512-VNNI, else
``avx2``; ``is_static=False``, ``per_channel=False`` (Optimum's documented defaults), applied to
Optimum's plain ONNX export (no transformer-optimizer pass: that is a separate, opt-in step there).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    flags = cpu_flags()
    target = "avx512_vnni" if "avx512_vnni" in flags else "avx2"
    qconfig = getattr(AutoQuantizationConfig, target)(is_static=False, per_channel=False)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = ORTModelForSequenceClassification.from_pretrained(source, export=True)
        model.save_pretrained(tmp)
        quantizer = ORTQuantizer.from_pretrained(tmp)
        quantizer.quantize(save_dir=out, quantization_config=qconfig)
    produced = sorted(out.glob("*.onnx"))
    if len(produced) != 1:
        sys.exit(f"expected one .onnx in {out}, found {[p.name for p in produced]}")
    if produced[0].name != "model_quantized.onnx":
        shutil.move(produced[0], out / "model_quantized.onnx")
    (out / "peer.json").write_text(json.dumps({
        "tool": "optimum ORTQuantizer",
        "config": f"AutoQuantizationConfig.{target}(is_static=False, per_channel=False)",
        "versions": {p: version(p) for p in ("optimum", "optimum-onnx", "onnxruntime", "transformers", "torch")},
        "cpu_avx512_vnni": "avx512_vnni" in flags}, indent=2))
    print(out / "model_quantized.onnx")


if __name__ == "__main__":
    main()
