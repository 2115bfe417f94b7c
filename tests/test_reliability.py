"""Issue 12, defects 1-3 and 5 and the smaller ones: each reproduced as reported, now refused
cleanly (one line, exit 2) with the user's files intact. The server's parts (defect 4, stalled
connections, UTF-8/deep JSON, /docs) are in tests/test_serve_reliability.py."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from lepton.cli import main
from lepton.core import atomic, outdir
from lepton.core.errors import OutputFolderError, StorageError
from tests.conftest import tiny_recipe, write_sentiment_tsv
from tests.test_cli import _quiet_transformers, assert_user_error, cli  # noqa: F401  (fixture)

FAST = ["--set", "stages.0.epochs=1", "--no-progress"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: what 'intact' means below."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def victim(folder: Path) -> dict[str, str]:
    """A user's folder with files Lepton must never touch."""
    (folder / "work").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "work" / "thesis.tex").write_text("years of work")
    (folder / "model").mkdir()
    (folder / "model" / "mine.bin").write_bytes(b"\x00\x01")
    (folder / "recipe.yaml").write_text("mine")
    return tree_digest(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rel-data")
    return {"train": write_sentiment_tsv(folder / "train.tsv", 24, seed=1),
            "dev": write_sentiment_tsv(folder / "dev.tsv", 12, seed=2)}


@pytest.fixture
def recipe(tiny_model_dir, data, tmp_path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, data["train"], data["dev"], tmp_path / "out",
                                               epochs=1)))
    return path


@pytest.fixture(scope="module")
def finished(tiny_model_dir, data, tmp_path_factory) -> Path:
    """One finished run, shared (copied by the tests that change it)."""
    folder = tmp_path_factory.mktemp("rel-run")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, data["train"], data["dev"], folder / "out",
                                               epochs=1)))
    assert main(["-q", "run", str(path), *FAST]) == 0
    return folder / "out"


# ------------------------------------------------------------------- 1: names used as paths


@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "a/b", "..", ".hidden", "x" * 65, "a b"])
def test_a_stage_name_cannot_point_outside_the_output_folder(capsys, recipe, tmp_path, name):
    # Reported: `--set stages.0.name=../../victim` with LoRA replaced a folder outside the output.
    target = tmp_path / "victim"
    before = victim(target)
    line = assert_user_error(cli(capsys, "run", recipe, "--set", f"stages.0.name={name}",
                                 "--set", "stages.0.method=lora", *FAST), "stages.0.name", "plain name")
    assert repr(name) in line
    assert tree_digest(target) == before and not (tmp_path / "out").exists()


def test_multitask_task_names_are_plain_names(capsys, recipe):
    extra = "{task: {kind: sequence_classification}, data: {train: {path: x.tsv}}}"
    assert_user_error(cli(capsys, "validate", recipe, "--set", "stages.0.kind=multitask",
                          "--set", f"stages.0.tasks={{'../up': {extra}}}"), "plain name")


def test_paths_built_from_names_stay_inside(tmp_path):
    assert outdir.inside(tmp_path, "adapter", "finetune") == tmp_path / "adapter" / "finetune"
    with pytest.raises(OutputFolderError, match="leaves the output folder"):
        outdir.inside(tmp_path, "adapter", "../../x")


# ------------------------------------------------------------------- 2: the output folder


def test_an_existing_folder_that_is_not_a_run_is_refused(capsys, recipe, tmp_path):
    # Reported: its work/ deleted, model/ replaced, recipe.yaml overwritten.
    target = tmp_path / "mine"
    before = victim(target)
    assert_user_error(cli(capsys, "run", recipe, "-o", target, *FAST), str(target), "not a Lepton run folder")
    assert_user_error(cli(capsys, "run", recipe, "-o", target, "--force", *FAST), "not a Lepton run folder")
    assert_user_error(cli(capsys, "run", recipe, "-o", target, "--resume", *FAST), "not a Lepton run folder")
    assert tree_digest(target) == before


@pytest.mark.parametrize("how", [["-o", ""], ["-o", "  "], ["--set", "output.dir="]])
def test_an_empty_output_name_is_refused(capsys, recipe, tmp_path, monkeypatch, how):
    # Reported: `-o ''` wrote into the current folder.
    monkeypatch.chdir(tmp_path)
    before = tree_digest(tmp_path)
    line = assert_user_error(cli(capsys, "run", recipe, *how, *FAST))
    assert "output" in line and ("empty" in line or "give an output folder" in line)
    assert tree_digest(tmp_path) == before


