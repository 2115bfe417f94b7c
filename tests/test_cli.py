"""The command line, in-process: every user error is one line on stderr and exit code 2; the happy
paths (validate, run, info, evaluate) on the tiny model and toy data."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lepton
from lepton.cli import main
from lepton.core.errors import RecipeError
from lepton.pipeline.recipe import load_recipe
from tests.conftest import tiny_recipe, write_sentiment_tsv

FAST = ["--set", "stages.0.epochs=1"]
GOOD_ROWS = "sentence\tlabel\na good film\t1\na bad film\t0\n"


@pytest.fixture(autouse=True)
def _quiet_transformers(monkeypatch):
    """What main() arranges in a fresh process, where it runs before transformers is imported.

    Here other tests imported transformers first, so its environment switches come too late;
    set the same through its API, and give everything back afterwards.
    """
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    hf_logging.set_verbosity(verbosity)
    if bars:
        hf_logging.enable_progress_bar()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result: tuple[int, str, str], *needles: str) -> str:
    """Exit 2, no traceback, and stderr is one line: 'lepton: error: ...' naming the cause."""
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lepton: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def write_recipe(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli-data")
    return {"train": write_sentiment_tsv(folder / "train.tsv", 32, seed=1),
            "dev": write_sentiment_tsv(folder / "dev.tsv", 16, seed=2)}


@pytest.fixture
def recipe_tree(tiny_model_dir, data, tmp_path) -> dict:
    return tiny_recipe(tiny_model_dir, data["train"], data["dev"], tmp_path / "out", epochs=1)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data, tmp_path_factory) -> dict:
    """One `lepton run` shared by the tests that need a saved model."""
    folder = tmp_path_factory.mktemp("cli-run")
    recipe = write_recipe(folder / "recipe.yaml",
                          tiny_recipe(tiny_model_dir, data["train"], data["dev"],
                                      folder / "unused"))
    out = folder / "out"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("TRANSFORMERS_VERBOSITY", "error")  # main() sets them; do not let them leak
        mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        code = main(["run", str(recipe), *FAST, "--set", "data.train.limit=24", "-o", str(out),
                     "--no-progress"])
    return {"code": code, "stdout": stdout.getvalue(), "out": out, "recipe": recipe}


@pytest.fixture
def model_copy(trained, tmp_path) -> Path:
    """A private copy of the trained model, to damage."""
    return Path(shutil.copytree(trained["out"] / "model", tmp_path / "model"))


# ------------------------------------------------------------------- the entry point itself


def test_module_help_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "lepton", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("run", "validate", "evaluate", "info"):
        assert command in done.stdout


def test_user_error_in_a_subprocess_is_one_line(tmp_path, recipe_tree):
    # A fresh process: the real logging setup, transformers imported after main() configured it.
    recipe_tree["task"]["labels"] = ["0", "1"]
    dev = tmp_path / "dev.tsv"
    dev.write_text(GOOD_ROWS + "an odd film\t2\n")
    recipe_tree["data"]["dev"]["path"] = str(dev)
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    done = subprocess.run([sys.executable, "-m", "lepton", "-q", "run", str(path), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"lepton: error: {dev}:4: label '2' is not in the label set ['0', '1'] "
        "(set task.labels to change it)"]
    assert done.stdout == ""


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert lepton.__version__ in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "x.yaml"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ------------------------------------------------------------------- recipe errors


@pytest.mark.parametrize("command", ["validate", "run"])
def test_missing_recipe_file(capsys, tmp_path, command):
    path = tmp_path / "nope.yaml"
    assert_user_error(cli(capsys, command, path), str(path), "not found")


def test_unknown_key(capsys, tmp_path, recipe_tree):
    recipe_tree["stages"][0]["lrr"] = 0.1
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    for command in ("validate", "run"):
        assert_user_error(cli(capsys, command, path), str(path), "unknown key 'stages.0.lrr'",
                          "did you mean 'lr'")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_unknown_key_from_set(capsys, tmp_path, recipe_tree):
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    assert_user_error(cli(capsys, "validate", path, "--set", "evaluate.bootstap=200"),
                      "unknown key 'evaluate.bootstap'", "did you mean 'bootstrap'")


def test_bad_set_syntax(capsys, tmp_path, recipe_tree):
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    assert_user_error(cli(capsys, "run", path, "--set", "stages.0.epochs"), "expected KEY=VALUE")
    assert_user_error(cli(capsys, "run", path, "--set", "stages.4.epochs=1"), "out of range")


def test_wrong_type(capsys, tmp_path, recipe_tree):
    recipe_tree["stages"][0]["epochs"] = "two"
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    assert_user_error(cli(capsys, "validate", path), "stages.0.epochs", "'two'")


def test_invalid_yaml_names_the_line(capsys, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: x\ntask:\n\tkind: sequence_classification\n")
    assert_user_error(cli(capsys, "validate", path), f"{path}:3:", "not valid YAML")


def test_unset_variable(capsys, tmp_path, recipe_tree, monkeypatch):
    monkeypatch.delenv("LEPTON_TEST_UNSET", raising=False)
    recipe_tree["data"]["dev"]["path"] = "${LEPTON_TEST_UNSET}/dev.tsv"
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    assert_user_error(cli(capsys, "validate", path), "data.dev.path", "LEPTON_TEST_UNSET")


# ------------------------------------------------------------------- data and model errors


def _data_error(capsys, tmp_path, recipe_tree, *, train: str | None = None, dev: str | None = None,
                labels: list[str] | None = None) -> str:
    if train is not None:
        recipe_tree["data"]["train"]["path"] = str(tmp_path / "bad-train.tsv")
        (tmp_path / "bad-train.tsv").write_text(train)
    if dev is not None:
        recipe_tree["data"]["dev"]["path"] = str(tmp_path / "bad-dev.tsv")
        (tmp_path / "bad-dev.tsv").write_text(dev)
    if labels is not None:
        recipe_tree["task"]["labels"] = labels
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    return assert_user_error(cli(capsys, "-q", "run", path, "--no-progress"))



@pytest.mark.parametrize("split", ["train", "dev"])
def test_label_not_in_the_label_set_names_file_and_line(capsys, tmp_path, recipe_tree, split):
    rows = GOOD_ROWS + "an odd film\t2\nanother film\t1\n"  # label 2 on line 4
    line = _data_error(capsys, tmp_path, recipe_tree, labels=["0", "1"], **{split: rows})
    assert f"{tmp_path / f'bad-{split}.tsv'}:4" in line
    assert "'2'" in line and "label set" in line


def test_empty_data_file(capsys, tmp_path, recipe_tree):
    line = _data_error(capsys, tmp_path, recipe_tree, train="")
    assert str(tmp_path / "bad-train.tsv") in line and "empty" in line


def test_header_only_data_file(capsys, tmp_path, recipe_tree):
    line = _data_error(capsys, tmp_path, recipe_tree, dev="sentence\tlabel\n")
    assert "data.dev" in line and "no examples" in line


def test_malformed_tsv_row_names_file_and_line(capsys, tmp_path, recipe_tree):
    rows = GOOD_ROWS + "a film\t1\textra\n"  # 3 fields under a 2-column header, line 4
    line = _data_error(capsys, tmp_path, recipe_tree, train=rows)
    assert f"{tmp_path / 'bad-train.tsv'}:4" in line
    assert "expected 2 fields, found 3" in line


def test_missing_data_file(capsys, tmp_path, recipe_tree):
    recipe_tree["data"]["dev"]["path"] = str(tmp_path / "absent.tsv")
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    assert_user_error(cli(capsys, "-q", "run", path), "data.dev.path", "absent.tsv")


def test_model_folder_without_weights(capsys, tmp_path, recipe_tree, tiny_model_dir):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    recipe_tree["model"] = str(folder)
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    assert_user_error(cli(capsys, "-q", "run", path), str(folder), "no weights")


def test_unknown_builtin_model(capsys, tmp_path, recipe_tree):
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    assert_user_error(cli(capsys, "-q", "run", path, "--set", "model=builtin:minilm"),
                      "did you mean 'builtin:minilm-l6'")


# ------------------------------------------------------------------- happy paths


def test_validate_prints_the_resolved_recipe(capsys, tmp_path, recipe_tree):
    path = write_recipe(tmp_path / "r.yaml", recipe_tree)
    code, out, err = cli(capsys, "validate", path, "--set", "stages.0.lr=0.01")
    assert code == 0
    resolved = yaml.safe_load(out)
    assert resolved["stages"][0]["lr"] == 0.01
    assert resolved["stages"][0]["warmup"] == 0.06  # defaults spelled out
    assert load_recipe(path, ["stages.0.lr=0.01"]).resolved_dict() == resolved
    assert "valid" in err and "1 stages" in err
    assert not (tmp_path / "out").exists()  # validate runs nothing


def test_run_writes_model_report_and_recipe(trained):
    out = trained["out"]
    assert trained["code"] == 0
    for name in ("model/lepton.json", "model/model.safetensors", "report.json", "report.md",
                 "recipe.yaml"):
        assert (out / name).is_file(), name
    assert not (out / "work").exists()
    assert not (out.parent / "unused").exists()  # -o wins over output.dir
    assert "Lepton: variants side by side" in trained["stdout"]
    assert "finetune" in trained["stdout"]
    assert f"model: {out}/model" in trained["stdout"]

    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["stages"][0]["epochs"] == 1  # --set applied
    assert saved["data"]["train"]["limit"] == 24
    report = json.loads((out / "report.json").read_text())
    assert report["variants"][0]["name"] == "finetune"
    assert report["variants"][0]["n_examples"] == 16
    assert "accuracy" in report["variants"][0]["quality"]["metrics"]
    assert report["stages"][0]["summary"]["train_examples"] == 24
    assert "# Lepton report" in (out / "report.md").read_text()
    manifest = json.loads((out / "model" / "lepton.json").read_text())
    assert manifest["recipe"] == saved
    assert [c["name"] for c in manifest["scorecards"]] == ["finetune"]


def test_info(capsys, trained):
    model = trained["out"] / "model"
    code, out, err = cli(capsys, "info", model)
    assert code == 0, err
    assert f"{model}: Lepton model" in out
    assert "task: sequence_classification, labels ['0', '1']" in out
    assert "stage 0: finetune" in out
    assert "finetune: accuracy" in out
    manifest = json.loads((model / "lepton.json").read_text())
    assert f"files: {len(manifest['files'])} verified" in out

    code, out, _ = cli(capsys, "info", model, "--json")
    assert code == 0 and json.loads(out) == manifest


def test_evaluate_json(capsys, trained, data):
    code, out, err = cli(capsys, "evaluate", trained["out"] / "model", "--data", data["dev"],
                         "--json", "--batch-sizes", "1", "--limit", "12")
    assert code == 0, err
    report = json.loads(out)
    card = report["variants"][0]
    assert card["n_examples"] == 12
    accuracy = card["quality"]["metrics"]["accuracy"]
    assert 0.0 <= accuracy["value"] <= 1.0 and accuracy["n"] == 12
    assert card["stage_path"] == ["finetune"]
    assert report["recipe"]["stages"][0]["epochs"] == 1  # the training recipe travels along


def test_evaluate_bad_batch_sizes(capsys, trained, data):
    assert_user_error(cli(capsys, "evaluate", trained["out"] / "model", "--data", data["dev"],
                          "--batch-sizes", "1,x"), "--batch-sizes")


def test_evaluate_missing_data(capsys, trained, tmp_path):
    assert_user_error(cli(capsys, "evaluate", trained["out"] / "model",
                          "--data", tmp_path / "no.tsv"), "no.tsv")


# ------------------------------------------------------------------- damaged models


def _tamper(model: Path) -> Path:
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    return weights


def test_info_on_a_tampered_model(capsys, model_copy):
    weights = _tamper(model_copy)
    assert_user_error(cli(capsys, "info", model_copy), str(weights), "checksum")


def test_evaluate_on_a_tampered_model(capsys, model_copy, data):
    weights = _tamper(model_copy)
    assert_user_error(cli(capsys, "evaluate", model_copy, "--data", data["dev"]),
                      str(weights), "checksum")


def test_info_on_a_folder_that_is_not_a_lepton_model(capsys, tiny_model_dir):
    assert_user_error(cli(capsys, "info", tiny_model_dir), "not a Lepton model")


def test_evaluate_with_a_deleted_file(capsys, model_copy, data):
    (model_copy / "tokenizer.json").unlink()
    assert_user_error(cli(capsys, "evaluate", model_copy, "--data", data["dev"]),
                      "tokenizer.json", "missing")


# ------------------------------------------------------------------- --debug


def test_debug_lets_the_exception_through(capsys, tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        main(["--debug", "validate", str(tmp_path / "nope.yaml")])


def test_a_run_folder_stands_for_its_model(capsys, trained):
    """`lepton info OUT` / `compare OUT ...` given the run folder use OUT/model."""
    code, out, err = cli(capsys, "info", trained["out"])
    assert code == 0, err
    assert f"{trained['out'] / 'model'}: Lepton model" in out


def test_smoke_switch_caps_the_run_and_says_so(capsys, tiny_model_dir, data, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir, data["train"], data["dev"],
                                                          tmp_path / "out", epochs=3))
    code, out, err = cli(capsys, "run", recipe, "--smoke", "--no-progress")
    assert code == 0, err
    assert "Smoke run" in out
    saved = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert saved["smoke"] is True and saved["stages"][0]["epochs"] == 1
    assert f"serve it: lepton serve {tmp_path / 'out'}/model" in out
