"""The stage contract, checked for every registered stage on every task kind it accepts.

The matrix is read from the registry (``lepton.stages.configs``) and from what each config class
declares (``contract_example``, ``contract_before``, or a family's own in ``register``): a new
stage joins it by registering, and a stage class that is defined but not registered fails
``test_every_stage_class_is_registered_with_a_contract_example``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")  # the export stage is in the matrix

import lepton
import lepton.stages
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.models import load_tokenizer
from lepton.pipeline.artifact import load_bundle, save_artifact
from lepton.runtimes import for_bundle
from lepton.runtimes.bundle import ModelBundle, RunContext, StageRecord
from lepton.stages import StageConfig, configs, contract_of, handler_for, stage_kinds_for
from lepton.tasks import TaskConfig, build_task, task_kinds
from lepton.tasks.loading import load_for_task
from tests.task_examples import EXAMPLES
from tests.test_artifact import TEXTS


def accepted_task_kinds(config_cls: type[StageConfig]) -> list[str]:
    """The task kinds the contract runs a stage on: every registered kind whose tiny model's
    family (tests/task_examples.py) the stage has an implementation for."""
    return [k for k in task_kinds.names() if config_cls.stage_kind in stage_kinds_for((EXAMPLES[k].family,))]


def _task_material(kind: str, model_dirs: dict[str, Path], folder: Path) -> tuple[ModelBundle, dict, dict, Columns]:
    """(a fresh tiny bundle, its data splits, the placeholder values, the columns) for ``kind``,
    from its row in tests/task_examples.py."""
    example = EXAMPLES[kind]
    config = TaskConfig.model_validate(example.task)
    files = {name: example.write(folder / f"{name}{example.suffix}", n, s)
             for name, n, s in (("train", 32, 1), ("dev", 16, 2))}
    columns = config.columns()
    splits = {name: load_split(DataSplitConfig(path=str(path)), columns, name=name, kind=config.split_kind)
              for name, path in files.items()}
    task = build_task(config, splits["train"])
    model_dir = model_dirs[example.family]
    torch.manual_seed(0)  # the fresh task head
    bundle = ModelBundle(model=load_for_task(str(model_dir), task), tokenizer=load_tokenizer(str(model_dir)),
                         task=task)
    text = folder / "text.txt"
    text.write_text("\n".join(f"{t} and then {u}" for t in TEXTS for u in TEXTS) + "\n")
    fill = {"{train}": str(files["train"]), "{dev}": str(files["dev"]), "{task}": example.task, "{text}": str(text)}
    return bundle, splits, fill, columns


def _filled(value: Any, fill: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _filled(v, fill) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_filled(v, fill) for v in value]
    return fill.get(value, value) if isinstance(value, str) else value


def _run_stage(bundle: ModelBundle, settings: dict[str, Any], splits: dict, columns: Columns, work: Path,
               index: int, snapshots: dict[str, Path]) -> tuple[ModelBundle, RunContext]:
    config = configs.get(settings["kind"]).model_validate(settings)
    ctx = RunContext(splits=splits, seed=0, device="cpu", out_dir=work, work_dir=work, progress=False,
                     stage_dir=work / f"stage-{index}", stage_index=index,
                     stage_name=config.name or config.kind, snapshots=dict(snapshots), columns=columns)
    out = handler_for(config, bundle.family)(bundle, config, ctx)
    out.history.append(StageRecord(index=index, kind=config.kind, name=ctx.stage_name,
                                   settings=config.model_dump(mode="json"), started="", seconds=0.0,
                                   summary=ctx.stage_summary))
    return out, ctx


def _logits(bundle: ModelBundle) -> np.ndarray:
    batch = dict(bundle.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt"))
    return for_bundle(bundle).logits(batch)


def _matrix() -> list[Any]:
    return [pytest.param(kind, task, id=f"{kind}-{task}")
            for kind in configs.names() for task in accepted_task_kinds(configs.get(kind))]


@pytest.mark.parametrize(("stage_kind", "task_kind"), _matrix())
def test_stage_contract(stage_kind: str, task_kind: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:

    cls = configs.get(stage_kind)
    # A kind that runs the stage its own way may bring its own contract settings.
    example, befores = contract_of(cls, EXAMPLES[task_kind].family)
    bundle, splits, fill, columns = _task_material(task_kind, model_dirs, tmp_path)
    snapshots: dict[str, Path] = {}
    for i, before in enumerate(_filled(list(befores), fill)):
        bundle, ctx = _run_stage(bundle, before, splits, columns, tmp_path / "work", i, snapshots)
        snapshots[ctx.stage_name] = save_artifact(bundle, tmp_path / f"before-{i}")
    index = len(befores)
    settings = {"kind": stage_kind, **_filled(example, fill)}
    out, ctx = _run_stage(bundle, settings, splits, columns, tmp_path / "work", index, snapshots)

    # The summary is JSON (it goes into the manifest and the report).
    assert json.loads(json.dumps(ctx.stage_summary, allow_nan=False)) == ctx.stage_summary
    # The bundle still predicts: finite logits, one column per label (per vocabulary entry for a
    # generative kind, which has no label set).
    logits = _logits(out)
    width = len(out.task.labels) if out.task.labels else out.model.config.vocab_size
    assert logits.shape[0] == len(TEXTS) and logits.shape[-1] == width
    assert np.isfinite(logits).all()
    # The artifact saves, reloads with the same outputs, and round-trips once more unchanged.
    first = save_artifact(out, tmp_path / "model")
    loaded = load_bundle(first)
    assert loaded.runtime == out.runtime and loaded.task.labels == out.task.labels
    assert [r.kind for r in loaded.history] == [r.kind for r in out.history]
    np.testing.assert_allclose(_logits(loaded), logits, atol=1e-5, rtol=0)
    second = save_artifact(loaded, tmp_path / "again")
    np.testing.assert_array_equal(_logits(load_bundle(second)), _logits(loaded))
    predictions = lepton.load(first).predict(TEXTS)
    assert len(predictions) == len(TEXTS)
    assert predictions == lepton.load(second).predict(TEXTS)


def _stage_modules() -> list[str]:
    return [f"lepton.stages.{m.name}" for m in pkgutil.iter_modules(lepton.stages.__path__)]


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_stage_class_is_registered_with_a_contract_example() -> None:
    for name in _stage_modules():
        importlib.import_module(name)
    defined = [c for c in _subclasses(StageConfig) if c.__module__.startswith("lepton.stages.")]
    concrete = [c for c in defined if c.stage_kind]  # TrainSettings & co. are bases, not stages
    assert len(concrete) >= 10  # the built-in stages
    for cls in concrete:
        assert cls.stage_kind in configs, f"{cls.__module__}.{cls.__name__} is not registered"
        assert configs.get(cls.stage_kind) is cls
        assert "contract_example" in vars(cls), f"{cls.__name__} declares no contract_example"
        assert accepted_task_kinds(cls), f"{cls.__name__} accepts no task kind the contract knows"
    assert {c.stage_kind for c in concrete} == set(configs.names())


def test_the_kind_is_written_once() -> None:
    for kind in configs.names():
        cls = configs.get(kind)
        assert cls.stage_kind == kind == cls.model_fields["kind"].default
        assert "stage_kind" not in {k for c in cls.__mro__ for k in getattr(c, "__annotations__", {})
                                    if c is not StageConfig}
