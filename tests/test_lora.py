"""finetune with method lora/adalora (peft) on tiny random-weight models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lepton
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.models import load_tokenizer
from lepton.pipeline.recipe import TaskConfig, parse_recipe
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.finetune import FinetuneConfig, LoraSettings, adapter_config, wrap_with_adapters
from lepton.stages.training import TrainJob, train
from lepton.tasks import build_task, collate, encode
from lepton.tasks.loading import load_for_task
from tests.conftest import spec_for, tiny_recipe, write_sentiment_tsv

pytest.importorskip("peft")

FAST_EVAL = {"batch_sizes": [1], "latency_items": 5, "warmup": 0, "throughput_batches": 1,
             "bootstrap": 100, "fixed_length": None, "robustness": False, "memory": False, "rounds": 1}


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[Path, Path]:
    return (write_sentiment_tsv(tmp_path / "train.tsv", 96, seed=1),
            write_sentiment_tsv(tmp_path / "dev.tsv", 24, seed=2))


def test_lora_freezes_the_base_until_merge_and_merge_keeps_outputs(tiny_model_dir: Path, toy: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    split = load_split(DataSplitConfig(path=str(toy[0])), Columns(text="sentence", label="label"), name="train")
    task = build_task(TaskConfig(kind="sequence_classification", text="sentence", label="label"), split)
    torch.manual_seed(0)
    model = load_for_task(str(tiny_model_dir), task)
    bundle = ModelBundle(model=model, tokenizer=load_tokenizer(str(tiny_model_dir)), task=task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FinetuneConfig(method="lora", lora={"r": 4}, epochs=1, lr=1e-2, batch_size=16)
    assert isinstance(config.lora, LoraSettings)
    peft_model = wrap_with_adapters(model, adapter_config("lora", config.lora, model, 6, "stages.0.lora"),
                                    "stages.0.lora")
    ctx = RunContext(splits={"train": split}, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path,
                     progress=False)
    enc = encode(split, task, bundle.tokenizer)
    train(bundle, config, ctx, TrainJob(data=enc, model=peft_model))

    state = peft_model.state_dict()
    for key, value in before.items():
        if key.startswith("classifier."):  # the head trains as a copy beside the frozen original
            wrapped = key.replace("classifier.", "classifier.original_module.")
            assert torch.equal(state["base_model.model." + wrapped], value)
            continue
        wrapped = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        live = state.get("base_model.model." + key, state.get("base_model.model." + wrapped))
        assert live is not None, key
        assert torch.equal(live, value), f"{key} changed before the merge"
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in state.items())

    batch = collate(enc, list(range(16)), bundle.tokenizer.pad_token_id, with_labels=False)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()
        got = merged(**batch).logits
    assert not any("lora" in k for k in merged.state_dict())
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.equal(merged.bert.encoder.layer[0].attention.self.query.weight,
                           before["bert.encoder.layer.0.attention.self.query.weight"])


def test_lora_stage_merges_saves_the_adapter_and_reports_the_share(tiny_model_dir: Path, toy: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    from peft import PeftModel

    train_path, dev = toy
    recipe = tiny_recipe(tiny_model_dir, train_path, dev, tmp_path / "out", method="lora", epochs=2, lr=5e-3,
                         lora={"r": 4, "alpha": 8})
    recipe["evaluate"] = FAST_EVAL
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summary = report.stages[0]["summary"]
    assert summary["method"] == "lora" and summary["merged"] is True
    assert 0 < summary["trainable_share"] < 0.05
    assert summary["trainable_params"] == summary["adapter_params"] + 32 * 2 + 2  # + the head
    assert summary["target_modules"] == ["query", "value"] and summary["modules_to_save"] == ["classifier"]
    adapter = tmp_path / "out" / "adapter" / "finetune"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    final = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not any("lora" in k for k in final)
    # Untargeted weights are the pretrained ones; targeted ones hold the merged update.
    assert torch.equal(final["bert.encoder.layer.0.attention.self.key.weight"],
                       start["encoder.layer.0.attention.self.key.weight"])
    assert not torch.equal(final["bert.encoder.layer.0.attention.self.query.weight"],
                           start["encoder.layer.0.attention.self.query.weight"])

    # The saved adapter on the starting model reproduces the merged artifact.
    predictor = lepton.load(tmp_path / "out" / "model")
    base = load_for_task(str(tiny_model_dir), spec_for("sequence_classification", predictor.labels))
    restored = PeftModel.from_pretrained(base, str(adapter)).eval()
    enc = predictor.bundle.tokenizer(["good movie", "awful plot really"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(restored(**enc).logits, predictor.bundle.model(**enc).logits, atol=1e-5)


def test_adalora_allocates_ranks_and_merges(tiny_model_dir: Path, toy: tuple[Path, Path], tmp_path: Path) -> None:
    train_path, dev = toy
    recipe = tiny_recipe(tiny_model_dir, train_path, dev, tmp_path / "out", method="adalora", epochs=2, lr=5e-3,
                         adalora={"init_r": 6, "target_r": 2, "delta_t": 2})
    recipe["evaluate"] = FAST_EVAL
    summary = lepton.run(parse_recipe(recipe, env={}), progress=False).stages[0]["summary"]
    assert summary["method"] == "adalora" and summary["merged"] is True
    ranks = summary["adalora_ranks"]
    assert len(ranks) == 4 and sum(ranks.values()) <= 4 * 2  # budget: average target_r
    assert (tmp_path / "out" / "adapter" / "finetune" / "adapter_config.json").is_file()


def test_lora_target_modules_that_do_not_exist(tiny_model_dir: Path, toy: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir, *toy, tmp_path / "out", method="lora",
                         lora={"target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(lepton.LeptonError, match=r"stages\.0\.lora\.target_modules: .*named: .*query"):
        lepton.run(parse_recipe(recipe, env={}), progress=False)


def test_adapter_settings_need_their_method(tiny_model_dir: Path, toy: tuple[Path, Path], tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir, *toy, tmp_path / "out", lora={"r": 4})
    with pytest.raises(lepton.LeptonError, match="lora settings apply to method: lora"):
        parse_recipe(recipe, env={})
    recipe = tiny_recipe(tiny_model_dir, *toy, tmp_path / "out", method="adalora",
                         adalora={"init_r": 4, "target_r": 8})
    with pytest.raises(lepton.LeptonError, match="target_r"):
        parse_recipe(recipe, env={})
