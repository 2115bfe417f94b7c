"""The recipe: strict validation with key paths and suggestions, ${VAR} interpolation, --set
overrides, YAML loading errors, and a lossless round trip of the resolved recipe."""

from __future__ import annotations

import copy

import pytest
import yaml

from lepton.core.errors import RecipeError, UnknownNameError
from lepton.core.registry import Registry, suggest
from lepton.pipeline.recipe import Recipe, apply_override, interpolate, load_recipe, parse_recipe
from lepton.stages.finetune import FinetuneConfig


def valid_tree() -> dict:
    """A complete recipe as parsed YAML; the files need not exist to validate it."""
    return {
        "schema_version": 1,
        "name": "unit",
        "model": "/models/tiny",
        "task": {"kind": "sequence_classification", "text": "sentence", "label": "label",
                 "labels": {0: "negative", 1: "positive"}},
        "data": {"train": {"path": "train.tsv", "limit": 64, "seed": 3},
                 "dev": {"path": "dev.tsv"}},
        "stages": [{"kind": "finetune", "epochs": 2, "lr": 1e-3, "batch_size": 8}],
        "evaluate": {"batch_sizes": [1, 4], "bootstrap": 200},
        "output": {"dir": "runs/unit"},
        "seed": 7,
    }


def parse(tree: dict, **kwargs) -> Recipe:
    kwargs.setdefault("env", {})
    return parse_recipe(tree, **kwargs)


