"""LoRA on a 4-bit base (finetune ``base_bits: 4``): the adapters train against the weights
MatMulNBits will compute with, and the int4 graph carries them as float MatMuls beside the 4-bit
base, so the deployed model is the trained one (not the merged weights rounded again)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("peft")

import lepton
from lepton.core.errors import LeptonError, RecipeError
from lepton.models.weight_only import matmulnbits_roundtrip
from lepton.pipeline.recipe import parse_recipe
from tests.gen_tiny import save_tiny_decoder, save_tiny_llama, write_pairs_tsv

LORA = {"kind": "finetune", "name": "qlora", "method": "lora", "epochs": 3, "lr": 1e-2, "batch_size": 8,
        "base_bits": 4, "base_group_size": 16, "lora": {"r": 8, "alpha": 16}}
INT4 = {"kind": "quantize", "method": "weight_only", "bits": 4, "group_size": 16, "check_items": 8, "accuracy_level": 0}


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _recipe(model: Path, tmp: Path, stages: list[dict]) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"schema_version": 1, "model": str(model),
            "task": {"kind": "generation", "generation": {"max_new_tokens": 6}},
            "data": {"train": {"path": str(write_pairs_tsv(tmp / "train.tsv", 64, 0))},
                     "dev": {"path": str(write_pairs_tsv(tmp / "dev.tsv", 12, 1))}},
            "stages": stages,
            "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False, "baseline": True},
            "output": {"dir": str(tmp / "out")}}


def _dequantize(packed: np.ndarray, scales: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """MatMulNBits' 4-bit B (N, blocks, block/2), scales, packed zero points -> weight (N, K)."""
    n, blocks, half = packed.shape
    codes = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, blocks, 2 * half).astype(np.float32)
    zeros = np.stack([zero & 0x0F, zero >> 4], -1).reshape(n, -1)[:, :blocks].astype(np.float32)
    return ((codes - zeros[:, :, None]) * scales.reshape(n, blocks)[:, :, None]).reshape(n, -1)


def test_roundtrip_is_what_onnxruntime_quantizes_and_is_stable() -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 64) * 0.05
    once = matmulnbits_roundtrip(w, block_size=16)
    assert 0 < (once - w).abs().max() < 0.05  # 16 levels per block of 16 inputs
    torch.testing.assert_close(matmulnbits_roundtrip(once, block_size=16), once, atol=1e-7, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_adapters_ride_beside_the_int4_base_and_the_deployed_graph_is_the_trained_model(arch, tmp_path) -> None:
    import onnx
    from onnx import numpy_helper
    from transformers import AutoModelForCausalLM

    llama = save_tiny_decoder(tmp_path / arch, arch)
    plain = AutoModelForCausalLM.from_pretrained(llama)
    weights = {id(m.weight) for m in plain.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}

    report = lepton.run(parse_recipe(_recipe(llama, tmp_path, [LORA, {"kind": "export", "parity_items": 6}, INT4]),
                                     env={}), progress=False)
    summaries = {s["kind"]: s["summary"] for s in report.stages}
    base = summaries["finetune"]["base_quantization"]
    assert base["bits"] == 4 and base["group_size"] == 16 and base["linears"] == len(weights)
    adapters = summaries["quantize"]["adapters"]
    assert adapters["stage"] == "qlora" and adapters["modules"] > 0
    ops = summaries["quantize"]["ops"]
    assert ops["MatMulNBits"] >= 7 * 3 and ops["MatMul"] >= 2 * adapters["modules"]  # A and B per adapted module

    # The base the graph runs is bit for bit the base the adapters trained against.
    folder = tmp_path / "out" / "model"
    graph = onnx.load(str(folder / "model.onnx")).graph
    lora_inits = [i for i in graph.initializer if "lora_A" in i.name or "lora_B" in i.name]
    assert len(lora_inits) == 2 * adapters["modules"]
    assert all(numpy_helper.to_array(i).dtype == np.float32 for i in lora_inits)
    original = plain.model.layers[1].self_attn.q_proj.weight
    node = next(n for n in graph.node if n.op_type == "MatMulNBits" and "layers.1/self_attn/q_proj" in n.name)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    np.testing.assert_allclose(_dequantize(*(inits[x] for x in node.input[1:4])),
                               matmulnbits_roundtrip(original, block_size=16).numpy(), atol=1e-6)

    # Deployed (int4 + adapters, float activations: accuracy_level 0) against the trained PyTorch
    # model: the same greedy outputs on every prompt; the merged weights rounded again (the layout
    # this replaces) drift further.
    vs_torch = summaries["quantize"]["vs_input"]
    assert vs_torch["identical_share"] == 1.0, vs_torch
    merged = lepton.run(parse_recipe(_recipe(llama, tmp_path / "merged",
                                             [{**LORA, "base_bits": None}, {"kind": "export", "parity_items": 6},
                                              {**INT4}]), env={}), progress=False)
    rounded_again = {s["kind"]: s["summary"] for s in merged.stages}["quantize"]["vs_input"]
    assert "adapters" not in {s["kind"]: s["summary"] for s in merged.stages}["quantize"]
    assert vs_torch["mean_prefix_share"] >= rounded_again["mean_prefix_share"]

    model = lepton.load(folder)
    first = model.generate(["a man runs", "the dog sits on the grass"])
    assert lepton.load(folder).generate(["a man runs", "the dog sits on the grass"]) == first


def test_settings_that_would_deploy_another_base_are_refused(llama, tmp_path) -> None:
    for quantize, message in (({**INT4, "group_size": 32}, "group_size: 16"),
                              ({**INT4, "algorithm": "hqq"}, "algorithm: rtn")):
        with pytest.raises(LeptonError, match=message):
            lepton.run(parse_recipe(_recipe(llama, tmp_path / message[:5], [LORA, {"kind": "export", "parity_items": 4},
                                                                           quantize]), env={}), progress=False)
    stages = [LORA, {"kind": "prune", "method": "ffn", "sparsity": 0.25, "importance": "magnitude"},
              {"kind": "export", "parity_items": 4}, INT4]
    with pytest.raises(LeptonError, match="prune changed the model since"):
        lepton.run(parse_recipe(_recipe(llama, tmp_path / "pruned", stages), env={}), progress=False)
    with pytest.raises(RecipeError, match="base_bits works with method: lora only"):
        parse_recipe(_recipe(llama, tmp_path, [{**LORA, "method": "full", "lora": None}]), env={})
    with pytest.raises(RecipeError, match="base_group_size must be a power of two"):
        parse_recipe(_recipe(llama, tmp_path, [{**LORA, "base_group_size": 24}]), env={})
