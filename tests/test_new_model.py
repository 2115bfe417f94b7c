"""``model: {new: marian, ...}``: a translation Transformer that Lepton builds (tokenizer trained on
the recipe's training pairs, random weights) and trains with the one training loop (label
smoothing, keep-best on dev BLEU, exact resume after a kill). Toy word-for-word pairs from
tests/gen_tiny.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lepton
from lepton.core.errors import RecipeError
from lepton.models.new_model import NewModelConfig, build_new_model, train_tokenizer
from lepton.pipeline.recipe import parse_recipe
from tests.gen_tiny import toy_pairs, write_pairs_tsv

SENTENCES = ["A man rides a bike down the street.", "Zwei Hunde spielen im Schnee, während ein Kind zuschaut.",
             "Ein Mädchen in einem rosa Kleid läuft über die Wiese."] * 20


def _recipe(tmp: Path, *, new: dict | None = None, stages: list[dict] | None = None) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"schema_version": 1,
            "model": new or {"new": "marian", "preset": "tiny", "vocab_size": 120},
            "task": {"kind": "generation", "max_length": 32, "max_target_length": 32,
                     "generation": {"max_new_tokens": 12}},
            "data": {"train": {"path": str(write_pairs_tsv(tmp / "train.tsv", 200, 0))},
                     "dev": {"path": str(write_pairs_tsv(tmp / "dev.tsv", 12, 1))}},
            "stages": stages or [{"kind": "finetune", "epochs": 2, "lr": 3e-3, "batch_size": 16, "warmup": 5,
                                  "label_smoothing": 0.1, "metric": "bleu", "dev_items": 8}],
            "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False},
            "output": {"dir": str(tmp / "out")}}


def test_the_tokenizer_trained_from_data_round_trips_and_closes_with_eos() -> None:
    config = NewModelConfig(new="marian", preset="tiny", vocab_size=200)
    tok = train_tokenizer(config, SENTENCES)
    assert len(tok) <= 200
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
    for text in set(SENTENCES):
        ids = tok(text)["input_ids"]
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok(text_target=text)["input_ids"] == ids  # one shared vocabulary for source and target
    unigram = train_tokenizer(config.model_copy(update={"tokenizer": "unigram"}), SENTENCES)
    assert unigram.decode(unigram(SENTENCES[1])["input_ids"], skip_special_tokens=True) == SENTENCES[1]


def test_the_built_folder_loads_in_plain_transformers_and_is_reused_for_the_same_inputs(tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    config = NewModelConfig(new="marian", preset="tiny", d_model=32, heads=2, vocab_size=150)
    folder = build_new_model(config, SENTENCES, tmp_path / "m", seed=3)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert type(model).__name__ == "MarianMTModel"
    assert model.config.d_model == 32 and model.config.encoder_layers == 2
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(folder))
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    first = (folder / "model.safetensors").read_bytes()
    inode = (folder / "model.safetensors").stat().st_ino
    assert build_new_model(config, SENTENCES, folder, seed=3) == folder
    assert (folder / "model.safetensors").stat().st_ino == inode  # reused, not written again
    build_new_model(config, SENTENCES, folder, seed=4)  # another seed: other weights
    assert (folder / "model.safetensors").read_bytes() != first
    with pytest.raises(ValueError, match="multiple of heads"):
        NewModelConfig(new="marian", d_model=30, heads=4)


def test_a_recipe_builds_trains_selects_on_dev_bleu_and_the_artifact_generates_the_same(tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    report = lepton.run(parse_recipe(_recipe(tmp_path), env={}), progress=False)
    summary = report.stages[0]["summary"]
    assert summary["selection_metric"] == "bleu"
    assert [set(e) >= {"bleu", "loss"} for e in summary["evals"]] == [True, True]
    assert summary["best_metric"] == max(e["bleu"] for e in summary["evals"])
    times = [e["train_seconds"] for e in summary["evals"]]  # the training curve's time axis
    assert 0 < times[0] <= times[1] <= summary["train_seconds"]
    assert report.recipe["model"]["new"] == "marian"

    saved = tmp_path / "out" / "model"
    manifest = json.loads((saved / "lepton.json").read_text())
    assert manifest["source_model"].startswith("new:marian")
    prompts = [a for a, _ in toy_pairs(6, 5)]
    tok = AutoTokenizer.from_pretrained(saved)  # trained on sources and targets: neither side is unknown
    assert all(tok.unk_token_id not in tok(a + " " + b)["input_ids"] for a, b in toy_pairs(6, 5))
    ours = lepton.load(saved).predict(prompts)
    plain = AutoModelForSeq2SeqLM.from_pretrained(saved).eval()
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ids = plain.generate(**batch, max_new_tokens=12, num_beams=1, do_sample=False)
    assert [o["generated_text"] for o in ours] == [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]


def test_seq2seq_training_feeds_the_source_to_the_encoder_and_the_target_to_the_decoder(tmp_path: Path) -> None:
    from lepton.runtimes.bundle import RunContext
    from lepton.stages.decoder_common import training_data

    recipe = parse_recipe(_recipe(tmp_path), env={})
    from lepton.pipeline.api import build_task, load_splits, starting_model

    splits = load_splits(recipe)
    task = build_task(recipe.task, splits["train"])
    bundle = starting_model(recipe, task, "cpu", work=tmp_path / "work", train=splits["train"])
    ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path / "work")
    train, dev = training_data(bundle, ctx)
    tok = bundle.tokenizer
    assert train.input_ids[0] == tok(splits["train"].texts[0])["input_ids"]
    assert train.labels[0] == tok(text_target=splits["train"].labels[0])["input_ids"]
    assert dev is not None and len(dev) == 12


def test_label_smoothing_zero_is_the_models_own_loss_and_more_is_the_smoothed_cross_entropy() -> None:
    from lepton.stages.training_decoder import smoothed_loss

    config = NewModelConfig(new="marian", preset="tiny", vocab_size=150)
    tok = train_tokenizer(config, SENTENCES)
    from lepton.models.new_model import build_model

    model = build_model(config, len(tok), seed=0).eval()
    batch = dict(tok(SENTENCES[:3], text_target=SENTENCES[3:6], return_tensors="pt", padding=True))
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tok.pad_token_id, -100)
    with torch.no_grad():
        own = model(**batch).loss
        assert torch.allclose(smoothed_loss(0.0, True)(model, batch, [0, 1, 2]), own, atol=1e-5)
        smooth = smoothed_loss(0.1, True)(model, batch, [0, 1, 2])
        logp = model(**batch).logits.log_softmax(-1)
        mask = batch["labels"] != -100
        nll = -logp.gather(-1, batch["labels"].clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].mean()
        uniform = -logp.mean(-1)[mask].mean()
    assert torch.allclose(smooth, 0.9 * nll + 0.1 * uniform, atol=1e-5)


def test_bleu_selection_without_dev_data_and_smoothing_on_a_classifier_are_refused(tmp_path: Path,
                                                                                   tiny_model_dir: Path) -> None:
    recipe = _recipe(tmp_path)
    recipe["data"]["test"] = recipe["data"].pop("dev")  # scored on test; nothing to select on
    recipe["evaluate"]["split"] = "test"
    with pytest.raises(lepton.LeptonError, match="metric: bleu selects on dev data"):
        lepton.run(parse_recipe(recipe, env={}), progress=False)
    with pytest.raises(RecipeError, match="multiple of heads"):
        parse_recipe(_recipe(tmp_path / "b", new={"new": "marian", "d_model": 30}), env={})
    with pytest.raises(RecipeError) as err:  # one line about the mapping, not about strings
        parse_recipe(_recipe(tmp_path / "huge", new={"new": "marian", "preset": "huge"}), env={})
    assert "model.preset: Input should be 'tiny', 'small' or 'base'" in str(err.value)
    assert "model.str" not in str(err.value)

    from tests.conftest import tiny_recipe, write_sentiment_tsv

    train, dev = write_sentiment_tsv(tmp_path / "s.tsv", 16, seed=1), write_sentiment_tsv(tmp_path / "d.tsv", 8, seed=2)
    classifier = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "c", label_smoothing=0.1)
    with pytest.raises(lepton.LeptonError, match="label_smoothing: built for generative models"):
        lepton.run(parse_recipe(classifier, env={}), progress=False)


@pytest.mark.slow
def test_training_a_new_model_resumes_exactly_after_a_kill(tmp_path: Path) -> None:
    import yaml
    from safetensors.torch import load_file

    recipe = _recipe(tmp_path, stages=[{"kind": "finetune", "epochs": 2, "lr": 3e-3, "batch_size": 16,
                                        "warmup": 5, "label_smoothing": 0.1, "checkpoint_every": 4}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(Path(__file__).resolve().parents[1] / p) for p in ("src", ""))}

    def cli(args: list[str], extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lepton", *args], capture_output=True, text=True,
                              env={**env, **(extra or {})}, timeout=300)

    assert cli(["run", str(path), "-o", str(tmp_path / "clean"), "--no-progress"]).returncode == 0
    killed = cli(["run", str(path), "-o", str(tmp_path / "resumed"), "--no-progress"],
                 {"LEPTON_TEST_KILL_AT_STEP": "18"})
    assert killed.returncode == -9
    resumed = cli(["run", str(path), "-o", str(tmp_path / "resumed"), "--resume", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 16" in resumed.stderr
    a = load_file(str(tmp_path / "clean" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sequence_kd", [False, True], ids=["token-kd", "sequence-kd"])
def test_a_smaller_student_distilled_from_the_trained_model(sequence_kd: bool, tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    stages = [{"kind": "finetune", "name": "teacher", "epochs": 2, "lr": 3e-3, "batch_size": 16, "warmup": 5},
              {"kind": "drop_layers", "keep": [0], "decoder_keep": [1]},
              {"kind": "distill", "teacher": "teacher", "epochs": 1, "lr": 2e-3, "batch_size": 16,
               "sequence_kd": sequence_kd, "alpha_kd": 0.5, "alpha_task": 0.5}]
    recipe = _recipe(tmp_path, stages=stages)
    recipe["evaluate"]["baseline"] = False
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    distill = report.stages[-1]["summary"]
    assert distill["teacher"] == "stage 'teacher'" and distill["epochs_run"] == 1
    if sequence_kd:
        assert distill["sequence_kd"]["examples"] == 200
    else:
        assert "sequence_kd" not in distill and distill["kd"].startswith("token-level")
    saved = tmp_path / "out" / "model"
    plain = AutoModelForSeq2SeqLM.from_pretrained(saved)
    assert plain.config.encoder_layers == 1 and plain.config.decoder_layers == 1


def test_sequence_kd_is_refused_for_a_classifier(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tests.conftest import tiny_recipe, write_sentiment_tsv

    train, dev = write_sentiment_tsv(tmp_path / "s.tsv", 16, seed=1), write_sentiment_tsv(tmp_path / "d.tsv", 8, seed=2)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "c")
    recipe["stages"] = [{"kind": "finetune", "name": "t", "epochs": 1},
                        {"kind": "distill", "teacher": "t", "epochs": 1, "sequence_kd": True}]
    with pytest.raises(lepton.LeptonError, match="sequence_kd: sequence-level distillation is for encoder-decoders"):
        lepton.run(parse_recipe(recipe, env={}), progress=False)