def error_of(tree: dict, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        parse(tree, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------- valid recipes


def test_valid_recipe_parses():
    recipe = parse(valid_tree())
    assert recipe.name == "unit" and recipe.model == "/models/tiny" and recipe.seed == 7
    assert recipe.task.kind == "sequence_classification"
    assert recipe.task.labels == {"0": "negative", "1": "positive"}  # YAML int keys become strings
    assert recipe.data.train.limit == 64 and recipe.data.train.seed == 3
    assert recipe.data.test is None
    assert len(recipe.stages) == 1
    stage = recipe.stages[0]
    assert isinstance(stage, FinetuneConfig)
    assert (stage.epochs, stage.lr, stage.batch_size) == (2, 1e-3, 8)
    assert recipe.evaluate.batch_sizes == [1, 4] and recipe.evaluate.split == "dev"
    assert recipe.device == "auto" and recipe.trust_remote_code is False


def test_resolved_recipe_round_trips_through_yaml():
    recipe = parse(valid_tree())
    again = parse(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe
    assert again.resolved_dict() == recipe.resolved_dict()
    assert isinstance(again.stages[0], FinetuneConfig)
    # The resolved form spells out every default, so nothing depends on this version's defaults.
    assert recipe.resolved_dict()["stages"][0]["warmup"] == FinetuneConfig().warmup
    assert recipe.resolved_dict()["evaluate"]["latency_items"] == 100


def test_round_trip_through_a_file(tmp_path):
    recipe = parse(valid_tree())
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(path, env={}) == recipe


def test_parse_leaves_the_callers_tree_alone():
    tree = valid_tree()
    before = copy.deepcopy(tree)
    parse(tree, overrides=["stages.0.epochs=5", "data.test.path=test.tsv"])
    assert tree == before


def test_recipe_without_stages_needs_no_train_data(tmp_path):
    # Only a saved Lepton model (its head trained already) may be run without a training stage.
    (tmp_path / "lepton.json").write_text("{}")
    tree = valid_tree()
    del tree["stages"], tree["data"]["train"]
    tree["model"] = str(tmp_path)
    recipe = parse(tree)
    assert recipe.stages == [] and recipe.data.train is None


@pytest.mark.parametrize("stages", [[], [{"kind": "prune", "method": "magnitude", "sparsity": 0.5}]])
def test_recipe_that_never_trains_the_head_is_refused(stages):
    # `stages: []` on a plain encoder used to ship a model with a random task head.
    tree = valid_tree()
    tree["stages"] = stages
    with pytest.raises(RecipeError, match="no stage trains the task head"):
        parse(tree)


# ------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(("where", "typo", "path", "hint"), [
    ((), "modle", "modle", "model"),
    (("task",), "lable", "task.lable", "label"),
    (("data",), "trian", "data.trian", "train"),
    (("data", "train"), "limt", "data.train.limt", "limit"),
    (("evaluate",), "bootstap", "evaluate.bootstap", "bootstrap"),
    (("stages", 0), "lrr", "stages.0.lrr", "lr"),
    (("stages", 0), "epoch", "stages.0.epoch", "epochs"),
])
def test_unknown_key_names_its_path_and_suggests(where, typo, path, hint):
    tree = valid_tree()
    node = tree
    for part in where:
        node = node[part]
    node[typo] = 1
    message = error_of(tree)
    assert f"unknown key {path!r}" in message
    assert f"did you mean {hint!r}" in message


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    tree = valid_tree()
    tree["stages"][0]["zzzzzz"] = 1
    message = error_of(tree)
    assert "unknown key 'stages.0.zzzzzz'" in message
    assert "did you mean" not in message
    assert "valid here:" in message and "epochs" in message and "lr" in message


def test_error_names_the_source_file():
    tree = valid_tree()
    tree["modle"] = "x"
    assert error_of(tree, source="my/recipe.yaml").startswith("my/recipe.yaml: ")


def test_unknown_stage_kind_suggests_a_known_one():
    tree = valid_tree()
    tree["stages"][0]["kind"] = "finetun"
    message = error_of(tree)
    assert "stages.0.kind" in message
    assert "unknown stage kind 'finetun'" in message
    assert "did you mean 'finetune'" in message


@pytest.mark.parametrize("stage", [{"epochs": 1}, "finetune", ["finetune"]])
def test_stage_without_a_kind_lists_the_kinds(stage):
    tree = valid_tree()
    tree["stages"] = [{"kind": "finetune"}, stage]
    message = error_of(tree)
    assert "stages.1" in message and "kind" in message and "finetune" in message


def test_stages_must_be_a_list():
    tree = valid_tree()
    tree["stages"] = {"kind": "finetune"}
    assert "stages: expected a list" in error_of(tree)


# ------------------------------------------------------------------- types and required keys


@pytest.mark.parametrize(("path", "value", "named"), [
    (("stages", 0, "epochs"), "two", "stages.0.epochs"),
    (("stages", 0, "lr"), "fast", "stages.0.lr"),
    (("stages", 0, "epochs"), 0, "stages.0.epochs"),  # a constraint, not just a type
    (("seed",), "abc", "seed"),
    (("task", "kind"), "regression", "task.kind"),
    (("data", "train", "limit"), "many", "data.train.limit"),
    (("evaluate", "bootstrap"), [1, 2], "evaluate.bootstrap"),
    (("device",), "tpu", "device"),
])
def test_wrong_type_names_the_path(path, value, named):
    tree = valid_tree()
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    message = error_of(tree)
    assert f"{named}: " in message
    if isinstance(value, str):
        assert repr(value) in message  # shows what was given


def test_wrong_type_error_is_one_line():
    tree = valid_tree()
    tree["stages"][0]["epochs"] = "two"
    tree["seed"] = "abc"
    message = error_of(tree)
    assert "\n" not in message


@pytest.mark.parametrize(("remove", "named"), [
    (("task",), "task: required key is missing"),
    (("data",), "data: required key is missing"),
    (("task", "kind"), "task.kind: required key is missing"),
    (("data", "train", "path"), "data.train.path: required key is missing"),
])
def test_missing_required_key_is_named(remove, named):
    tree = valid_tree()
    node = tree
    for part in remove[:-1]:
        node = node[part]
    del node[remove[-1]]
    assert named in error_of(tree)


def test_stages_need_train_data():
    tree = valid_tree()
    del tree["data"]["train"]
    assert "data.train is required" in error_of(tree)


def test_evaluation_split_must_be_given():
    tree = valid_tree()
    tree["evaluate"]["split"] = "test"
    assert "data.test is required" in error_of(tree)


def test_text_pair_is_not_for_token_classification():
    tree = valid_tree()
    tree["task"] = {"kind": "token_classification", "text_pair": "b"}
    assert "text_pair" in error_of(tree)


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_other_schema_versions_are_rejected(version):
    tree = valid_tree()
    tree["schema_version"] = version
    message = error_of(tree)
    assert f"schema_version {version!r} is not supported" in message


# ------------------------------------------------------------------- ${VAR} interpolation


def test_interpolation_of_set_variables_and_defaults():
    tree = valid_tree()
    tree["model"] = "${MODELS}/tiny"
    tree["data"]["train"]["path"] = "${DATA:-/data}/train.tsv"
    tree["data"]["train"]["limit"] = "${LIMIT:-16}"
    tree["name"] = "${RUN}-${SUFFIX:-x}"
    recipe = parse(tree, env={"MODELS": "/opt/models", "RUN": "r1", "DATA": "/mnt"})
    assert recipe.model == "/opt/models/tiny"
    assert recipe.data.train.path == "/mnt/train.tsv"  # set: the default is not used
    assert recipe.data.train.limit == 16  # unset: the default, then validated as an int
    assert recipe.name == "r1-x"


def test_empty_variable_counts_as_unset_for_a_default():
    tree = valid_tree()
    tree["data"]["dev"]["path"] = "${DEV:-dev.tsv}"
    assert parse(tree, env={"DEV": ""}).data.dev.path == "dev.tsv"


@pytest.mark.parametrize(("path", "named"), [
    (("model",), "model"),
    (("data", "train", "path"), "data.train.path"),
    (("stages", 0, "lr"), "stages.0.lr"),
])
def test_unset_variable_without_default_names_the_key(path, named):
    tree = valid_tree()
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = "${NOT_SET_ANYWHERE}"
    message = error_of(tree, source="r.yaml")
    assert message.startswith("r.yaml: ")
    assert f"{named}: environment variable NOT_SET_ANYWHERE is not set" in message
    assert "${NOT_SET_ANYWHERE:-default}" in message  # says how to give a default


def test_interpolation_inside_lists():
    tree = valid_tree()
    tree["evaluate"]["batch_sizes"] = ["${B1}", "${B2:-16}"]
    tree["stages"][0]["lr"] = "${LR:-0.002}"
    recipe = parse(tree, env={"B1": "2"})
    assert recipe.evaluate.batch_sizes == [2, 16]
    assert recipe.stages[0].lr == pytest.approx(0.002)


def test_unset_variable_inside_a_list_names_the_index():
    tree = valid_tree()
    tree["evaluate"]["batch_sizes"] = [1, "${B2}"]
    assert "evaluate.batch_sizes.1: environment variable B2" in error_of(tree)


def test_interpolation_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("LEPTON_TEST_MODEL", "/from/env")
    tree = valid_tree()
    tree["model"] = "${LEPTON_TEST_MODEL}"
    assert parse_recipe(tree).model == "/from/env"


def test_interpolate_leaves_non_strings_and_plain_text_alone():
    tree = {"a": 1, "b": [True, None, 2.5], "c": "no $variables {here}", "d": "$HOME"}
    assert interpolate(tree, {"HOME": "/root"}) == tree


# ------------------------------------------------------------------- --set overrides


def test_override_nested_keys_and_list_index():
    recipe = parse(valid_tree(), overrides=["stages.0.epochs=1", "data.train.limit=8",
                                            "evaluate.bootstrap=150", "task.max_length=64"])
    assert recipe.stages[0].epochs == 1
    assert recipe.data.train.limit == 8
    assert recipe.evaluate.bootstrap == 150
    assert recipe.task.max_length == 64


def test_override_negative_index_and_new_sections():
    recipe = parse(valid_tree(), overrides=["stages.-1.batch_size=4", "data.test.path=test.tsv",
                                            "evaluate.split=test"])
    assert recipe.stages[0].batch_size == 4
    assert recipe.data.test.path == "test.tsv" and recipe.evaluate.split == "test"


@pytest.mark.parametrize(("assignment", "expected"), [
    ("x=1", 1),
    ("x=-3", -3),
    ("x=0.5", 0.5),
    ("x=true", True),
    ("x=false", False),
    ("x=null", None),
    ("x=[1, 32]", [1, 32]),
    ("x={a: 1}", {"a": 1}),
    ("x=hello", "hello"),
    ("x='007'", "007"),
    ("x=a=b", "a=b"),  # only the first '=' separates key and value
    ("x=", ""),
])
def test_override_values_are_yaml_typed(assignment, expected):
    tree: dict = {}
    apply_override(tree, assignment)
    assert tree["x"] == expected
    assert type(tree["x"]) is type(expected)


def test_override_typed_values_reach_the_recipe():
    recipe = parse(valid_tree(), overrides=["stages.0.lr=0.01", "trust_remote_code=true",
                                            "evaluate.batch_sizes=[2, 8]", "stages.0.keep_best=no"])
    assert recipe.stages[0].lr == pytest.approx(0.01)
    assert recipe.trust_remote_code is True
    assert recipe.evaluate.batch_sizes == [2, 8]
    assert recipe.stages[0].keep_best is False


def test_later_override_wins():
    recipe = parse(valid_tree(), overrides=["seed=1", "seed=2"])
    assert recipe.seed == 2


@pytest.mark.parametrize(("assignment", "expected"), [
    ("stages.5.epochs=1", "index 5 out of range (stages has 1 items)"),
    ("stages.-2.epochs=1", "index -2 out of range"),
    ("stages.first.epochs=1", "stages is a list; use an index, not 'first'"),
    ("model.name=x", "model is a value, not a section"),
    ("stages.0.epochs", "expected KEY=VALUE"),
    ("=1", "empty key path"),
    ("stages..epochs=1", "empty key path"),
    ("x=[1, 2", "not valid YAML"),
])
def test_bad_override_is_a_recipe_error(assignment, expected):
    with pytest.raises(RecipeError) as info:
        parse(valid_tree(), overrides=[assignment])
    assert expected in str(info.value)
    assert str(info.value).startswith("--set ")


def test_overrides_apply_before_validation():
    # A typo in --set is reported like a typo in the file ...
    message = error_of(valid_tree(), overrides=["stages.0.lrr=0.1"])
    assert "unknown key 'stages.0.lrr'" in message and "did you mean 'lr'" in message
    # ... and an override can repair a value the file got wrong.
    tree = valid_tree()
    tree["stages"][0]["epochs"] = "two"
    assert parse(tree, overrides=["stages.0.epochs=3"]).stages[0].epochs == 3


def test_overrides_apply_before_interpolation():
    recipe = parse(valid_tree(), overrides=["model=${MODELS}/m"], env={"MODELS": "/opt"})
    assert recipe.model == "/opt/m"


def test_override_cannot_sneak_in_another_schema_version():
    assert "schema_version 2" in error_of(valid_tree(), overrides=["schema_version=2"])


# ------------------------------------------------------------------- loading files


def test_load_recipe_from_a_file_with_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(valid_tree()))
    recipe = load_recipe(path, ["stages.0.epochs=1"], env={})
    assert recipe.stages[0].epochs == 1
    assert recipe == parse(valid_tree(), overrides=["stages.0.epochs=1"])


