"""Generative part 2 through a recipe: fine-tune, compress (drop layers, prune the FFN, distill
from the fine-tuned teacher), export with the KV cache, int4, on a tiny Llama-style decoder; the
artifact reloads as an exported decoder, generates what the run measured, and serves completions
from the ONNX Runtime engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import lepton
from lepton.core.errors import LeptonError, RecipeError
from lepton.pipeline.recipe import parse_recipe
from tests.gen_tiny import save_tiny_llama, write_pairs_tsv

EVAL = {"batch_sizes": [1, 2], "bootstrap": 100, "rounds": 1, "memory": False, "baseline": True}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _recipe(model: Path, tmp: Path, stages: list[dict], **task) -> dict:
    data = {"train": {"path": str(write_pairs_tsv(tmp / "train.tsv", 48, 0))},
            "dev": {"path": str(write_pairs_tsv(tmp / "dev.tsv", 12, 1))}}
    return {"schema_version": 1, "model": str(model),
            "task": {"kind": "generation", "generation": {"max_new_tokens": 6}, **task},
            "data": data, "stages": stages, "evaluate": EVAL, "output": {"dir": str(tmp / "out")}}


STAGES = [
    {"kind": "finetune", "name": "teacher", "epochs": 2, "lr": 3e-3, "batch_size": 8, "method": "lora"},
    {"kind": "drop_layers", "strategy": "importance", "layers": 1},
    {"kind": "prune", "method": "ffn", "sparsity": 0.25, "importance": "gradient"},
    {"kind": "distill", "teacher": "teacher", "epochs": 1, "lr": 3e-3, "batch_size": 8, "alpha_task": 0.5,
     "alpha_kd": 0.5, "alpha_hidden": 0.1},
    {"kind": "export", "parity_items": 6},
    {"kind": "quantize", "method": "weight_only", "bits": 4, "group_size": 16, "check_items": 6},
]


def test_finetune_compress_export_int4_in_one_recipe(llama_dir, tmp_path):
    report = lepton.run(parse_recipe(_recipe(llama_dir, tmp_path, STAGES), env={}), progress=False)
    summaries = {s["kind"]: s["summary"] for s in report.stages}
    assert summaries["drop_layers"]["layers_before"] == 2 and summaries["drop_layers"]["layers_after"] == 1
    assert summaries["drop_layers"]["dropped"] == [1]  # layer 0 is never dropped by importance
    assert summaries["prune"]["intermediate_after"] == 96
    assert summaries["distill"]["kd"].startswith("token-level")
    assert summaries["distill"]["layer_map"] == {"0": 1}  # the one student layer learns the teacher's last
    parity = summaries["export"]["parity"]
    assert parity["identical"] == parity["prompts"] == 6 and parity["max_abs_logit_diff"] < 1e-3
    quant = summaries["quantize"]
    assert quant["ops"]["MatMulNBits"] > 0 and quant["size_mb_after"] < quant["size_mb_before"]

    # Every variant measured with the same standard; the int4 graph is the ONNX Runtime variant.
    last = report.variants[-1]
    assert last.efficiency.runtime == "onnxruntime"
    assert set(last.quality.metrics) >= {"bleu", "chrf", "exact_match", "target_perplexity"}
    assert np.isfinite(last.quality.metrics["target_perplexity"].value)
    assert last.efficiency.generative["single_stream"]["tpot_ms"] > 0
    assert report.variants[0].efficiency.runtime == "torch"

    folder = tmp_path / "out" / "model"
    manifest = json.loads((folder / "lepton.json").read_text())
    assert manifest["format"] == "onnx-decoder" and manifest["runtime"] == "onnxruntime"
    assert manifest["onnx"]["precision"] == "int4 weight-only"
    model = lepton.load(folder)
    prompts = ["a man runs", "the dog sits on the grass"]
    first = model.generate(prompts)
    assert len(first) == 2 and model.generate(prompts) == first
    assert [p["generated_text"] for p in model.predict(prompts)] == first


def test_exported_decoder_scores_like_pytorch(llama_dir, tmp_path):
    """Target perplexity on the exported fp32 graph (prefill, then one step per target token)
    equals PyTorch's teacher-forced loss."""
    from transformers import AutoModelForCausalLM

    from lepton.models import load_tokenizer
    from lepton.runtimes.ort_decoder import OrtCausalLM
    from lepton.stages.export.onnx_decoder import export_torch
    from lepton.tasks.prompt_encoding import encode_causal, pad_id_of
    from lepton.tasks.scoring import token_nll_sums

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    tok = load_tokenizer(str(llama_dir))
    out = tmp_path / "g"
    out.mkdir()
    export_torch(model, out / "model.onnx")
    model.config.save_pretrained(out)
    enc = encode_causal(tok, ["a man runs", "two children play with a ball in the park"], ["ein mann", "zwei kinder"])
    want = token_nll_sums(model, enc, pad_id_of(tok))
    got = token_nll_sums(OrtCausalLM(out), enc, pad_id_of(tok))
    assert got[1] == want[1]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4)


