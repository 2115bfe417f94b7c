"""``lepton run --smoke``: every data source and training stage of a recipe is capped, the report
says so; the main job runs on built-in data from an empty working folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lepton.pipeline.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def _everything_recipe(tmp_path: Path) -> dict:
    """A recipe with a data source or length setting of every kind a smoke run must cap."""
    split = {"path": str(tmp_path / "t.tsv")}
    return {
        "task": {"kind": "sequence_classification", "text": "sentence", "label": "label"},
        "data": {"train": dict(split), "dev": dict(split, limit=500), "test": dict(split, seed=4)},
        "stages": [
            {"kind": "pretrain", "text": {"path": str(tmp_path / "docs.txt")}, "epochs": 3},
            {"kind": "finetune", "epochs": 5},
            {"kind": "multitask", "epochs": 4, "tasks": {"other": {
                "task": {"kind": "sequence_classification", "text": "sentence", "label": "label"},
                "data": {"train": dict(split), "dev": dict(split, limit=10)}}}},
            {"kind": "distill", "teacher": "finetune", "epochs": 2, "max_steps": 500,
             "transfer": dict(split, limit=24000, seed=1)},
            {"kind": "export"},
            {"kind": "quantize", "method": "static_int8", "calibration_items": 512},
        ],
    }


def test_smoke_caps_every_data_source_and_training_stage(tmp_path):
    tree = _everything_recipe(tmp_path)
    full = parse_recipe(tree)
    smoke = parse_recipe(tree, overrides=["smoke=true"]).resolved_dict()
    assert full.data.train.limit is None and full.stages[1].epochs == 5  # no caps without the switch

    def data_sections(node):
        if isinstance(node, dict):
            if "path" in node and "limit" in node:
                yield node
            for value in node.values():
                yield from data_sections(value)
        elif isinstance(node, list):
            for value in node:
                yield from data_sections(value)

    found = list(data_sections(smoke))
    assert len(found) == 7  # train, dev, test, pretrain text, the extra task's 2 splits, transfer
    for section in found:  # each capped, with a seed so that every label turns up
        assert section["limit"] <= 64 and section["seed"] is not None, section
    assert smoke["data"]["dev"]["limit"] == 64 and smoke["data"]["test"]["seed"] == 4
    assert smoke["stages"][3]["transfer"] == {**smoke["stages"][3]["transfer"], "limit": 64, "seed": 1}
    trainers = [s for s in smoke["stages"] if "epochs" in s]
    assert len(trainers) == 4 and all(s["epochs"] == 1 and s["max_steps"] <= 20 for s in trainers)
    assert smoke["stages"][0]["pseudo_perplexity_sample"] <= 1
    assert smoke["stages"][4]["parity_items"] <= 16
    assert smoke["stages"][5]["calibration_items"] <= 16
    assert smoke["evaluate"]["memory"] is False and smoke["evaluate"]["rounds"] == 1
    again = parse_recipe(tree, overrides=["smoke=true"])
    again.apply_smoke()  # caps are idempotent
    assert again.resolved_dict() == smoke


def test_smoke_leaves_settings_that_do_not_apply_alone(tmp_path):
    tree = _everything_recipe(tmp_path)
    tree["stages"][5] = {"kind": "quantize", "method": "dynamic_int8"}
    smoke = parse_recipe(tree, overrides=["smoke=true"])
    assert "calibration_items" not in smoke.stages[5].model_fields_set  # static_int8 only


def test_every_example_validates_as_a_smoke_run(tmp_path):
    from tests.test_examples import EXAMPLES  # the monitor chain is checked in that file

    assert len(EXAMPLES) >= 10
    for path in EXAMPLES:
        if "search" in (yaml.safe_load(path.read_text()) or {}):  # a lepton search recipe: its first point
            from lepton.search import load_space

            recipe = load_space(path, ("smoke=true",)).plain_recipe({})
        else:
            recipe = load_recipe(path, ["smoke=true"], env={"LEPTON_DATA": str(tmp_path)})
        for split in (recipe.data.train, recipe.data.dev):
            assert split is None or split.limit <= 64, path


@pytest.mark.slow
@pytest.mark.integration
def test_main_job_smoke_run_from_an_empty_folder_without_data(tmp_path):
    """The README's main job as a newcomer runs it: installed package only, no data folder."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "LEPTON_DATA": str(empty)}
    done = subprocess.run([sys.executable, "-m", "lepton", "run", str(ROOT / "examples" / "sst2-minilm.yaml"),
                           "--smoke", "--no-progress"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = work / "runs" / "sst2-minilm"
    assert "serve it: lepton serve runs/sst2-minilm/model" in done.stdout
    assert "Smoke run" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["pytorch-fp32", "onnx-fp32", "onnx-int8"]
    assert report["recipe"]["smoke"] is True
    assert all(v["n_examples"] == 64 for v in report["variants"])
    assert "Smoke run" in (out / "report.md").read_text()
    assert "do not deploy" in (out / "model" / "README.md").read_text()
    assert report["variants"][-1]["efficiency"]["size_mb"] < report["variants"][0]["efficiency"]["size_mb"] / 3

    import lepton

    preds = lepton.load(out / "model").predict(["a wonderful film", "a dull mess"])
    assert len(preds) == 2 and {p["label"] for p in preds} <= {"negative", "positive"}