def test_load_recipe_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


def test_load_recipe_folder_is_not_a_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path)


def test_load_recipe_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: x\ntask:\n\tkind: sequence_classification\ndata: {}\n")  # tab on line 3
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: not valid YAML")
    assert "\n" not in message


def test_load_recipe_unclosed_bracket_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: x\nstages: [\n  {kind: finetune}\ndata:\n  dev: x\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert f"{path}:" in str(info.value) and "not valid YAML" in str(info.value)
    line = int(str(info.value).split(f"{path}:", 1)[1].split(":", 1)[0])
    assert 2 <= line <= 5


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_load_recipe_needs_a_mapping(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "mapping" in str(info.value)


def test_load_recipe_binary_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"model: \xff\xfe\x00x\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_load_recipe_errors_name_the_file(tmp_path):
    tree = valid_tree()
    tree["stages"][0]["lrr"] = 1
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, env={})
    assert str(info.value).startswith(f"{path}: unknown key 'stages.0.lrr'")


def test_schema_version_2_file_is_rejected(tmp_path):
    tree = valid_tree()
    tree["schema_version"] = 2
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(RecipeError, match="schema_version 2 is not supported"):
        load_recipe(path, env={})


# ------------------------------------------------------------------- the registry behind kinds


def test_registry_suggests_and_lists_known_names():
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    reg.add("beta", 2)
    assert reg.get("alpha") == 1 and "beta" in reg and list(reg) == ["alpha", "beta"]
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    assert str(info.value) == "unknown widget 'alpah'; did you mean 'alpha'? (known: alpha, beta)"
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzz")
    assert "did you mean" not in str(info.value)


def test_registry_rejects_duplicates():
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 2)
    assert reg.get("alpha") == 1


def test_suggest_is_empty_when_nothing_is_close():
    assert suggest("xyz", ["epochs", "lr"]) == ""
    assert suggest("epocs", ["epochs", "lr"]) == "; did you mean 'epochs'?"