def test_serve_an_int4_artifact_from_the_onnx_runtime_engine(llama_dir, tmp_path):
    from fastapi.testclient import TestClient

    from lepton.serve import ServeSettings
    from lepton.serve.app import create_app

    stages = [STAGES[0], STAGES[4], STAGES[5]]
    lepton.run(parse_recipe(_recipe(llama_dir, tmp_path, stages), env={}), progress=False)
    folder = tmp_path / "out" / "model"
    app = create_app(folder, ServeSettings(name="tiny"))
    with TestClient(app) as client:
        got = client.post("/v1/completions", json={"model": "tiny", "prompt": "a man runs", "max_tokens": 4,
                                                   "temperature": 0, "ignore_eos": True})
        assert got.status_code == 200, got.text
        assert got.json()["usage"]["completion_tokens"] == 4
        from lepton.runtimes.ort_decoder_loop import SamplingSettings, generate

        # The model in the artifact is the int4 graph only (no PyTorch weights to serve from).
        loaded = lepton.load(folder)
        want = generate(loaded.bundle.model.decoder(), loaded.bundle.tokenizer, ["a man runs"],
                        SamplingSettings(max_new_tokens=4), eos_token_id=[])
        assert got.json()["choices"][0]["text"] == want[0].text
        bad = client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "top_p": 2})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"


@pytest.mark.parametrize(("stages", "match"), [
    ([STAGES[0], {"kind": "prune", "method": "heads", "sparsity": 0.5}], "method: ffn"),
    ([STAGES[0], STAGES[4], {"kind": "quantize", "method": "static_int8"}], "weight_only"),
    ([STAGES[0], {"kind": "quantize", "method": "weight_only"}], "export"),
    ([STAGES[0], STAGES[4], {"kind": "drop_layers", "keep": [0]}], "move it before the export"),
])
def test_stages_that_do_not_fit_a_decoder_say_so_in_one_line(llama_dir, tmp_path, stages, match):
    with pytest.raises((LeptonError, RecipeError)) as err:
        lepton.run(parse_recipe(_recipe(llama_dir, tmp_path, stages), env={}), progress=False)
    assert match in str(err.value) and "\n" not in str(err.value)


def test_beam_search_is_refused_on_the_exported_decoder(llama_dir, tmp_path):
    stages = [STAGES[0], STAGES[4]]
    recipe = _recipe(llama_dir, tmp_path, stages, generation={"strategy": "beam", "max_new_tokens": 4})
    with pytest.raises(LeptonError, match="beam search runs on PyTorch only"):
        lepton.run(parse_recipe(recipe, env={}), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dynamic_int8", "bf16"])
def test_quantize_a_pytorch_decoder_saves_and_reloads(llama_dir, tmp_path, method):
    stages = [STAGES[0], {"kind": "quantize", "method": method, "check_items": 4}]
    report = lepton.run(parse_recipe(_recipe(llama_dir, tmp_path, stages), env={}), progress=False)
    summary = report.stages[-1]["summary"]
    assert summary["size_mb_after"] < summary["size_mb_before"]
    assert summary["vs_input"]["prompts"] == 4
    model = lepton.load(tmp_path / "out" / "model")
    prompts = ["a man runs", "two dogs"]
    assert model.generate(prompts) == model.generate(prompts)
    assert report.variants[-1].efficiency.runtime == "torch"


@pytest.mark.slow
def test_int4_sensitivity_and_max_drop_per_decoder_layer(llama_dir, tmp_path):
    from tests.gen_tiny import write_text_tsv

    quantize = {"kind": "quantize", "method": "weight_only", "bits": 4, "group_size": 16, "check_items": 4,
                "sensitivity": True, "sensitivity_items": 8, "max_drop": 0.0}
    recipe = {"schema_version": 1, "model": str(llama_dir), "task": {"kind": "language_modeling", "max_length": 24},
              "data": {"train": {"path": str(write_text_tsv(tmp_path / "train.tsv", 32, 0))},
                       "dev": {"path": str(write_text_tsv(tmp_path / "dev.tsv", 8, 1))}},
              "stages": [{"kind": "finetune", "epochs": 1, "lr": 3e-3, "batch_size": 8}, STAGES[4], quantize],
              "evaluate": EVAL, "output": {"dir": str(tmp_path / "out")}}
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    mixed = report.stages[-1]["summary"]["mixed_precision"]
    assert mixed["metric"] == "bits_per_byte"
    ranking = mixed["sensitivity"]["ranking"]
    assert {r["layer"] for r in ranking} == {"layer.0", "layer.1", "output", "embeddings"}
    errors = [r["output_error"] for r in ranking]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    # int4 costs bits per byte here, so max_drop 0 puts groups back in float, most sensitive
    # first, until the cost is gone or one group is left quantized.
    assert mixed["all_quantized"] > mixed["float"]
    assert mixed["kept_float"] == [r["layer"] for r in ranking[:len(mixed["kept_float"])]]
    assert len(mixed["kept_float"]) >= 1
    assert mixed["met"] is (mixed["drop"] <= 0.0)
    assert report.stages[-1]["summary"]["kept_float_nodes"] >= len(mixed["kept_float"])


@pytest.mark.slow
@pytest.mark.parametrize(("settings", "precision"), [
    ({"method": "weight_only", "bits": 8, "group_size": 16}, "int8 weight-only"),
    ({"method": "dynamic_int8"}, "dynamic int8"),
])
def test_onnx_int8_methods_on_an_exported_decoder_save_and_reload(llama_dir, tmp_path, settings, precision):
    stages = [STAGES[0], STAGES[4], {"kind": "quantize", "check_items": 4, **settings}]
    report = lepton.run(parse_recipe(_recipe(llama_dir, tmp_path, stages), env={}), progress=False)
    summary = report.stages[-1]["summary"]
    assert summary["size_mb_after"] < summary["size_mb_before"]
    folder = tmp_path / "out" / "model"
    assert json.loads((folder / "lepton.json").read_text())["onnx"]["precision"] == precision
    model = lepton.load(folder)
    prompts = ["a man runs", "the red ball"]
    first = model.generate(prompts)
    assert lepton.load(folder).generate(prompts) == first
    assert report.variants[-1].efficiency.runtime == "onnxruntime"
