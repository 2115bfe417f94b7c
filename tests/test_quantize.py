"""The quantize stage on tiny random-weight models: every method on each runtime runs, saves and
loads back to the same outputs; calibration sets that are empty or of the wrong task are clear
errors; the CPU check warns where int8 cannot be fast; settings that do not fit are rejected."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from lepton.core.errors import ArtifactError, RecipeError, StageError
from lepton.data import Columns, DataSplitConfig, Split, load_split
from lepton.models.int8 import INT8_FILE, is_dynamic_int8
from lepton.pipeline.artifact import MANIFEST, load_bundle, read_manifest, save_artifact
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes import for_bundle
from tests.conftest import tiny_recipe, write_conll, write_sentiment_tsv
from tests.test_artifact import TEXTS, sequence_bundle
from tests.test_export import apply, batch_of, make_ctx, sentiment_splits


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return sentiment_splits(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def torch_bundle(tiny_model_dir):
    return sequence_bundle(tiny_model_dir)


@pytest.fixture(scope="module")
def onnx_bundle(torch_bundle, splits, tmp_path_factory):
    return apply(torch_bundle, make_ctx(tmp_path_factory.mktemp("export"), splits), kind="export")


def round_trip(bundle, folder: Path) -> tuple[float, dict]:
    """Largest |logit difference| between ``bundle`` and its saved-and-loaded copy; the manifest."""
    saved = save_artifact(bundle, folder)
    loaded = load_bundle(saved)
    batch = batch_of(bundle.tokenizer, TEXTS)
    return float(np.abs(for_bundle(bundle).logits(batch) - for_bundle(loaded).logits(batch)).max()), \
        read_manifest(saved)


# ------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("per_channel", [True, False])
def test_torch_dynamic_int8_saves_int8_and_reloads_exactly(torch_bundle, splits, tmp_path, per_channel):
    ctx = make_ctx(tmp_path, splits)
    out = apply(torch_bundle, ctx, kind="quantize", method="dynamic_int8", per_channel=per_channel)
    assert is_dynamic_int8(out.model) and not is_dynamic_int8(torch_bundle.model)  # input untouched
    summary = ctx.stage_summary
    assert summary["runtime"] == "torch" and summary["quantized_linears"] == 14 and summary["kept_float"] == 0
    assert summary["vs_input"]["agreement"] >= 0.9 and 0 < summary["vs_input"]["max_abs_diff"] < 0.05
    diff, manifest = round_trip(out, tmp_path / "m")
    assert diff == 0.0
    assert manifest["format"] == "torch-dynamic-int8" and manifest["loads_in_transformers"] is False
    assert INT8_FILE in manifest["files"] and "model.safetensors" not in manifest["files"]
    runtime = for_bundle(out)
    assert runtime.size_bytes() < for_bundle(torch_bundle).size_bytes()
    assert runtime.parameter_counts()[0] == for_bundle(torch_bundle).parameter_counts()[0]


def test_torch_int8_exclude_keeps_layers_float(torch_bundle, splits, tmp_path):
    ctx = make_ctx(tmp_path, splits)
    out = apply(torch_bundle, ctx, kind="quantize", method="dynamic_int8", exclude=["classifier", "pooler"])
    assert ctx.stage_summary["kept_float"] == 2
    assert isinstance(out.model.classifier, torch.nn.Linear)
    assert round_trip(out, tmp_path / "m")[0] == 0.0


def test_torch_int8_of_a_pruned_model_round_trips(tiny_model_dir, splits, tmp_path):
    pruned = apply(sequence_bundle(tiny_model_dir), make_ctx(tmp_path, splits), kind="prune", method="ffn",
                   sparsity=0.5, scope="global", importance="magnitude")
    out = apply(pruned, make_ctx(tmp_path, splits, 1), kind="quantize", method="dynamic_int8")
    diff, manifest = round_trip(out, tmp_path / "m")
    assert diff == 0.0 and manifest["structure"]["intermediate_size"] != [64, 64]


@pytest.mark.parametrize("method,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_torch_casts(torch_bundle, splits, tmp_path, method, dtype):
    ctx = make_ctx(tmp_path, splits)
    out = apply(torch_bundle, ctx, kind="quantize", method=method)
    assert next(out.model.parameters()).dtype == dtype
    assert ctx.stage_summary["size_mb_after"] < 0.6 * ctx.stage_summary["size_mb_before"]
    assert round_trip(out, tmp_path / "m")[0] == 0.0
    assert next(load_bundle(tmp_path / "m").model.parameters()).dtype == dtype


def test_static_int8_on_pytorch_says_export_first(torch_bundle, splits, tmp_path):
    with pytest.raises(StageError, match="static_int8 runs on ONNX Runtime: add `- kind: export`"):
        apply(torch_bundle, make_ctx(tmp_path, splits), kind="quantize", method="static_int8")


def test_export_of_an_int8_model_is_refused(torch_bundle, splits, tmp_path):
    q = apply(torch_bundle, make_ctx(tmp_path, splits), kind="quantize", method="dynamic_int8")
    with pytest.raises(StageError, match="export a float model: put quantize after export"):
        apply(q, make_ctx(tmp_path, splits, 1), kind="export")


# ------------------------------------------------------------------- ONNX Runtime


@pytest.mark.parametrize("per_channel", [True, False])
def test_ort_dynamic_int8(onnx_bundle, splits, tmp_path, per_channel):
    ctx = make_ctx(tmp_path, splits, 1)
    out = apply(onnx_bundle, ctx, kind="quantize", method="dynamic_int8", per_channel=per_channel)
    summary = ctx.stage_summary
    assert summary["quantized_ops"]["QAttention"] == 2 and summary["quantized_ops"]["QEmbedLayerNormalization"] == 1
    assert summary["size_mb_after"] < summary["size_mb_before"] / 3  # embeddings are int8 too
    assert summary["vs_input"]["agreement"] >= 0.9
    diff, manifest = round_trip(out, tmp_path / "m")
    assert diff == 0.0 and manifest["onnx"]["quantization"]["per_channel"] is per_channel
    assert onnx_bundle.model.path != out.model.path and onnx_bundle.model.path.is_file()


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "entropy"])
def test_ort_static_int8_calibration_methods(onnx_bundle, splits, tmp_path, calibration):
    ctx = make_ctx(tmp_path, splits, 1)
    out = apply(onnx_bundle, ctx, kind="quantize", method="static_int8", calibration=calibration,
                calibration_items=16)
    summary = ctx.stage_summary
    assert summary["graph"] == "unfused export" and summary["quantized_matmuls"] == 12
    assert summary["calibration"] == {"method": calibration, "split": "train", "items": 16, "seed": 0,
                                      **({"percentile": 99.999} if calibration == "percentile" else {})}
    assert summary["quantized_ops"]["QuantizeLinear"] > 0 and summary["vs_input"]["agreement"] >= 0.9
    diff, manifest = round_trip(out, tmp_path / "m")
    assert diff == 0.0 and manifest["onnx"]["quantization"]["calibration"]["method"] == calibration


def test_static_int8_calibration_sample_is_seeded(onnx_bundle, splits, tmp_path):
    from lepton.stages.quantize import QuantizeConfig
    from lepton.stages.quantize.ort import calibration_inputs

    config = QuantizeConfig(method="static_int8", calibration_items=8)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    a = calibration_inputs(onnx_bundle, make_ctx(tmp_path, splits), config, names)
    b = calibration_inputs(onnx_bundle, make_ctx(tmp_path, splits), config, names)
    assert len(a) == 8 and all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert all(x["input_ids"].dtype == np.int64 for x in a)


def test_empty_calibration_set_is_an_error(onnx_bundle, splits, tmp_path):
    empty = Split(name="train", kind="sequence", texts=[], text_pairs=None, labels=None, sources=[])
    with pytest.raises(StageError, match=r"data.train \(the calibration set of stages.1\) has no examples"):
        apply(onnx_bundle, make_ctx(tmp_path, {**splits, "train": empty}, 1), kind="quantize",
              method="static_int8")


def test_calibration_set_of_another_task_is_an_error(onnx_bundle, splits, tmp_path):
    conll = load_split(DataSplitConfig(path=str(write_conll(tmp_path / "t.conll", 4))),
                       Columns(text=0, label=-1), name="train", kind="tokens")
    with pytest.raises(StageError, match=r"holds token-level \(CoNLL\) sentences, but the model does sequence"):
        apply(onnx_bundle, make_ctx(tmp_path, {**splits, "train": conll}, 1), kind="quantize", method="static_int8")
    pairs = Split(name="train", kind="sequence", texts=["a", "b"], text_pairs=["c", "d"], labels=None,
                  sources=["x:1", "x:2"])
    with pytest.raises(StageError, match="has sentence pairs, but the model classifies single sentences"):
        apply(onnx_bundle, make_ctx(tmp_path, {**splits, "train": pairs}, 1), kind="quantize", method="static_int8")
    with pytest.raises(StageError, match="static_int8 calibrates on data.train"):
        apply(onnx_bundle, make_ctx(tmp_path, {"dev": splits["dev"]}, 1), kind="quantize", method="static_int8")


def test_ort_fp16_and_bf16(onnx_bundle, splits, tmp_path):
    ctx = make_ctx(tmp_path, splits, 1)
    out = apply(onnx_bundle, ctx, kind="quantize", method="fp16")
    assert ctx.stage_summary["size_mb_after"] < 0.6 * ctx.stage_summary["size_mb_before"]
    assert ctx.stage_summary["vs_input"]["max_abs_diff"] < 1e-2
    assert round_trip(out, tmp_path / "m")[0] == 0.0
    with pytest.raises(StageError, match="bf16 is not available on ONNX Runtime's CPU provider"):
        apply(onnx_bundle, make_ctx(tmp_path, splits, 1), kind="quantize", method="bf16")


def test_quantizing_twice_is_refused(onnx_bundle, splits, tmp_path):
    q = apply(onnx_bundle, make_ctx(tmp_path, splits, 1), kind="quantize", method="dynamic_int8")
    with pytest.raises(StageError, match="already quantized"):
        apply(q, make_ctx(tmp_path, splits, 2), kind="quantize", method="static_int8")


def test_quantized_onnx_checksums_are_verified(onnx_bundle, splits, tmp_path):
    q = apply(onnx_bundle, make_ctx(tmp_path, splits, 1), kind="quantize", method="dynamic_int8")
    saved = save_artifact(q, tmp_path / "m")
    (saved / "model.onnx").write_bytes((saved / "model.onnx").read_bytes()[:-1])
    with pytest.raises(ArtifactError, match="model.onnx: checksum mismatch"):
        load_bundle(saved)
    assert (saved / MANIFEST).is_file()


# ------------------------------------------------------------------- CPU check and settings


def test_cpu_without_int8_instructions_warns(torch_bundle, splits, tmp_path, monkeypatch, caplog):
    from lepton.evaluation import environment

    real = environment.fingerprint

    def no_vnni(seed=None):
        env = real(seed)
        env.cpu_flags = {"avx2": True, "fma": True, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}
        return env

    monkeypatch.setattr(environment, "fingerprint", no_vnni)
    ctx = make_ctx(tmp_path, splits)
    with caplog.at_level(logging.WARNING, logger="lepton"):
        apply(torch_bundle, ctx, kind="quantize", method="dynamic_int8")
    assert ctx.stage_summary["int8_fast_here"] is False
    assert any("no AVX512-VNNI, AVX-VNNI or AMX-INT8" in r.getMessage() for r in caplog.records)


def test_settings_that_do_not_fit_the_method(tiny_model_dir, tmp_path):
    train = write_sentiment_tsv(tmp_path / "train.tsv", 8)
    raw = tiny_recipe(tiny_model_dir, train, train, tmp_path / "out")
    for stage, message in (({"method": "dynamic_int8", "calibration": "entropy"}, "applies to method static_int8 only"),
                           ({"method": "static_int8", "percentile": 99.9}, "calibration: percentile only"),
                           ({"method": "fp16", "per_channel": False}, "apply to int8 methods"),
                           ({"method": "int3"}, "method")):
        raw["stages"] = [{"kind": "quantize", **stage}]
        with pytest.raises(RecipeError, match=message):
            parse_recipe(raw)


# ------------------------------------------------------------------- weight-only, sensitivity, mixed precision


@pytest.mark.parametrize("bits", [4, 8])
def test_ort_weight_only(onnx_bundle, splits, tmp_path, bits):
    pytest.importorskip("onnx_ir")
    ctx = make_ctx(tmp_path, splits, 1)
    out = apply(onnx_bundle, ctx, kind="quantize", method="weight_only", bits=bits, group_size=16)
    assert ctx.stage_summary["quantized_ops"]["MatMulNBits"] == 6 and ctx.stage_summary["bits"] == bits
    assert ctx.stage_summary["vs_input"]["agreement"] >= 0.9
    diff, manifest = round_trip(out, tmp_path / "m")
    assert diff == 0.0 and manifest["onnx"]["quantization"]["bits"] == bits
    # packed int4 weights count as weights, not bytes
    assert for_bundle(out).parameter_counts()[0] == pytest.approx(for_bundle(onnx_bundle).parameter_counts()[0],
                                                                 rel=0.01)


def test_weight_only_on_pytorch_says_what_works(torch_bundle, splits, tmp_path):
    with pytest.raises(StageError, match="weight_only runs on ONNX Runtime.*int4 weight-only needs the mslk"):
        apply(torch_bundle, make_ctx(tmp_path, splits), kind="quantize", method="weight_only")


def test_sensitivity_ranks_every_layer(onnx_bundle, splits, tmp_path):
    ctx = make_ctx(tmp_path, splits, 1)
    apply(onnx_bundle, ctx, kind="quantize", method="static_int8", calibration_items=8, sensitivity=True,
          sensitivity_items=16)
    mixed = ctx.stage_summary["mixed_precision"]
    ranking = mixed["sensitivity"]["ranking"]
    assert mixed["metric"] == "accuracy" and mixed["items"] == 16 and mixed["layers"] == 12 == len(ranking)
    errors = [r["output_error"] for r in ranking]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert "kept_float" not in mixed  # no max_drop: report only


def test_max_drop_keeps_the_most_sensitive_layers_float(torch_bundle, splits, tmp_path, monkeypatch):
    """With a budget the all-int8 model misses, layers go back to float, most sensitive first."""
    from lepton.stages import quantize as q

    real = q.torch_quantize
    seen: list[frozenset] = []

    def spy(bundle, config, where, skip=frozenset()):
        seen.append(skip)
        return real(bundle, config, where, skip)

    monkeypatch.setattr(q, "torch_quantize", spy)
    ctx = make_ctx(tmp_path, splits)
    out = apply(torch_bundle, ctx, kind="quantize", method="dynamic_int8", max_drop=0.0,
                sensitivity_items=16, sensitivity=True)
    mixed = ctx.stage_summary["mixed_precision"]
    ranking = [r["layer"] for r in mixed["sensitivity"]["ranking"]]
    assert mixed["max_drop"] == 0.0 and mixed["kept_float"] == ranking[:len(mixed["kept_float"])]
    assert mixed["met"] is (mixed["drop"] <= 0.0)
    kept = set(mixed["kept_float"])
    assert all(isinstance(m, torch.nn.Linear) for name, m in out.model.named_modules() if name in kept)
    assert len(seen) == 1 + 14 + len(kept) + (1 if kept else 0)
    assert round_trip(out, tmp_path / "m")[0] == 0.0


def test_sensitivity_needs_labels(onnx_bundle, splits, tmp_path):
    unlabelled = Split(name="dev", kind="sequence", texts=["good", "bad"], text_pairs=None, labels=None,
                       sources=["x:1", "x:2"])
    with pytest.raises(StageError, match="sensitivity and max_drop need labelled data.dev"):
        apply(onnx_bundle, make_ctx(tmp_path, {**splits, "dev": unlabelled}, 1), kind="quantize",
              method="dynamic_int8", max_drop=0.5)


def test_smooth_quant_keeps_the_float_graph_equivalent(onnx_bundle, splits, tmp_path):
    import onnxruntime

    ctx = make_ctx(tmp_path, splits, 1)
    out = apply(onnx_bundle, ctx, kind="quantize", method="static_int8", smooth_quant=True, smooth_alpha=0.5,
                calibration_items=8)
    assert ctx.stage_summary["smooth_quant"]["smoothed_inputs"] > 0
    # Before quantization the smoothed graph computes what the model did: only the scales moved.
    smoothed = onnxruntime.InferenceSession(str(tmp_path / "stage-1" / "smoothed.onnx"),
                                            providers=["CPUExecutionProvider"])
    batch = batch_of(onnx_bundle.tokenizer, TEXTS)
    feed = {k: v.numpy() for k, v in batch.items()}
    assert np.abs(smoothed.run(["logits"], feed)[0] - for_bundle(onnx_bundle).logits(batch)).max() < 1e-4
    assert ctx.stage_summary["vs_input"]["agreement"] >= 0.9
    assert round_trip(out, tmp_path / "m")[0] == 0.0