def test_output_naming_a_file_is_refused(capsys, recipe, tmp_path):
    # Reported: FileExistsError traceback.
    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert_user_error(cli(capsys, "run", recipe, "-o", target, *FAST), str(target), "is a file")
    assert target.read_text() == "keep me"


def test_a_finished_run_is_replaced_only_with_force(capsys, recipe, finished, tmp_path):
    # Reported: a previous run's folder was silently replaced without --resume.
    out = Path(shutil.copytree(finished, tmp_path / "prev"))
    before = tree_digest(out)
    assert_user_error(cli(capsys, "run", recipe, "-o", out, *FAST), "finished run", "--force")
    assert_user_error(cli(capsys, "run", recipe, "-o", out, "--resume", *FAST), "nothing to resume")
    assert tree_digest(out) == before
    (out / "my-notes.txt").write_text("mine")  # a user's own file in a run folder survives --force
    code, _, err = cli(capsys, "-q", "run", recipe, "-o", out, "--force", *FAST)
    assert code == 0, err
    assert (out / "my-notes.txt").read_text() == "mine"
    assert tree_digest(out)["model/lepton.json"] != before["model/lepton.json"]


def test_an_interrupted_run_needs_resume_or_force(capsys, recipe, tmp_path):
    out = tmp_path / "interrupted"
    outdir.claim(out).release()
    (out / "work").mkdir()
    (out / "work" / "recipe.json").write_text("{}")
    assert_user_error(cli(capsys, "run", recipe, "-o", out, *FAST), "interrupted run", "--resume")
    assert (out / "work" / "recipe.json").read_text() == "{}"


def test_an_empty_existing_folder_is_claimed(tmp_path):
    (tmp_path / "empty").mkdir()
    claimed = outdir.claim(tmp_path / "empty")
    claimed.release()
    assert (tmp_path / "empty" / outdir.MARKER).is_file()


def test_two_runs_never_share_a_folder(tmp_path):
    first = outdir.claim(tmp_path / "run")
    try:
        with pytest.raises(OutputFolderError, match="another lepton run"):
            outdir.claim(tmp_path / "run", force=True)
    finally:
        first.release()
    outdir.claim(tmp_path / "run").release()  # free again once the first is done


# ------------------------------------------------------------------- 3: I/O faults


def _fail_writes(monkeypatch, code: int, where: str = "") -> None:
    """Make file writes whose path contains ``where`` fail with ``code``, as a full or read-only
    disk would: Python's open, and safetensors' writer (with its own error type and message)."""
    import io

    import safetensors.torch as st
    from safetensors import SafetensorError

    real_open = io.open

    def failing_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and where in str(file):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    def failing_save(tensors, filename, *args, **kwargs):
        if where in str(filename):
            raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")

    monkeypatch.setattr("builtins.open", failing_open)
    monkeypatch.setattr(io, "open", failing_open)  # pathlib's write_text/write_bytes
    monkeypatch.setattr(st, "save_file", failing_save)
    monkeypatch.setattr(st, "save_model", lambda model, filename, *a, **k: failing_save(None, filename))


@pytest.mark.parametrize(("code", "cause", "where"), [
    (errno.ENOSPC, "disk full", "/.model.tmp-"),  # the final save of the model
    (errno.ENOSPC, "disk full", "/work/"),  # checkpoints and snapshots while training
    (errno.EROFS, "read-only", ""),  # every write, the run log first
    (errno.EACCES, "permission denied", "/.model.tmp-"),
])
def test_a_failing_disk_is_one_line_and_the_previous_run_survives(capsys, recipe, finished, tmp_path,
                                                                  monkeypatch, code, cause, where):
    # Reported: OSError / SafetensorError tracebacks, exit 1.
    out = Path(shutil.copytree(finished, tmp_path / "prev"))
    before = tree_digest(out / "model")
    _fail_writes(monkeypatch, code, where)
    line = assert_user_error(cli(capsys, "run", recipe, "-o", out, "--force", *FAST), cause)
    assert str(out) in line
    monkeypatch.undo()
    assert tree_digest(out / "model") == before  # the previous model is whole
    assert not [p for p in out.iterdir() if p.name.startswith(".model.")]


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import torch

    from lepton.stages.training import TrainState, _save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    _save_checkpoint(tmp_path, model, None, opt, sched, {}, TrainState(step=1), None)
    before = tree_digest(tmp_path)
    _fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(StorageError, match="disk full") as info:
        _save_checkpoint(tmp_path, model, None, opt, sched, {}, TrainState(step=2), None)
    monkeypatch.undo()
    assert "ckpt-0000002" in str(info.value)
    assert tree_digest(tmp_path) == before and (tmp_path / "latest").read_text() == "ckpt-0000001"


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-state", "binary-pointer",
                                    "pointer-escapes", "garbage-trainer"])
