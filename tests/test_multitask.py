"""Multi-task fine-tuning: one shared encoder, a head per task, an artifact that predicts any task."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lepton
from lepton.core.errors import LeptonError, RecipeError
from lepton.pipeline.recipe import parse_recipe
from lepton.stages.multitask import plan_epoch, sampling_probabilities
from tests.conftest import tiny_recipe, write_conll, write_sentiment_tsv

FAST_EVAL = {"batch_sizes": [1], "latency_items": 5, "warmup": 0, "throughput_batches": 1,
             "bootstrap": 100, "fixed_length": None, "robustness": False, "memory": False, "rounds": 1}

TOPICS = {"sport": ["goal", "match", "team", "coach"], "money": ["bank", "stock", "market", "profit"],
          "tech": ["chip", "software", "robot", "laptop"]}


def write_topics(path: Path, n: int, seed: int, numeric: bool = False) -> Path:
    """A toy 3-topic set; ``numeric`` spells the labels 1-3 instead of names (an alias test)."""
    rng = random.Random(seed)
    names = list(TOPICS)
    lines = ["text\ttopic"]
    for _ in range(n):
        k = rng.randrange(3)
        words = rng.sample(TOPICS[names[k]], 2) + rng.sample(["news", "today", "report", "the", "new"], 2)
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{k + 1 if numeric else names[k]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def multitask_recipe(tiny_model_dir: Path, tmp_path: Path, **stage: object) -> dict:
    tree = tiny_recipe(tiny_model_dir, write_sentiment_tsv(tmp_path / "s-train.tsv", 96, seed=1),
                       write_sentiment_tsv(tmp_path / "s-dev.tsv", 24, seed=2), tmp_path / "out")
    topic_train = write_topics(tmp_path / "t-train.tsv", 60, seed=3)
    topic_dev = write_topics(tmp_path / "t-dev.tsv", 24, seed=4, numeric=True)
    tree["stages"] = [{
        "kind": "multitask", "main": "sentiment", "epochs": 6, "lr": 3e-3, "batch_size": 8,
        "tasks": {"topic": {
            "task": {"kind": "sequence_classification", "text": "text", "label": "topic",
                     "labels": {"sport": "sport", "money": "money", "tech": "tech",
                                "1": "sport", "2": "money", "3": "tech"}},
            "data": {"train": {"path": str(topic_train)}, "dev": {"path": str(topic_dev)}}}},
        **stage}]
    tree["evaluate"] = FAST_EVAL
    return tree


def test_sampling_probabilities_follow_the_temperature() -> None:
    assert sampling_probabilities([300, 100], "proportional", 9.0) == pytest.approx([0.75, 0.25])
    assert sampling_probabilities([300, 100], "uniform", 1.0) == pytest.approx([0.5, 0.5])
    t2 = sampling_probabilities([400, 100], "temperature", 2.0)
    assert t2 == pytest.approx([2 / 3, 1 / 3])  # sqrt(400) : sqrt(100)


def test_plan_is_task_homogeneous_seeded_and_covers_every_task() -> None:
    sizes, lengths = [50, 20], [[5] * 50, [7] * 20]
    probs = sampling_probabilities(sizes, "temperature", 2.0)
    plan = plan_epoch(sizes, lengths, 8, probs, seed=3, epoch=0, group_by_length=True)
    assert len(plan) == 7 + 3  # as many batches as the tasks' examples fill
    assert plan == plan_epoch(sizes, lengths, 8, probs, seed=3, epoch=0, group_by_length=True)
    assert plan != plan_epoch(sizes, lengths, 8, probs, seed=3, epoch=1, group_by_length=True)
    for t, local in plan:
        assert all(0 <= i < sizes[t] for i in local)
    assert {t for t, _ in plan} == {0, 1}
    # Temperature 2 oversamples the small task compared with its 2/7 share of the data.
    many = [t for e in range(40) for t, _ in plan_epoch(sizes, lengths, 8, probs, seed=3, epoch=e,
                                                         group_by_length=True)]
    share = many.count(1) / len(many)
    assert share == pytest.approx(probs[1], abs=0.05)
    assert share > 20 / 70 + 0.03


def test_multitask_run_trains_both_heads_and_the_artifact_predicts_each(tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    report = lepton.run(parse_recipe(multitask_recipe(tiny_model_dir, tmp_path)), progress=False)
    stage = report.stages[0]["summary"]
    assert stage["tasks"] == ["sentiment", "topic"]
    dev = stage["dev"]
    # Both toy tasks are learnable from their keywords; a shared encoder must learn both.
    assert dev["sentiment"]["accuracy"]["value"] >= 0.9
    assert dev["topic"]["accuracy"]["value"] >= 0.9
    low, high = dev["topic"]["accuracy"]["ci95"]
    assert low <= dev["topic"]["accuracy"]["value"] <= high
    assert any("topic/accuracy" in e for e in stage["evals"])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "### Tasks of stage 0 (multitask)" in markdown
    assert "| topic | 24 | accuracy |" in markdown

    folder = tmp_path / "out" / "model"
    manifest = json.loads((folder / "lepton.json").read_text())
    assert manifest["main_task"] == "sentiment"
    assert manifest["heads"]["topic"]["task"]["labels"] == ["sport", "money", "tech"]
    head_weights = load_file(str(folder / manifest["heads"]["topic"]["file"]))
    assert not any(k.startswith("bert.") for k in head_weights)  # the encoder is stored once
    assert "heads/topic.safetensors" in manifest["files"]
    card = (folder / "README.md").read_text()
    assert "## Tasks" in card and "| `topic` | sequence_classification | sport, money, tech | accuracy" in card
    assert 'model.predict(texts, task="topic")' in card

    model = lepton.load(folder)
    assert model.tasks == ["sentiment", "topic"]
    assert model.predict("great lovely movie")[0]["label"] == "1"
    assert model.predict(["superb nice acting"], task="sentiment")[0]["label"] == "1"
    topics = model.predict(["goal match news", "bank stock today", "chip robot report"], task="topic")
    assert [t["label"] for t in topics] == ["sport", "money", "tech"]
    with pytest.raises(LeptonError, match="'weather'"):
        model.predict("x", task="weather")

    # The loaded head shares the loaded encoder (one object), not a copy.
    head = model.bundle.heads["topic"].model
    assert head.bert is model.bundle.model.bert


def test_heads_survive_a_later_layer_drop(tiny_model_dir: Path, tmp_path: Path) -> None:
    tree = multitask_recipe(tiny_model_dir, tmp_path, epochs=2)
    tree["stages"].append({"kind": "drop_layers", "strategy": "bottom", "layers": 1})
    lepton.run(parse_recipe(tree), progress=False)
    model = lepton.load(tmp_path / "out" / "model")
    assert model.bundle.model.config.num_hidden_layers == 1
    assert len(model.bundle.heads["topic"].model.bert.encoder.layer) == 1
    assert len(model.predict(["goal match"], task="topic")) == 1


def test_multitask_with_ner_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    tree = multitask_recipe(tiny_model_dir, tmp_path, epochs=1)
    conll = write_conll(tmp_path / "ner.txt", 30)
    tree["stages"][0]["tasks"] = {"ner": {"task": {"kind": "token_classification"},
                                          "data": {"train": {"path": str(conll)}, "dev": {"path": str(conll)}}}}
    report = lepton.run(parse_recipe(tree), progress=False)
    assert "entity_f1" in report.stages[0]["summary"]["dev"]["ner"]
    model = lepton.load(tmp_path / "out" / "model")
    out = model.predict("Alice visited Paris .", task="ner")[0]
    assert out["tokens"] == ["Alice", "visited", "Paris", "."]


def test_tampered_head_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    lepton.run(parse_recipe(multitask_recipe(tiny_model_dir, tmp_path, epochs=1)), progress=False)
    path = tmp_path / "out" / "model" / "heads" / "topic.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LeptonError, match="topic.safetensors: checksum mismatch"):
        lepton.load(tmp_path / "out" / "model")


def test_recipe_errors_name_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    tree = multitask_recipe(tiny_model_dir, tmp_path)
    tree["stages"][0]["tasks"] = {}
    with pytest.raises(RecipeError, match="stages.0.tasks"):
        parse_recipe(tree)
    tree = multitask_recipe(tiny_model_dir, tmp_path)
    tree["stages"][0]["tasks"]["topic"]["task"]["lables"] = ["a"]
    with pytest.raises(RecipeError, match="stages.0.tasks.topic.task.lables"):
        parse_recipe(tree)
    tree = multitask_recipe(tiny_model_dir, tmp_path, main="topic")
    with pytest.raises(LeptonError, match="stages.0.tasks.topic"):
        lepton.run(parse_recipe(tree), progress=False)


def test_forward_routes_by_task_and_weights_the_loss(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from lepton.runtimes.heads import make_head
    from lepton.stages.multitask import _MultiTaskModel
    from lepton.tasks import TaskSpec

    torch.manual_seed(0)
    main = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2)
    spec = TaskSpec(kind="sequence_classification", labels=["a", "b", "c"], raw_labels=["a", "b", "c"])
    head = make_head(main, spec, "test")
    assert head.bert is main.bert
    mt = _MultiTaskModel({"main": main, "other": head}, [1.0, 0.5]).eval()
    batch = {"input_ids": torch.tensor([[101, 2204, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    out0 = mt(task_id=torch.tensor([0]), **batch, labels=torch.tensor([1]))
    out1 = mt(task_id=torch.tensor([1]), **batch, labels=torch.tensor([2]))
    assert out0.logits.shape == (1, 2) and out1.logits.shape == (1, 3)
    plain = head(**batch, labels=torch.tensor([2])).loss
    assert out1.loss.item() == pytest.approx(0.5 * plain.item(), rel=1e-6)


def test_server_serves_every_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lepton.serve import ServeSettings
    from lepton.serve.app import create_app

    lepton.run(parse_recipe(multitask_recipe(tiny_model_dir, tmp_path)), progress=False)
    folder = tmp_path / "out" / "model"
    local = lepton.load(folder)
    texts = ["goal match news", "bank stock today", "great lovely movie"]
    with TestClient(create_app(folder, ServeSettings(max_wait_ms=1))) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/model").json()["tasks"] == ["sentiment", "topic"]
        main = client.post("/v1/predict", json={"inputs": texts}).json()["predictions"]
        topic = client.post("/v1/tasks/topic/predict", json={"inputs": texts}).json()["predictions"]
        assert [p["label"] for p in main] == [p["label"] for p in local.predict(texts)]
        assert [p["label"] for p in topic] == [p["label"] for p in local.predict(texts, task="topic")]
        assert set(topic[0]["scores"]) == {"sport", "money", "tech"}
        assert client.post("/v1/tasks/weather/predict", json={"inputs": texts}).status_code == 404
        assert client.post("/v1/tasks/topic/predict", json={"inputs": []}).status_code == 422
        assert "/v1/tasks/topic/predict" in client.get("/openapi.json").json()["paths"]


def test_evaluate_and_compare_measure_an_extra_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lepton.cli import main

    lepton.run(parse_recipe(multitask_recipe(tiny_model_dir, tmp_path)), progress=False)
    folder = tmp_path / "out" / "model"
    config = lepton.pipeline.recipe.EvaluateConfig(**FAST_EVAL)
    report = lepton.evaluate(folder, task="topic", config=config)
    card = report.variants[0]
    assert card.n_examples == 24  # the topic task's own dev set, from the recipe
    assert card.quality.metrics["accuracy"].value >= 0.9
    assert [c.label for c in card.quality.per_class] == ["sport", "money", "tech"]
    main_card = lepton.evaluate(folder, config=config).variants[0]
    assert [c.label for c in main_card.quality.per_class] == ["0", "1"]
    with pytest.raises(RecipeError, match="task 'weather': this model predicts 'sentiment', 'topic'"):
        lepton.evaluate(folder, task="weather", config=config)
    assert main(["compare", str(folder), str(folder), "--task", "topic", "--limit", "8"]) == 0
    assert main(["evaluate", str(folder), "--task", "weather"]) == 2


def test_export_and_quantize_keep_every_head_in_one_graph(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    tree = multitask_recipe(tiny_model_dir, tmp_path)
    torch_run = lepton.run(parse_recipe(tree), out_dir=tmp_path / "torch", progress=False)
    assert torch_run.variants[-1].quality.metrics["accuracy"].value >= 0.9
    tree["stages"] += [{"kind": "export", "atol": 1e-3}, {"kind": "quantize", "method": "dynamic_int8"}]
    report = lepton.run(parse_recipe(tree), out_dir=tmp_path / "onnx", progress=False)
    export = report.stages[1]["summary"]
    assert export["heads_parity"]["topic"]["max_abs_diff"] < 1e-3
    assert export["heads_parity"]["topic"]["agreement"] == 1.0

    folder = tmp_path / "onnx" / "model"
    manifest = json.loads((folder / "lepton.json").read_text())
    assert manifest["format"] == "onnx"
    assert manifest["heads"]["topic"]["output"] == "logits.topic"
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "logits.topic"]
    # One encoder in the graph: as many attention blocks as the model has layers.
    assert sum(node.op_type in ("Attention", "QAttention", "Softmax") for node in graph.node) == 2

    onnx_model, torch_model = lepton.load(folder), lepton.load(tmp_path / "torch" / "model")
    texts = ["goal match news", "bank stock today", "chip robot report", "great lovely movie"]
    for task in ("sentiment", "topic"):
        got = [p["label"] for p in onnx_model.predict(texts, task=task)]
        assert got == [p["label"] for p in torch_model.predict(texts, task=task)], task
    card = lepton.evaluate(folder, task="topic", config=lepton.pipeline.recipe.EvaluateConfig(**FAST_EVAL)).variants[0]
    assert card.efficiency.runtime == "onnxruntime"
    assert card.quality.metrics["accuracy"].value >= 0.9


def test_a_recipe_can_start_from_a_saved_multitask_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    lepton.run(parse_recipe(multitask_recipe(tiny_model_dir, tmp_path, epochs=1)), progress=False)
    first = lepton.load(tmp_path / "out" / "model")
    tree = multitask_recipe(tiny_model_dir, tmp_path)
    tree["model"] = str(tmp_path / "out" / "model")
    tree["stages"] = [{"kind": "drop_layers", "strategy": "bottom", "layers": 1}]
    tree["output"] = {"dir": str(tmp_path / "second")}
    lepton.run(parse_recipe(tree), progress=False)
    second = lepton.load(tmp_path / "second" / "model")
    assert second.tasks == ["sentiment", "topic"]
    assert len(second.bundle.heads["topic"].model.bert.encoder.layer) == 1
    # The head came along unchanged (only the encoder lost a layer).
    a = first.bundle.heads["topic"].model.classifier.weight
    b = second.bundle.heads["topic"].model.classifier.weight
    assert torch.equal(a, b)


@pytest.mark.slow
def test_multitask_resume_after_sigkill_matches_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    tree = multitask_recipe(tiny_model_dir, tmp_path, epochs=2, checkpoint_every=4)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(str(Path(__file__).resolve().parents[1] / p) for p in ("src", ""))}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lepton", "run", str(path), "--no-progress", *args],
                              capture_output=True, text=True, env={**env, **extra}, timeout=300)

    clean = cli("-o", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    # 20 task-homogeneous batches an epoch: killed at step 27 of 40, after the checkpoint at 24.
    assert cli("-o", str(tmp_path / "resumed"), LEPTON_TEST_KILL_AT_STEP="27").returncode == -9
    resumed = cli("-o", str(tmp_path / "resumed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 24" in resumed.stderr
    for rel in ("model/model.safetensors", "model/heads/topic.safetensors"):
        a, b = load_file(str(tmp_path / "clean" / rel)), load_file(str(tmp_path / "resumed" / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


def test_gradual_pruning_runs_during_a_following_multitask_stage(tiny_model_dir: Path, tmp_path: Path) -> None:
    """multitask trains through the shared loop, so it applies gradual pruning's masks; the recipe
    check asks the stage (``trains``), not a list of kind names, and lets the pair through."""
    tree = multitask_recipe(tiny_model_dir, tmp_path, epochs=2)
    tree["stages"].insert(0, {"kind": "prune", "method": "magnitude", "sparsity": 0.5,
                              "schedule": "gradual", "start_step": 1, "end_step": 6, "update_every": 1})
    report = lepton.run(parse_recipe(tree), progress=False)
    multitask = next(s for s in report.stages if s["kind"] == "multitask")
    hooks = multitask["summary"]["train_hooks"]
    assert hooks[0]["hook"] == "prune" and hooks[0]["schedule"] == "gradual"
    assert hooks[0]["pruned_weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    model = lepton.load(tmp_path / "out" / "model")
    layer = model.bundle.model.bert.encoder.layer[0].intermediate.dense.weight
    assert 0.4 < float((layer == 0).float().mean()) < 0.6  # the saved weights carry the zeros
    assert len(model.predict(["goal match"], task="topic")) == 1
