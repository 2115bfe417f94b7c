"""Data-aware int4 for exported decoders: ``quantize: {method: weight_only, algorithm: awq}``
(NNCF's AWQ and scale estimation on the ONNX graph, calibrated on real sequences) and ``hqq``,
beside round to nearest; the settings refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("nncf")

import lepton
from lepton.core.errors import RecipeError
from lepton.pipeline.recipe import parse_recipe
from lepton.stages.export.onnx_decoder import export_decoder
from lepton.stages.quantize import weight_only as wq
from tests.gen_tiny import save_tiny_decoder, save_tiny_llama, toy_pairs, write_pairs_tsv


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> tuple[Path, Path]:
    folder = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    export_decoder(folder, out, backend="torch")
    return folder, out


def _logits(folder: Path, sequences: list[list[int]]) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = wq.prefill_feeds(onnx.load(str(folder / "model.onnx"), load_external_data=False), sequences)
    return np.concatenate([session.run(["logits"], f)[0][:, -1] for f in feeds])


def _sequences(folder: Path, n: int, seed: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return [tok(f"{a} {b}")["input_ids"] for a, b in toy_pairs(n, seed)]


def test_awq_writes_matmulnbits_close_to_float_and_records_calibration(graph, tmp_path: Path) -> None:
    import onnx

    model_dir, fp32 = graph
    calibration = _sequences(model_dir, 16, 0)
    info = wq.quantize_onnx_weights(fp32, tmp_path / "awq", bits=4, block_size=16, algorithm="awq",
                                    embeddings=True, calibration=calibration)
    rtn = wq.quantize_onnx_weights(fp32, tmp_path / "rtn", bits=4, block_size=16, embeddings=True)
    assert info["ops"]["MatMulNBits"] == rtn["ops"]["MatMulNBits"] == 15  # 7 per layer x 2 + the output layer
    assert info["ops"]["GatherBlockQuantized"] == 1 and info["ops"]["MatMul"] == rtn["ops"]["MatMul"]
    assert info["calibration"]["items"] == 16 and info["calibration"]["seconds"] > 0
    graph_proto = onnx.load(str(tmp_path / "awq" / "model.onnx"))
    levels = {a.i for n in graph_proto.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
              if a.name == "accuracy_level"}
    assert levels == {4}

    held_out = _sequences(model_dir, 12, 7)  # not the calibration sequences
    base = _logits(fp32, held_out)
    err = {name: np.abs(_logits(tmp_path / name, held_out) - base).mean() / np.abs(base).mean()
           for name in ("awq", "rtn")}
    # Zero points read with the wrong packing shift every weight by whole steps: far beyond rounding.
    assert err["awq"] < 0.25 and err["awq"] < 2 * err["rtn"], err


def test_awq_needs_calibration_and_four_bits(graph, tmp_path: Path) -> None:
    _, fp32 = graph
    with pytest.raises(wq.QuantizeError, match="needs calibration"):
        wq.quantize_onnx_weights(fp32, tmp_path / "x", algorithm="awq")
    with pytest.raises(wq.QuantizeError, match="4 bits"):
        wq.quantize_onnx_weights(fp32, tmp_path / "x", algorithm="awq", bits=8, calibration=[[1, 2, 3]])
    assert not (tmp_path / "x").exists()


def _recipe(model: Path, tmp: Path, quantize: dict) -> dict:
    return {"schema_version": 1, "model": str(model),
            "task": {"kind": "generation", "generation": {"max_new_tokens": 4}},
            "data": {"train": {"path": str(write_pairs_tsv(tmp / "train.tsv", 24, 0))},
                     "dev": {"path": str(write_pairs_tsv(tmp / "dev.tsv", 6, 1))}},
            "stages": [{"kind": "export", "parity_items": 4},
                       {"kind": "quantize", "method": "weight_only", "group_size": 16, "check_items": 4, **quantize}],
            "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False, "baseline": False},
            "output": {"dir": str(tmp / "out")}}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_awq_in_a_recipe_saves_reloads_and_generates_the_same(arch: str, tmp_path: Path) -> None:
    model_dir = save_tiny_decoder(tmp_path / arch, arch)
    recipe = _recipe(model_dir, tmp_path, {"algorithm": "awq", "calibration_items": 12})
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summary = next(s["summary"] for s in report.stages if s["kind"] == "quantize")
    assert summary["algorithm"] == "awq" and summary["calibration"]["items"] == 12
    assert report.variants[-1].efficiency.runtime == "onnxruntime"
    model = lepton.load(tmp_path / "out" / "model")
    assert model.bundle.model.info["quantization"]["algorithm"] == "awq"
    first = model.generate(["a man runs", "the dog sits on the grass"])
    assert lepton.load(tmp_path / "out" / "model").generate(["a man runs", "the dog sits on the grass"]) == first


@pytest.mark.parametrize(("quantize", "message"), [
    ({"algorithm": "rtn", "calibration_items": 8}, "calibration_items applies to method static_int8"),
    ({"algorithm": "awq", "bits": 8}, "algorithm awq quantizes to 4 bits"),
    ({"algorithm": "gptq"}, "algorithm"),
])
def test_bad_algorithm_settings_are_one_line(graph, tmp_path: Path, quantize: dict, message: str) -> None:
    model_dir, _ = graph
    with pytest.raises(RecipeError, match=message):
        parse_recipe(_recipe(model_dir, tmp_path, quantize), env={})