def test_a_damaged_checkpoint_on_resume_is_one_line(capsys, recipe, tmp_path, monkeypatch, damage):
    # Reported: SafetensorError / UnicodeDecodeError tracebacks on --resume.
    out = tmp_path / "killed"
    monkeypatch.setattr("lepton.stages.training._KILL_AT_STEP", 0)
    tree = yaml.safe_load(recipe.read_text())
    tree["stages"][0]["checkpoint_every"] = 1
    recipe.write_text(yaml.safe_dump(tree))

    class Killed(BaseException):  # a kill: nothing in the run handles it
        pass

    from lepton.evaluation import harness

    def die(*a, **k):
        raise Killed  # after training and checkpointing, before the run finishes

    monkeypatch.setattr(harness, "evaluate_variants", die)
    with pytest.raises(Killed):
        main(["-q", "run", str(recipe), "-o", str(out), *FAST])
    monkeypatch.undo()
    stage = out / "work" / "stage-0-finetune"
    # The finished stage's snapshot would be reused; make the resume go through the checkpoint.
    shutil.rmtree(stage / "snapshot", ignore_errors=True)
    ckpt = stage / (stage / "latest").read_text()
    if damage == "truncate-weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "garbage-state":
        (ckpt / "state.json").write_bytes(b"\xff\xfe not json")
    elif damage == "binary-pointer":
        (stage / "latest").write_bytes(b"\xff\x00\x9c")
    elif damage == "pointer-escapes":
        (stage / "latest").write_text("../../../etc")
    else:
        (ckpt / "trainer.pt").write_bytes(b"not a torch file")
    def state() -> dict[str, str]:
        return {k: v for k, v in tree_digest(out).items() if k != "run.log"}

    before = state()
    line = assert_user_error(cli(capsys, "run", recipe, "-o", out, "--resume", *FAST))
    assert ("checkpoint" in line) and str(stage) in line and "--force" in line
    assert state() == before  # nothing of the interrupted run was changed


def test_evaluate_batch_size_zero_is_one_line(capsys, finished):
    # Reported: a pydantic traceback.
    assert_user_error(cli(capsys, "evaluate", finished / "model", "--batch-sizes", "0"), "--batch-sizes")
    assert_user_error(cli(capsys, "evaluate", finished / "model", "--batch-sizes=-1,4"), "--batch-sizes")


def test_durable_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic.write_text(tmp_path / "a.txt", "x")
    assert any(s.endswith(".a.txt.tmp") or ".a.txt.tmp-" in s for s in synced)  # the file, before its rename
    assert str(tmp_path) in synced  # then the folder holding the rename
    synced.clear()
    atomic.write_folder(tmp_path / "model", lambda tmp: (tmp / "w.bin").write_bytes(b"1"))
    assert any(s.endswith("/w.bin") for s in synced) and str(tmp_path) in synced


def test_leftovers_of_a_killed_write_are_removed(tmp_path):
    # Reported: a killed final write left a hidden .model.tmp-* folder that nothing removed.
    (tmp_path / "model").mkdir()
    dead = tmp_path / ".model.tmp-999999999-0123abcd"  # no such process
    legacy = tmp_path / ".model.tmp-89abcdef"  # written before the pid was in the name
    live = tmp_path / f".model.tmp-{os.getppid()}-0123abcd"  # a writer that still runs
    for folder in (dead, legacy, live):
        folder.mkdir()
    atomic.write_folder(tmp_path / "model", lambda tmp: (tmp / "w.bin").write_bytes(b"1"))
    assert not dead.exists() and not legacy.exists() and live.exists()


