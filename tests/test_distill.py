"""The distill stage on tiny random-weight models: the loss, the layer mapping, the teacher cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lepton
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.models import load_tokenizer
from lepton.pipeline.recipe import TaskConfig, parse_recipe
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.distill import (
    DistillConfig,
    LossPlan,
    TeacherCache,
    TeacherInfo,
    default_layer_map,
    distill,
    distill_loss,
    plan_layers,
    teacher_batch,
)
from lepton.tasks import build_task, collate, encode
from lepton.tasks.loading import load_for_task
from tests.conftest import tiny_recipe, write_conll, write_sentiment_tsv

FAST_EVAL = {"batch_sizes": [1], "latency_items": 5, "warmup": 0, "throughput_batches": 1,
             "bootstrap": 100, "fixed_length": None, "robustness": False, "memory": False, "rounds": 1}


def _bundle(model_dir: Path, train: Path) -> tuple[ModelBundle, object]:
    split = load_split(DataSplitConfig(path=str(train)), Columns(text="sentence", label="label"), name="train")
    task = build_task(TaskConfig(kind="sequence_classification", text="sentence", label="label"), split)
    torch.manual_seed(0)
    model = load_for_task(str(model_dir), task)
    return ModelBundle(model=model, tokenizer=load_tokenizer(str(model_dir)), task=task), split


def test_default_layer_map_is_evenly_spaced() -> None:
    assert default_layer_map(3, 6) == {0: 1, 1: 3, 2: 5}
    assert default_layer_map(6, 6) == {i: i for i in range(6)}
    assert default_layer_map(2, 6) == {0: 2, 1: 5}
    assert default_layer_map(4, 6) == {0: 1, 1: 2, 2: 4, 3: 5}  # 1.5 and 4.5 round up


def test_loss_is_zero_for_a_student_equal_to_its_teacher(tiny_model_dir: Path, tmp_path: Path) -> None:
    bundle, split = _bundle(tiny_model_dir, write_sentiment_tsv(tmp_path / "t.tsv", 8))
    model = bundle.model.eval()
    model.set_attn_implementation("eager")
    enc = encode(split, bundle.task, bundle.tokenizer)
    batch = collate(enc, list(range(8)), bundle.tokenizer.pad_token_id)
    config = DistillConfig(teacher="self", temperature=1.0, alpha_task=0.0, alpha_kd=1.0,
                           alpha_hidden=1.0, alpha_attention=1.0)
    plan = LossPlan({0: 0, 1: 1}, [(0, 0), (1, 1)], [(0, 0), (1, 1)], torch.nn.ModuleDict())
    teacher = teacher_batch(model, batch, [0, 1], [0, 1])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    loss, parts = distill_loss(out, teacher, batch["attention_mask"], config, plan)
    assert float(loss.detach()) == 0.0
    assert parts == {"kd": 0.0, "hidden": 0.0, "attention": 0.0}
    # A different student is penalised, and T^2 scaling keeps the KD part comparable across T.
    with torch.no_grad():
        model.classifier.weight.add_(0.5)
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    _, parts = distill_loss(out, teacher, batch["attention_mask"], config, plan)
    assert parts["kd"] > 0 and parts["hidden"] == 0.0


def test_projection_bridges_different_widths(tiny_model_dir: Path, tmp_path: Path) -> None:
    bundle, split = _bundle(tiny_model_dir, write_sentiment_tsv(tmp_path / "t.tsv", 8))
    teacher = TeacherInfo(folder=tmp_path, described="wide", identity="x", layers=4, hidden_size=48,
                          heads=[2, 2, 3, 3], lepton=True)
    config = DistillConfig(teacher="wide", alpha_hidden=1.0, alpha_attention=1.0)
    plan, notes = plan_layers(config, bundle, teacher, "stages.0")
    assert plan.mapping == {0: 1, 1: 3}
    assert set(plan.projections) == {"0", "1"} and plan.projections["0"].out_features == 48
    assert plan.attention_pairs == [(0, 1)] and "3 heads" in notes[0]  # layer 3 has other heads
    with pytest.raises(lepton.LeptonError, match=r"stages\.0\.layer_map: teacher layer 7"):
        plan_layers(DistillConfig(teacher="wide", alpha_hidden=1.0, layer_map={0: 7}), bundle, teacher,
                    "stages.0")


def test_unknown_teacher_stage_suggests_the_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    bundle, split = _bundle(tiny_model_dir, write_sentiment_tsv(tmp_path / "t.tsv", 8))
    ctx = RunContext(splits={"train": split}, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path,
                     progress=False, stage_index=2, snapshots={"finetune": tmp_path / "nowhere"})
    with pytest.raises(lepton.LeptonError,
                       match=r"stages\.2\.teacher: 'finetun' is neither .*did you mean 'finetune'"):
        distill(bundle, DistillConfig(teacher="finetun"), ctx)


def test_bad_distill_settings_are_recipe_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "o")
    finetune = recipe["stages"][0]
    recipe["stages"] = [finetune, {"kind": "distill", "teacher": "finetune", "alpha_task": 0, "alpha_kd": 0}]
    with pytest.raises(lepton.LeptonError, match=r"stages\.1.*every alpha is 0"):
        parse_recipe(recipe, env={})
    recipe["stages"] = [finetune, {"kind": "distill", "teacher": "finetun"}]
    with pytest.raises(lepton.LeptonError, match=r"stages\.1\.teacher: 'finetun' .*did you mean 'finetune'"):
        parse_recipe(recipe, env={})
    recipe["stages"] = [{"kind": "distill", "teacher": "finetune"}, finetune]
    with pytest.raises(lepton.LeptonError, match="comes later"):
        parse_recipe(recipe, env={})
    recipe["stages"] = [{"kind": "distill", "teacher": str(tiny_model_dir)}]  # a folder is fine
    assert parse_recipe(recipe, env={}).stages[0].teacher == str(tiny_model_dir)


def _distill_recipe(model_dir: Path, train: Path, dev: Path, out: Path) -> dict:
    recipe = tiny_recipe(model_dir, train, dev, out)
    recipe["evaluate"] = FAST_EVAL
    recipe["stages"] = [
        {"kind": "finetune", "epochs": 2, "lr": 3e-3, "batch_size": 8},
        {"kind": "drop_layers", "keep": [1]},
        {"kind": "distill", "teacher": "finetune", "epochs": 2, "lr": 3e-3, "batch_size": 8,
         "alpha_hidden": 1.0, "alpha_attention": 1.0},
    ]
    return recipe


def test_finetune_drop_distill_and_the_teacher_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_sentiment_tsv(tmp_path / "train.tsv", 96, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 24, seed=2)
    recipe = _distill_recipe(tiny_model_dir, train, dev, tmp_path / "out")
    first = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summary = first.stages[2]["summary"]
    assert summary["teacher"] == "stage 'finetune'"
    assert summary["layer_map"] == {"0": 1}  # 1 of 2 layers: the top one
    assert set(summary["loss_parts_mean"]) == {"task", "kd", "hidden", "attention"}
    cache = summary["teacher_cache"]
    assert cache["status"] == "built" and Path(cache["path"]).is_file()
    assert cache["teacher_passes_avoided"] == 1.0  # 2 epochs, the teacher ran once
    assert [v.name for v in first.variants] == ["finetune", "drop_layers", "distill"]

    # The same run again: the fine-tuned teacher comes out bit-identical, so its outputs are reused.
    again = lepton.run(parse_recipe(recipe, env={}), progress=False, force=True)  # replaces the first
    cache2 = again.stages[2]["summary"]["teacher_cache"]
    assert cache2["status"] == "hit" and cache2["path"] == cache["path"]
    assert cache2["teacher_passes_avoided"] == 2.0
    assert "seconds_saved_estimate" in cache2
    w1 = lepton.load(tmp_path / "out" / "model").bundle.model.state_dict()
    assert lepton.load(tmp_path / "out" / "model").bundle.model.config.num_hidden_layers == 1
    assert not any("projection" in k for k in w1)


def test_distill_token_classification_with_a_live_teacher(tiny_model_dir: Path, tmp_path: Path) -> None:
    train, dev = write_conll(tmp_path / "train.txt", 40, seed=1), write_conll(tmp_path / "dev.txt", 12, seed=2)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out")
    recipe["task"] = {"kind": "token_classification", "max_length": 32}
    recipe["evaluate"] = FAST_EVAL
    recipe["stages"] = [
        {"kind": "finetune", "epochs": 2, "lr": 3e-3, "batch_size": 8},
        {"kind": "distill", "teacher": "finetune", "epochs": 1, "lr": 3e-3, "batch_size": 8,
         "alpha_task": 0.0, "alpha_hidden": 1.0, "cache_teacher": False},
    ]
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summary = report.stages[1]["summary"]
    assert summary["teacher_cache"]["status"] == "off"
    assert set(summary["loss_parts_mean"]) == {"kd", "hidden"}
    assert summary["steps"] == 5


def test_cached_token_logits_match_the_live_teacher(tiny_model_dir: Path, tmp_path: Path) -> None:
    split = load_split(DataSplitConfig(path=str(write_conll(tmp_path / "t.txt", 10))), Columns(text=0, label=-1),
                       name="train", kind="tokens")
    task = build_task(TaskConfig(kind="token_classification"), split)
    model = load_for_task(str(tiny_model_dir), task).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    enc = encode(split, task, tok)
    cache = TeacherCache.build(model, enc, 0, "cpu", True, hidden=[1], attention=[])
    idx = [3, 0, 7]
    batch = collate(enc, idx, 0)
    live = teacher_batch(model, batch, [1], [])
    cached = cache.for_batch(idx, int(batch["input_ids"].shape[1]), "cpu")
    mask = batch["attention_mask"].bool()
    assert torch.allclose(cached.logits[mask], live.logits[mask], atol=1e-5)
    assert torch.allclose(cached.hidden[1][mask], live.hidden[1][mask], atol=1e-2)  # stored as float16


def test_transfer_text_feeds_only_the_teacher_losses(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_sentiment_tsv(tmp_path / "train.tsv", 32, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 16, seed=2)
    transfer = write_sentiment_tsv(tmp_path / "more.tsv", 80, seed=5)  # its labels are not used
    recipe = _distill_recipe(tiny_model_dir, train, dev, tmp_path / "out")
    recipe["stages"][2].update({"alpha_hidden": 0.0, "alpha_attention": 0.0,
                                "transfer": {"path": str(transfer)}})
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summary = report.stages[2]["summary"]
    assert summary["transfer_examples"] == 80
    assert summary["train_examples"] == 32 + 80
    assert summary["items"] == 2 * (32 + 80)
    assert set(summary["loss_parts_mean"]) == {"task", "kd"}

    # Batches of transfer text alone carry no task loss (not NaN, not a made-up label).
    from lepton.stages.distill import TeacherBatch, distill_loss

    config = DistillConfig(teacher="x", alpha_task=1.0, alpha_kd=1.0)
    logits = torch.randn(4, 2)
    out = type("Out", (), {"loss": torch.tensor(float("nan")), "logits": logits})()
    loss, parts = distill_loss(out, TeacherBatch(logits=logits.clone(), hidden={}, attention={}),
                               torch.ones(4, 3), config, LossPlan({}, [], [], torch.nn.ModuleDict()),
                               use_task=False)
    assert set(parts) == {"kd"} and float(loss) == pytest.approx(0.0, abs=1e-6)
