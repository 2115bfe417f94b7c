"""The export stage and the ONNX Runtime runtime on tiny random-weight models: parity with PyTorch
(dynamic batch and sequence axes, fused and unfused graphs, pruned heads, NER), artifacts that load
through Lepton and plain onnxruntime and verify their checksums, the harness's figures, and recipes
that put a PyTorch stage after export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import lepton
from lepton.core.errors import ArtifactError, RecipeError, StageError
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.pipeline.artifact import MANIFEST, load_bundle, read_manifest, save_artifact
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes import for_bundle
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages import configs, handler_for
from tests.conftest import tiny_recipe, write_conll, write_sentiment_tsv
from tests.test_artifact import TEXTS, sequence_bundle, token_bundle


def sentiment_splits(folder: Path) -> dict:
    """Learnable toy train (48) and dev (24) splits."""
    cols = Columns(text="sentence", label="label")
    return {name: load_split(DataSplitConfig(path=str(write_sentiment_tsv(folder / f"{name}.tsv", n, seed=s))),
                             cols, name=name)
            for name, n, s in (("train", 48, 1), ("dev", 24, 2))}


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return sentiment_splits(tmp_path_factory.mktemp("data"))


def make_ctx(tmp_path: Path, splits: dict, index: int = 0) -> RunContext:
    return RunContext(splits=splits, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path,
                      progress=False, stage_dir=tmp_path / f"stage-{index}", stage_index=index)


def apply(bundle: ModelBundle, ctx: RunContext, **settings) -> ModelBundle:
    config = configs.get(settings["kind"]).model_validate(settings)
    return handler_for(config)(bundle, config, ctx)


def batch_of(tokenizer, texts, pairs=None) -> dict:
    return dict(tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def exported(tiny_model_dir, splits, tmp_path_factory) -> tuple[ModelBundle, ModelBundle, dict]:
    """(the PyTorch bundle, its export, the export's summary)."""
    torch_bundle = sequence_bundle(tiny_model_dir)
    ctx = make_ctx(tmp_path_factory.mktemp("export"), splits)
    onnx_bundle = apply(torch_bundle, ctx, kind="export")
    return torch_bundle, onnx_bundle, ctx.stage_summary


# ------------------------------------------------------------------- parity


def test_export_matches_pytorch_on_other_batch_and_sequence_sizes(exported):
    torch_bundle, onnx_bundle, summary = exported
    assert onnx_bundle.runtime == "onnxruntime"
    assert summary["optimized"] and summary["fused_ops"].get("Attention") == 2
    parity = summary["parity"]
    assert parity["split"] == "dev" and parity["compared"] == 24
    assert parity["max_abs_diff"] <= 1e-3 and parity["agreement"] == 1.0
    # Shapes the trace never saw: batch 1 and 5, lengths from 3 to ~20 tokens, padding inside.
    ort_rt, torch_rt = for_bundle(onnx_bundle), for_bundle(torch_bundle)
    for texts in (["ok"], TEXTS + ["a much longer sentence that runs on and on with many more words"]):
        batch = batch_of(torch_bundle.tokenizer, texts)
        assert np.abs(ort_rt.logits(batch) - torch_rt.logits(batch)).max() < 1e-4


def test_unoptimized_export_and_token_classification(tiny_model_dir, tmp_path):
    conll = write_conll(tmp_path / "dev.conll", 6)
    split = load_split(DataSplitConfig(path=str(conll)), Columns(text=0, label=-1), name="dev", kind="tokens")
    bundle = token_bundle(tiny_model_dir)
    ctx = make_ctx(tmp_path, {"dev": split})
    out = apply(bundle, ctx, kind="export", optimize=False)
    assert ctx.stage_summary["optimized"] is False and ctx.stage_summary["parity"]["max_abs_diff"] < 1e-4
    predictor = lepton.load(save_artifact(out, tmp_path / "ner"))
    reference = lepton.load(save_artifact(bundle, tmp_path / "ner-torch"))
    text = "Alice visited Paris ."
    assert predictor.predict(text)[0]["tags"] == reference.predict(text)[0]["tags"]


def test_parity_beyond_tolerance_stops_the_run(tiny_model_dir, splits, tmp_path):
    with pytest.raises(StageError, match=r"stages.0: ONNX parity failed: max \|logit difference\| .* > atol"):
        apply(sequence_bundle(tiny_model_dir), make_ctx(tmp_path, splits), kind="export", atol=1e-15)


def test_export_needs_real_inputs(tiny_model_dir, tmp_path):
    with pytest.raises(StageError, match="parity check needs real inputs"):
        apply(sequence_bundle(tiny_model_dir), make_ctx(tmp_path, {}), kind="export")


def test_pruned_heads_export_unfused_attention(tiny_model_dir, splits, tmp_path):
    from transformers import BertConfig, BertModel

    from lepton.models import load_tokenizer

    folder = tmp_path / "tiny4"
    BertModel(BertConfig(vocab_size=load_tokenizer(str(tiny_model_dir)).vocab_size, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(folder)
    bundle = apply(sequence_bundle(folder), make_ctx(tmp_path, splits), kind="prune", method="heads",
                   heads={0: [1, 2]})
    ctx = make_ctx(tmp_path, splits, 1)
    out = apply(bundle, ctx, kind="export")
    assert ctx.stage_summary["fuse_attention"] is False and "head counts" in ctx.stage_summary["note"]
    assert ctx.stage_summary["parity"]["max_abs_diff"] < 1e-4
    saved = save_artifact(out, tmp_path / "pruned-onnx")
    assert read_manifest(saved)["onnx"]["structure"]["num_attention_heads"] == [2, 4]
    batch = batch_of(bundle.tokenizer, TEXTS)
    assert np.abs(for_bundle(load_bundle(saved)).logits(batch) - for_bundle(bundle).logits(batch)).max() < 1e-4


# ------------------------------------------------------------------- runtime and artifact


def test_runtime_figures_match_pytorch(exported):
    torch_bundle, onnx_bundle, _ = exported
    ort_rt, torch_rt = for_bundle(onnx_bundle), for_bundle(torch_bundle)
    assert ort_rt.name == "onnxruntime" and ort_rt.device == "cpu"
    assert ort_rt.size_bytes() == onnx_bundle.model.path.stat().st_size
    # Random init leaves identical LayerNorm tensors, which the exporter stores once: the counts
    # agree to well under 1% here, exactly on trained weights.
    total, nonzero = ort_rt.parameter_counts()
    assert abs(total - torch_rt.parameter_counts()[0]) / total < 0.01 and 0 < nonzero <= total
    assert ort_rt.flops_per_item(20.0) == torch_rt.flops_per_item(20.0)


def test_onnx_artifact_round_trip_and_plain_onnxruntime(exported, tmp_path):
    import onnxruntime

    torch_bundle, onnx_bundle, _ = exported
    saved = save_artifact(onnx_bundle, tmp_path / "model", recipe={"name": "unit"})
    manifest = read_manifest(saved)
    assert manifest["runtime"] == "onnxruntime" and manifest["format"] == "onnx"
    assert manifest["loads_in_transformers"] is False
    assert {"model.onnx", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert "unfused_path" not in manifest["onnx"] and manifest["onnx"]["work"]["attention_width"] == 64
    assert not (saved / "model.safetensors").exists()

    predictor = lepton.load(saved)
    assert predictor.bundle.runtime == "onnxruntime"
    reference = lepton.load(save_artifact(torch_bundle, tmp_path / "torch"))
    got, want = predictor.predict(TEXTS), reference.predict(TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)

    # The file runs with nothing but onnxruntime and numpy.
    session = onnxruntime.InferenceSession(str(saved / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = torch_bundle.tokenizer(TEXTS, padding=True, return_tensors="np")
    logits = session.run(["logits"], {k: enc[k].astype(np.int64) for k in
                                      ("input_ids", "attention_mask", "token_type_ids")})[0]
    assert np.abs(logits - for_bundle(torch_bundle).logits(batch_of(torch_bundle.tokenizer, TEXTS))).max() < 1e-4


def test_onnx_artifact_checksums_catch_tampering(exported, tmp_path):
    saved = save_artifact(exported[1], tmp_path / "model")
    with (saved / "model.onnx").open("r+b") as fh:
        fh.seek(-10, 2)
        fh.write(b"\x00" * 10)
    with pytest.raises(ArtifactError, match="model.onnx: checksum mismatch"):
        lepton.load(saved)


def test_torch_predictor_output_unchanged(tiny_model_dir, tmp_path):
    """Predictor now runs through the runtime; PyTorch results are those of the model itself."""
    bundle = sequence_bundle(tiny_model_dir)
    predictor = lepton.load(save_artifact(bundle, tmp_path / "m"))
    enc = bundle.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        probs = torch.softmax(bundle.model.eval()(**enc).logits, -1).numpy()
    results = predictor.predict(TEXTS)
    assert [r["score"] for r in results] == pytest.approx(probs.max(-1).tolist(), abs=1e-6)


# ------------------------------------------------------------------- recipes


def test_pytorch_stage_after_export_is_a_recipe_error(tiny_model_dir, tmp_path):
    train = write_sentiment_tsv(tmp_path / "train.tsv", 8)
    raw = tiny_recipe(tiny_model_dir, train, train, tmp_path / "out")
    raw["stages"] = [{"kind": "export"}, {"kind": "finetune", "epochs": 1}]
    with pytest.raises(RecipeError, match=r"stages.1 \(finetune\) needs a torch model.*move it before the export"):
        parse_recipe(raw)
    raw["stages"] = [{"kind": "finetune", "epochs": 1}, {"kind": "export"},
                     {"kind": "quantize", "method": "dynamic_int8"}]
    assert [s.kind for s in parse_recipe(raw).stages] == ["finetune", "export", "quantize"]


def test_run_finetune_export_quantize(tiny_model_dir, tmp_path):
    """One recipe through lepton.run: every variant is measured by the same harness."""
    train = write_sentiment_tsv(tmp_path / "train.tsv", 32, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 16, seed=2)
    raw = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    raw["stages"] += [{"kind": "export"}, {"kind": "quantize", "method": "dynamic_int8"}]
    raw["evaluate"].update(robustness=False, memory=False)
    report = lepton.run(parse_recipe(raw), progress=False)
    assert [c.efficiency.runtime for c in report.variants] == ["torch", "onnxruntime", "onnxruntime"]
    assert report.baseline == "finetune"
    names = {c.name: c for c in report.variants}
    assert names["export"].quality.metrics["accuracy"].value == names["finetune"].quality.metrics["accuracy"].value
    assert names["quantize"].efficiency.size_mb < names["export"].efficiency.size_mb / 2
    manifest = json.loads((tmp_path / "out" / "model" / MANIFEST).read_text())
    assert manifest["format"] == "onnx" and manifest["history"][-1]["summary"]["method"] == "dynamic_int8"
    assert load_bundle(tmp_path / "out" / "model").runtime == "onnxruntime"
