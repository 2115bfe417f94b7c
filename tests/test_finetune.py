"""The finetune stage on tiny random-weight models: it learns, it repeats, it resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lepton
from lepton.pipeline.recipe import parse_recipe
from lepton.tasks import IGNORE, align_labels, train_batches
from tests.conftest import tiny_recipe, write_conll, write_sentiment_tsv


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[Path, Path]:
    return (write_sentiment_tsv(tmp_path / "train.tsv", 160, seed=1),
            write_sentiment_tsv(tmp_path / "dev.tsv", 40, seed=2))


def _run(recipe: dict, **kw: object) -> lepton.evaluation.scorecard.Report:  # type: ignore[name-defined]
    return lepton.run(parse_recipe(recipe, env={}), progress=False, **kw)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def test_finetune_learns_toy_sentiment(tiny_model_dir: Path, toy: tuple[Path, Path], tmp_path: Path) -> None:
    train, dev = toy
    report = _run(tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=4))
    card = report.variants[-1]
    assert card.name == "finetune"
    assert card.quality.metrics["accuracy"].value >= 0.9
    summary = report.stages[0]["summary"]
    assert summary["steps"] == 4 * 20  # 160 rows / batch 8, 4 epochs
    assert len(summary["evals"]) == 4  # once per epoch
    assert summary["best_step"] in [e["step"] for e in summary["evals"]]
    assert (tmp_path / "out" / "model" / "lepton.json").is_file()
    assert not (tmp_path / "out" / "work").exists()  # checkpoints removed after success


def test_same_seed_same_weights_other_seed_differs(tiny_model_dir: Path, toy: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    train, dev = toy
    a = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "a", epochs=1)
    b = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "b", epochs=1)
    c = {**tiny_recipe(tiny_model_dir, train, dev, tmp_path / "c", epochs=1), "seed": 7}
    for r in (a, b, c):
        _run(r)
    wa, wb, wc = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_grad_accumulation_counts_optimizer_steps(tiny_model_dir: Path, toy: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    train, dev = toy
    report = _run(tiny_recipe(tiny_model_dir, train, dev, tmp_path / "o", epochs=1, batch_size=4,
                              grad_accum=3))
    assert report.stages[0]["summary"]["steps"] == 14  # ceil(40 micro-batches / 3)
    assert report.stages[0]["summary"]["items"] == 160


def test_early_stopping_stops(tiny_model_dir: Path, toy: tuple[Path, Path], tmp_path: Path) -> None:
    train, dev = toy
    # A vanishing learning rate cannot improve dev loss measurably, so patience 1 ends the run early.
    report = _run(tiny_recipe(tiny_model_dir, train, dev, tmp_path / "o", epochs=3, lr=1e-12,
                              eval_every=2, early_stopping=1, metric="accuracy"))
    summary = report.stages[0]["summary"]
    assert summary["stopped_early"] is True
    assert summary["steps"] == 4
    assert summary["best_step"] == 2


def test_max_steps_and_eval_every(tiny_model_dir: Path, toy: tuple[Path, Path], tmp_path: Path) -> None:
    train, dev = toy
    report = _run(tiny_recipe(tiny_model_dir, train, dev, tmp_path / "o", epochs=5, max_steps=7,
                              eval_every=3))
    summary = report.stages[0]["summary"]
    assert summary["steps"] == 7
    assert [e["step"] for e in summary["evals"]] == [3, 6, 7]


def test_unknown_selection_metric_is_an_error(tiny_model_dir: Path, toy: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    train, dev = toy
    with pytest.raises(lepton.LeptonError, match="unknown metric 'acc'"):
        _run(tiny_recipe(tiny_model_dir, train, dev, tmp_path / "o", metric="acc"))


def test_token_classification_learns_toy_ner(tiny_model_dir: Path, tmp_path: Path) -> None:
    train, dev = write_conll(tmp_path / "train.txt", 60, seed=1), write_conll(tmp_path / "dev.txt", 20, seed=2)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=6, lr=3e-3)
    recipe["task"] = {"kind": "token_classification", "max_length": 32}
    report = _run(recipe)
    quality = report.variants[-1].quality
    assert quality.headline == "entity_f1"
    assert quality.metrics["entity_f1"].value >= 0.9
    predictor = lepton.load(tmp_path / "out" / "model")
    [result] = predictor.predict(["Alice visited Rome ."])
    assert [(e["entity"], e["text"]) for e in result["entities"]] == [("PER", "Alice"), ("LOC", "Rome")]


def test_align_labels_first_subtoken_only() -> None:
    # [CLS] w0 w0' w1 [SEP]
    assert align_labels([None, 0, 0, 1, None], [3, 5]) == [IGNORE, 3, IGNORE, 5, IGNORE]


def test_train_batches_cover_every_item_once_and_depend_on_epoch() -> None:
    lengths = [(i * 7) % 23 + 1 for i in range(101)]
    first = train_batches(lengths, 8, seed=0, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(101))
    assert first == train_batches(lengths, 8, seed=0, epoch=0)
    assert first != train_batches(lengths, 8, seed=0, epoch=1)
    # grouped by length: padding within a batch is far below random batching
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in first)
    plain = train_batches(lengths, 8, seed=0, epoch=0, group_by_length=False)
    waste_plain = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plain)
    assert waste < waste_plain / 2


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lepton", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir: Path, toy: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    import yaml

    train, dev = toy
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "unused", epochs=2, checkpoint_every=3)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(str(Path(__file__).resolve().parents[1] / p) for p in ("src", ""))}

    clean = _cli(["run", str(path), "-o", str(tmp_path / "clean"), "--no-progress"], env)
    assert clean.returncode == 0, clean.stderr

    # Killed at step 28 of 40 (epoch 2, between the checkpoints at steps 27 and 30).
    killed = _cli(["run", str(path), "-o", str(tmp_path / "resumed"), "--no-progress"],
                  {**env, "LEPTON_TEST_KILL_AT_STEP": "28"})
    assert killed.returncode == -9
    work = tmp_path / "resumed" / "work" / "stage-0-finetune"
    assert (work / "latest").read_text() == "ckpt-0000027"
    assert not (tmp_path / "resumed" / "model").exists()

    resumed = _cli(["run", str(path), "-o", str(tmp_path / "resumed"), "--resume", "--no-progress"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 27" in resumed.stderr

    a, b = _weights(tmp_path / "clean"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "clean" / "report.json").read_text())
    rb = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert ra["variants"][0]["quality"] == rb["variants"][0]["quality"]
    evals_a = ra["stages"][0]["summary"]["evals"]
    evals_b = rb["stages"][0]["summary"]["evals"]
    assert [(e["step"], e["accuracy"], e["loss"]) for e in evals_a] == \
        [(e["step"], e["accuracy"], e["loss"]) for e in evals_b]


def test_resume_refuses_a_changed_recipe(tiny_model_dir: Path, toy: tuple[Path, Path], tmp_path: Path) -> None:
    import yaml

    train, dev = toy
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "o", epochs=1, checkpoint_every=2)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(str(Path(__file__).resolve().parents[1] / p) for p in ("src", "")),
           "LEPTON_TEST_KILL_AT_STEP": "5"}
    assert _cli(["run", str(path), "--no-progress"], env).returncode == -9
    env.pop("LEPTON_TEST_KILL_AT_STEP")
    changed = _cli(["run", str(path), "--resume", "--set", "stages.0.lr=0.002"], env)
    assert changed.returncode == 2
    assert "recipe changed" in changed.stderr
    assert "Traceback" not in changed.stderr
