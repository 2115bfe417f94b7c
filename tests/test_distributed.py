"""Data-parallel training: two gloo processes on CPU train what one process trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lepton
from lepton.cli import main
from lepton.core.distributed import launch, shard
from lepton.pipeline.recipe import parse_recipe
from tests.conftest import ROOT, tiny_recipe, write_sentiment_tsv


@pytest.fixture(scope="module")
def still_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout: two processes then match one to float rounding."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _recipe(model: Path, tmp_path: Path) -> dict:
    # 91 examples in batches of 5: every batch splits 3/2 over two ranks (unequal slices), and
    # the last batch holds one example (rank 1's slice is empty).
    train = write_sentiment_tsv(tmp_path / "train.tsv", 91, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 30, seed=2)
    recipe = tiny_recipe(model, train, dev, tmp_path / "unused", epochs=2, batch_size=5, keep_best=False)
    # A second training stage: grad accumulation (DDP's no_sync), eval_every, keep-best.
    recipe["stages"].append({"kind": "finetune", "name": "again", "epochs": 1, "lr": 1e-3,
                             "batch_size": 6, "grad_accum": 2, "eval_every": 3})
    recipe["evaluate"].update(memory=False, robustness=False)
    return recipe


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}


def _run_in_two_processes(recipe: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """`lepton run RECIPE --nproc 2 -o TMP/two` in a child process."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return subprocess.run([sys.executable, "-m", "lepton", "run", str(path), "--nproc", "2",
                           "-o", str(tmp_path / "two"), "--no-progress"],
                          check=False, capture_output=True, text=True, env=_env(), timeout=300)


@pytest.mark.slow
def test_two_processes_train_what_one_trains(still_model: Path, tmp_path: Path) -> None:
    recipe = _recipe(still_model, tmp_path)
    one = lepton.run(parse_recipe(recipe, env={}), out_dir=tmp_path / "one", progress=False)

    two = _run_in_two_processes(recipe, tmp_path)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("report:") == 1  # one process reports
    assert "Traceback" not in two.stderr

    out = tmp_path / "two"
    assert (out / "model" / "lepton.json").is_file()
    assert not (out / "work").exists()  # rank 1's side folder went with it
    log = (out / "run.log").read_text()
    assert log.count("wrote ") == 1 and "data-parallel: 2 processes (gloo)" in log

    # Final weights: a wrong loss weighting of the unequal slices moves them by ~1e-2.
    a, b = load_file(str(tmp_path / "one" / "model" / "model.safetensors")), load_file(
        str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst

    report = json.loads((out / "report.json").read_text())
    for mine, theirs in zip(report["stages"], one.stages):
        assert mine["summary"]["world_size"] == 2 and theirs["summary"]["world_size"] == 1
        assert mine["summary"]["steps"] == theirs["summary"]["steps"]
        assert mine["summary"]["items"] == theirs["summary"]["items"] == 91 * mine["summary"]["epochs_run"]
        assert mine["summary"]["best_step"] == theirs["summary"]["best_step"]
        evals = [(e["step"], e["accuracy"]) for e in mine["summary"]["evals"]]
        assert evals == [(e["step"], e["accuracy"]) for e in theirs["summary"]["evals"]]
        for x, y in zip(mine["summary"]["evals"], theirs["summary"]["evals"]):
            assert x["loss"] == pytest.approx(y["loss"], abs=1e-4)
    assert report["variants"][-1]["quality"]["metrics"]["accuracy"]["value"] == \
        one.variants[-1].quality.metrics["accuracy"].value


def test_shard_weights_make_the_mean_of_the_whole_batch() -> None:
    losses = torch.arange(1.0, 8.0) ** 2  # per-example losses of a batch of 7
    batch = list(range(7))
    for world in (2, 3, 8):
        parts = [shard(batch, part=r, parts=world) for r in range(world)]
        real = [idx for idx, w in parts if w > 0]
        assert sorted(i for idx in real for i in idx) == batch  # every example once
        # What DDP computes: the mean over ranks of each rank's weighted slice mean.
        averaged = sum(w * losses[idx].mean() for idx, w in parts) / world
        assert float(averaged) == pytest.approx(float(losses.mean()))
    assert shard(batch, part=0, parts=1) == (batch, 1.0)


def test_nproc_zero_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", str(tmp_path / "none.yaml"), "--nproc", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lepton: error: --nproc 0: give a process count of 1 or more"]


def test_a_bad_recipe_fails_once_before_any_process_starts(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("schema_version: 1\ntask: {kind: sequence_classification}\nstages: []\n")
    assert main(["run", str(path), "--nproc", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lepton: error:") and "data" in err[0]


# The launcher with stand-in processes (each a few lines of Python; RANK tells them apart).
FAKE = (sys.executable, "-c", "import os, sys, time\nrank = int(os.environ['RANK'])\n" + "{}")


def test_a_failed_process_is_one_line_and_stops_the_others(capfd: pytest.CaptureFixture[str]) -> None:
    # Rank 1 fails with a Lepton error while rank 0 would wait forever in a collective.
    body = ("if rank: print('lepton: error: data.train: cannot read x.tsv', file=sys.stderr); sys.exit(2)\n"
            "time.sleep(60)")
    code = launch([], 2, grace_s=0.5, program=(*FAKE[:2], FAKE[2].format(body)))
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["lepton: error: process 1 of 2 failed (exit code 2): data.train: cannot read x.tsv"]


def test_rank_0s_own_error_is_not_repeated(capfd: pytest.CaptureFixture[str]) -> None:
    body = ("print('lepton: error: stages.0.lr: bad', file=sys.stderr); sys.exit(2)")
    assert launch([], 2, grace_s=5, program=(*FAKE[:2], FAKE[2].format(body))) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["lepton: error: stages.0.lr: bad"]  # rank 0's line; rank 1's stays in its log


def test_a_killed_process_is_named(capfd: pytest.CaptureFixture[str]) -> None:
    body = "if rank: os.kill(os.getpid(), 9)\ntime.sleep(60)"
    assert launch([], 2, grace_s=0.5, program=(*FAKE[:2], FAKE[2].format(body))) == 137
    assert capfd.readouterr().err.strip() == "lepton: error: process 1 of 2 was killed by signal 9"


def test_launched_processes_see_their_rank_and_world(tmp_path: Path) -> None:
    body = (f"open(os.path.join({str(tmp_path)!r}, str(rank)), 'w').write("
            "' '.join(os.environ[k] for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR')))")
    assert launch([], 3, program=(*FAKE[:2], FAKE[2].format(body))) == 0
    assert [(tmp_path / str(r)).read_text() for r in range(3)] == \
        [f"{r} {r} 3 127.0.0.1" for r in range(3)]


@pytest.mark.slow
def test_multitask_in_two_processes_matches_one(still_model: Path, tmp_path: Path) -> None:
    """Task-homogeneous batches, one head used per batch (DDP must tolerate the idle heads)."""
    from tests.test_multitask import multitask_recipe

    recipe = multitask_recipe(still_model, tmp_path, epochs=1, batch_size=6)
    recipe["evaluate"].update(memory=False, robustness=False)
    lepton.run(parse_recipe(recipe, env={}), out_dir=tmp_path / "one", progress=False)
    two = _run_in_two_processes(recipe, tmp_path)
    assert two.returncode == 0, two.stderr
    for rel in ("model/model.safetensors", "model/heads/topic.safetensors"):
        a, b = load_file(str(tmp_path / "one" / rel)), load_file(str(tmp_path / "two" / rel))
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-4, (rel, worst)
