"""The task-kind contract: every registered kind trains, evaluates, saves and reloads through the
same code, on a tiny model. A new kind joins by registering and adding its row to
``tests/task_examples.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lepton
from lepton.pipeline.artifact import save_artifact
from lepton.pipeline.recipe import parse_recipe
from lepton.tasks import TaskConfig, kind_of, task_kinds
from tests.task_examples import EXAMPLES


def test_every_registered_kind_has_an_example_and_every_example_a_registered_kind() -> None:
    assert sorted(EXAMPLES) == task_kinds.names()


@pytest.mark.parametrize("name", task_kinds.names())
def test_kind_declares_its_contract(name: str) -> None:
    kind = kind_of(name)
    assert kind.name == name
    names = kind.metric_names()
    assert names and names[-1] == "loss" and not kind.higher_is_better("loss")
    assert kind.higher_is_better(kind.headline) or kind.headline != "loss"
    assert kind.title and kind.pipeline_tag and kind.card_what
    assert kind.auto_model() is not None
    TaskConfig.model_validate(EXAMPLES[name].task)  # the example's settings are valid for it


@pytest.mark.parametrize("name", task_kinds.names())
def test_kind_trains_evaluates_saves_and_reloads(name: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    example = EXAMPLES[name]
    train = example.write(tmp_path / f"train{example.suffix}", 48, 0)
    dev = example.write(tmp_path / f"dev{example.suffix}", 16, 1)
    recipe = {
        "schema_version": 1, "model": str(model_dirs[example.family]), "task": example.task,
        "data": {"train": {"path": str(train)}, "dev": {"path": str(dev)}},
        "stages": [{"kind": "finetune", "epochs": 1, "lr": 1e-3, "batch_size": 8}],
        "evaluate": {"batch_sizes": [1], "latency_items": 5, "warmup": 1, "throughput_batches": 1,
                     "bootstrap": 100, "rounds": 1, "memory": False},
        "output": {"dir": str(tmp_path / "out")},
    }
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    kind = kind_of(name)
    card = report.variants[-1]
    assert card.quality.task == name and card.quality.headline == kind.headline
    m = card.quality.metrics[kind.headline]
    assert m.ci95_low <= m.value <= m.ci95_high and m.n == 16
    json.loads((tmp_path / "out" / "report.json").read_text())  # the summary is JSON

    model = lepton.load(tmp_path / "out" / "model")
    first = model.predict(list(example.predict_inputs))
    schema = kind.prediction_schema()
    for item in first:
        schema.model_validate(item)
    save_artifact(model.bundle, tmp_path / "copy")  # a second round trip of the loaded model
    again = lepton.load(tmp_path / "copy").predict(list(example.predict_inputs))
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