def test_a_swap_interrupted_between_its_renames_is_undone(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"old")
    os.replace(tmp_path / "model", tmp_path / ".model.old-999999999-0123abcd")  # crash after rename 1
    atomic.cleanup_leftovers(tmp_path / "model")
    assert (tmp_path / "model" / "w.bin").read_bytes() == b"old"


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".model.tmp-"):
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StorageError, match="input/output error"):
        atomic.write_folder(tmp_path / "model", lambda tmp: (tmp / "w.bin").write_bytes(b"new"))
    monkeypatch.undo()
    assert (tmp_path / "model" / "w.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# ------------------------------------------------------------------- smaller ones


def test_a_yaml_alias_bomb_is_refused_at_once(capsys, tmp_path):
    # Reported: a 1 KB recipe expanding to 10^9 values hung `lepton validate` at 3.9 GB.
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ntask: {kind: sequence_classification}\n")
    assert path.stat().st_size < 1024
    assert_user_error(cli(capsys, "validate", path), "expands to more than")


@pytest.mark.parametrize(("stages", "needle"), [
    ([{"kind": "finetune"}, {"kind": "quantize", "method": "dynamic_int8"}, {"kind": "export"}],
     "export first, then quantize"),
    ([{"kind": "finetune"}, {"kind": "quantize", "method": "dynamic_int8"},
      {"kind": "quantize", "method": "dynamic_int8"}], "quantize once"),
    ([{"kind": "finetune"}, {"kind": "quantize", "method": "static_int8"}], "add an export stage"),
    ([{"kind": "finetune"}, {"kind": "drop_layers", "keep": [0, 9]}], "layer 9 is out of range"),
    ([{"kind": "finetune"}, {"kind": "drop_layers", "strategy": "top", "layers": 3}], "cannot keep 3 layers"),
    ([], "no stage trains the task head"),
    ([{"kind": "finetune", "epochs": True}], "expected a number, got a boolean"),
])
def test_recipes_that_cannot_work_fail_validate(capsys, recipe, stages, needle):
    # Reported: these passed `validate` and failed only after training (or shipped a random head).
    tree = yaml.safe_load(recipe.read_text())
    tree["stages"] = stages
    recipe.write_text(yaml.safe_dump(tree))
    assert_user_error(cli(capsys, "validate", recipe), needle)  # the tiny model has 2 layers


def test_one_class_training_data_warns(capsys, recipe, tmp_path, caplog):
    train = tmp_path / "one-class.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"film number {i}\t1\n" for i in range(12)))
    from lepton.pipeline.api import load_splits
    from lepton.pipeline.recipe import load_recipe

    with caplog.at_level(logging.WARNING, logger="lepton"):
        load_splits(load_recipe(recipe, [f"data.train.path={train}"]))
    assert any("every example has the label '1'" in r.getMessage() for r in caplog.records)


def test_trust_remote_code_warns(recipe, tmp_path, caplog, monkeypatch):
    import lepton.pipeline.api as api

    monkeypatch.setattr(api.distributed, "setup", lambda device: (_ for _ in ()).throw(RuntimeError("stop")))
    with caplog.at_level(logging.WARNING, logger="lepton"), pytest.raises(RuntimeError, match="stop"):
        api.run(recipe, overrides=["trust_remote_code=true"])
    assert any("trust_remote_code" in r.getMessage() and "will run" in r.getMessage() for r in caplog.records)


def test_evaluate_limit_without_data_uses_the_recipe_split(capsys, finished):
    # Reported: `evaluate --limit` was ignored without --data.
    code, out, err = cli(capsys, "evaluate", finished / "model", "--limit", "5", "--batch-sizes", "1", "--json")
    assert code == 0, err
    card = json.loads(out)["variants"][0]
    assert card["n_examples"] == 5
    assert_user_error(cli(capsys, "evaluate", finished / "model", "--limit", "0"), "--limit")


@pytest.mark.parametrize(("args", "needle"), [
    (["--max-drop", "accuracy=lots"], "--max-drop"), (["--max-drop", "accuracy"], "--max-drop"),
    (["--max-drop", "accuracy=-1"], "--max-drop"), (["--max-drop", "accuracy=nan"], "--max-drop"),
    (["--max-drop", "acuracy=1.0"], "unknown metric"), (["--min-speedup", "-1"], "--min-speedup"),
    (["--min-speedup", "0"], "--min-speedup"), (["--min-speedup", "inf"], "--min-speedup"),
])
def test_compare_gates_are_checked_before_measuring(capsys, finished, monkeypatch, args, needle):
    # Reported: a bad --max-drop failed only after 25 s of measuring; --min-speedup -1 was accepted.
    import lepton.pipeline.api as api

    monkeypatch.setattr(api, "compare", lambda *a, **k: pytest.fail("measured before checking the gates"))
    model = finished / "model"
    assert_user_error(cli(capsys, "compare", model, model, *args), needle)


def test_validate_knows_the_builtin_models(capsys, recipe):
    # Found by the bad-input kit: an unknown builtin passed validate.
    assert_user_error(cli(capsys, "validate", recipe, "--set", "model=builtin:nope"), "unknown builtin")


def test_a_bad_yaml_override_is_one_line(capsys, recipe):
    assert_user_error(cli(capsys, "validate", recipe, "--set", "stages.0.epochs=[1"), "not valid YAML")
