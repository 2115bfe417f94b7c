"""The recipe (schema version 1): one YAML file that drives a whole run.

Loading goes YAML -> ``--set`` overrides -> ``${VAR}`` interpolation -> strict validation. Every
error names the key path; an unknown key also suggests the closest valid one.
"""

from __future__ import annotations

import copy
import os
import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from lepton import runtimes, stages
from lepton.core import atomic
from lepton.core.config import StrictModel
from lepton.core.errors import LeptonError, RecipeError
from lepton.core.registry import suggest
from lepton.data import DataSplitConfig
from lepton.evaluation.explanation import ExplainConfig
from lepton.evaluation.fairness import FairnessConfig
from lepton.models.new_model import NewModelConfig
from lepton.runtimes.saved import is_saved_model
from lepton.stages import StageConfig, declared
from lepton.tasks import ColumnRef, TaskConfig  # noqa: F401  (re-exported: recipes' task section)

SCHEMA_VERSION = 1
MAX_RECIPE_VALUES = 100_000  # a recipe is a page of settings; YAML aliases must not blow it up

class DataConfig(StrictModel):
    train: DataSplitConfig | None = None
    dev: DataSplitConfig | None = None
    test: DataSplitConfig | None = None
    # The split that chooses (keep-best checkpoints, early stopping, layers to drop): its own data,
    # or carved from train (select_on: validation without data.validation), so that the split the
    # report scores on never chose anything. Default: validation when data.validation is given,
    # else dev (the report then says that dev both chose and scored).
    validation: DataSplitConfig | None = None
    select_on: Literal["dev", "validation"] | None = None
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)  # of train, when carved
    # rows: any rows; whole_texts: rows no other row contains, and the rows contained in those leave
    # train too (for data made of phrases of its own sentences, as SST-2's train split)
    validation_carve: Literal["rows", "whole_texts"] = "rows"

    def selection(self) -> str:
        """The split name the stages choose on."""
        return self.select_on or ("validation" if self.validation is not None else "dev")


class EvaluateConfig(StrictModel):
    split: Literal["dev", "test"] = "dev"
    baseline: bool = False  # also evaluate the starting model with its fresh task head
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    smoke_caps: ClassVar[dict[str, Any]] = {
        "latency_items": 5, "warmup": 1, "throughput_batches": 1, "rounds": 1, "bootstrap": 100,
        "memory": False}

    latency_items: int = Field(default=100, ge=5)  # batch-1 timings over this many real inputs
    fixed_length: int | None = Field(default=128, gt=1)  # also time batch 1 at this padded length
    warmup: int = Field(default=5, ge=0)
    throughput_batches: int = Field(default=5, ge=1)  # timed batches per throughput figure
    rounds: int = Field(default=3, ge=1)  # interleaved timing rounds over all variants
    bootstrap: int = Field(default=1000, ge=100)
    robustness: bool = True  # accuracy under seeded typos, word drops/swaps, case changes
    perturb_rate: float = Field(default=0.1, gt=0, le=1)
    calibration_bins: int = Field(default=15, ge=2)
    memory: bool = True  # peak RSS per variant, measured in a fresh process
    threads: int | None = Field(default=None, ge=1)  # torch threads while timing; default: as set
    # Slices (lepton.evaluation.slices): quality per class, length bucket and these data columns
    slices: list[str] = Field(default_factory=list)  # columns of the evaluation data, e.g. [source]
    slice_quality: bool = True  # per-slice quality with CIs and paired deltas (cheap: no model passes)
    length_buckets: list[int] = Field(default_factory=lambda: [16, 32, 64])  # token-count bucket edges
    slice_min_examples: int = Field(default=30, ge=1)  # smaller slices are shown, not ranked
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)  # counterfactual identity-term swaps
    explain: ExplainConfig = Field(default_factory=ExplainConfig)  # token attributions (evaluation.explain)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError("batch_sizes must be a non-empty list of positive integers")
        return value

    @field_validator("length_buckets")
    @classmethod
    def _token_counts(cls, value: list[int]) -> list[int]:
        if any(b < 1 for b in value):
            raise ValueError("length_buckets are token counts: positive integers")
        return sorted(set(value))


class OutputConfig(StrictModel):
    dir: str = "runs/lepton"
    # A seeded sample of data.train saved with the model as data/rehearsal.jsonl (covered by the
    # checksums), for a later ``lepton update --method replay``; 0: none.
    rehearsal_items: int = Field(default=200, ge=0)

    @field_validator("dir")
    @classmethod
    def _a_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give an output folder (an empty name would write into the current folder)")
        return value


class Recipe(StrictModel):
    schema_version: Literal[1] = 1
    name: str | None = None
    # A model to load (builtin:NAME, a folder, a hub id), or one to build: {new: marian, ...}
    model: str | NewModelConfig = "builtin:minilm-l6"
    task: TaskConfig
    data: DataConfig
    stages: list[SerializeAsAny[StageConfig]] = Field(default_factory=list)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False
    smoke: bool = False  # cap every data source and training stage (lepton run --smoke)

    @model_validator(mode="after")
    def _smoke_caps(self) -> Recipe:
        if self.smoke:
            self.apply_smoke()  # every section declares what it caps (StrictModel.smoke_caps)
        return self

    @model_validator(mode="after")
    def _training_follows_where_needed(self) -> Recipe:
        for i, stage in enumerate(self.stages):
            reason = stage.needs_training_after()
            if reason is not None and not any(s.trains for s in self.stages[i + 1:]):
                trainers = [n for n in stages.configs.names() if stages.configs.get(n).trains]
                raise ValueError(f"stages.{i}: {reason}; "
                                 f"add a training stage after it ({', '.join(trainers)})")
        return self

    @model_validator(mode="after")
    def _runtimes_in_order(self) -> Recipe:
        # export hands the model to ONNX Runtime; training and pruning need PyTorch.
        runtime = "torch"
        for i, stage in enumerate(self.stages):
            accepts = stage.accepts_runtimes
            if not runtimes.accepts(accepts, runtime):
                raise ValueError(f"stages.{i} ({stage.kind}) needs a {' or '.join(accepts)} model, but an "
                                 f"earlier export left an {runtime} one; move it before the export")
            runtime = stage.produces_runtime or runtime
        return self

    def stage_names(self) -> list[str]:
        """Each stage's name in reports: ``name``, else its kind; a repeat gets ``-<index>``."""
        names: list[str] = []
        for i, stage in enumerate(self.stages):
            name = stage.name or stage.kind
            names.append(f"{name}-{i}" if name in names else name)
        return names

    @model_validator(mode="after")
    def _teachers_exist(self) -> Recipe:
        # distill's teacher: an earlier stage by name, or a model folder (checked again at run time).
        names = self.stage_names()
        for i, stage in enumerate(self.stages):
            teacher = getattr(stage, "teacher", None)
            if not isinstance(teacher, str) or teacher in names[:i] or Path(teacher).expanduser().is_dir():
                continue
            hint = suggest(teacher, names[:i])
            if teacher in names[i:]:
                hint = f"; stage {teacher!r} comes later, a teacher must run before the student"
            raise ValueError(f"stages.{i}.teacher: {teacher!r} is neither an earlier stage nor a model "
                             f"folder{hint} (earlier stages: {', '.join(names[:i]) or 'none'})")
        return self

    @model_validator(mode="after")
    def _needs_data(self) -> Recipe:
        if self.stages and self.data.train is None:
            raise ValueError("data.train is required when the recipe has stages")
        if getattr(self.data, self.evaluate.split) is None:
            raise ValueError(f"data.{self.evaluate.split} is required for evaluation")
        if self.data.select_on == "dev" and self.data.validation is not None:
            raise ValueError("data.select_on: dev while data.validation is given: the validation data would "
                             "never be read (leave select_on out to choose on it)")
        if self.data.selection() == "validation" and self.data.validation is None and self.data.train is None:
            raise ValueError("data.select_on: validation carves the validation split from data.train; give "
                             "data.train or data.validation")
        return self

    @model_validator(mode="after")
    def _checks_choose_on_the_selection_split(self) -> Recipe:
        # A check that chooses (quantize's max_drop keeps sensitive layers in float) reads the
        # selection split too, unless the stage names its own.
        if self.data.selection() == "validation":
            for stage in self.stages:
                if "check_split" in type(stage).model_fields and "check_split" not in stage.model_fields_set:
                    stage.check_split = "validation"  # type: ignore[attr-defined]
        return self

    @model_validator(mode="after")
    def _stages_fit_the_task(self) -> Recipe:
        from lepton.stages import stage_kinds_for
        from lepton.tasks import kind_of

        allowed = stage_kinds_for(kind_of(self.task).families)
        for i, s in enumerate(self.stages):
            if s.kind not in allowed:
                raise ValueError(f"stages.{i}: {s.kind} does not work on {self.task.kind} models yet "
                                 f"(stages that do: {', '.join(allowed)})")
        return self

    @model_validator(mode="after")
    def _head_is_trained(self) -> Recipe:
        # A new task head starts random: without a stage that trains it the run would ship noise.
        if any(s.trains_head for s in self.stages):
            return self
        from lepton.tasks import kind_of

        if not kind_of(self.task).uses_labels:
            return self  # no new head: a generative model's output layer is pretrained
        if is_saved_model(Path(self.model).expanduser()):
            return self  # a saved Lepton model: its head is trained already
        head_trainers = [n for n in stages.configs.names() if stages.configs.get(n).trains_head]
        raise ValueError("no stage trains the task head (one of: " + ", ".join(head_trainers) + "): the "
                         "model would ship with an untrained, random head; add a finetune stage, or "
                         "start from a saved Lepton model (model: OUT/model)")

    @model_validator(mode="after")
    def _quantize_last(self) -> Recipe:
        # What each stage needs, checked before anything trains: a quantizing stage leaves a model
        # that no later stage can take (export, training and pruning need a float PyTorch model,
        # and a model is quantized once); some settings run on one runtime only.
        runtime, quantized = "torch", None
        for i, stage in enumerate(self.stages):
            if quantized is not None:
                hint = ("; export first, then quantize (ONNX Runtime quantizes the exported graph)"
                        if stage.produces_runtime is not None else "; quantize once, as the last stage")
                raise ValueError(f"stages.{i} ({stage.kind}) comes after stages.{quantized} "
                                 f"({self.stages[quantized].kind}), but needs an unquantized model{hint}")
            problem = stage.runtime_problem(runtime)
            if problem is not None:
                raise ValueError(f"stages.{i}: {problem}")
            if stage.quantizes:
                quantized = i
            runtime = stage.produces_runtime or runtime
        return self

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def model_source(self) -> str:
        """The model as reports, cards and logs name it."""
        return self.model if isinstance(self.model, str) else self.model.describe()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# Loading

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: typing.Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise RecipeError(f"{path}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    return _VAR.sub(sub, value)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.0.c=value`` override; the value is parsed as YAML (numbers, booleans, lists)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set stages.0.epochs=1")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(p == "" for p in parts):
        raise RecipeError(f"--set {assignment!r}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise RecipeError(f"--set {key}: value {raw!r} is not valid YAML{where} "
                          f"({getattr(err, 'problem', None) or 'parse error'})") from None
    except RecursionError:
        raise RecipeError(f"--set {key}: value is nested too deeply") from None
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise RecipeError(f"--set {key}: {'.'.join(parts[:depth]) or 'root'} is a list; "
                                  f"use an index, not {part!r}")
            idx = int(part)
            if not -len(node) <= idx < len(node):
                raise RecipeError(f"--set {key}: index {idx} out of range "
                                  f"({'.'.join(parts[:depth]) or 'root'} has {len(node)} items)")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section")


def _unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes reachable from an annotation (through Optional, list, dict, unions)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return []
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_unwrap_models(arg))
    return found


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        nested = _unwrap_models(field.annotation)
        model = nested[0] if nested else None
    return model


def format_errors(err: ValidationError, root: type[BaseModel], prefix: str, source: str) -> str:
    lines = []
    for item in err.errors():
        if item["type"] == "string_type" and item["loc"][-1:] == ("str",) and isinstance(item.get("input"), dict):
            continue  # a mapping given where a string or a mapping fits (model:): the mapping's own errors say it
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in (*([prefix] if prefix else []), *loc)) or "(root)"
        if item["type"] == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            known = list(parent.model_fields) if parent else []
            known = [k for k in known if k != "stage_kind"]
            lines.append(f"unknown key {path!r}{suggest(str(loc[-1]), known)}"
                         + (f" (valid here: {', '.join(known)})" if known else ""))
        elif item["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            given = item.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            lines.append(f"{path}: {item['msg']}{shown}")
    return f"{source}: " + "; ".join(lines)


def _validate_stages(raw: Any, source: str) -> list[StageConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RecipeError(f"{source}: stages: expected a list of stages, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "kind" not in item:
            raise RecipeError(f"{source}: stages.{i}: each stage is a mapping with a 'kind' "
                              f"(one of: {', '.join(stages.configs.names())})")
        try:
            cls = stages.configs.get(str(item["kind"]))
        except LeptonError as e:
            raise RecipeError(f"{source}: stages.{i}.kind: {e}") from None
        try:
            out.append(cls.model_validate(item))
        except ValidationError as e:
            raise RecipeError(format_errors(e, cls, f"stages.{i}", source)) from None
    return out


def parse_recipe(tree: Any, *, source: str = "<recipe>", overrides: typing.Sequence[str] = (),
                 env: typing.Mapping[str, str] | None = None) -> Recipe:
    """Validate a parsed YAML tree (after overrides and interpolation) into a Recipe."""
    if not isinstance(tree, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping at the top level")
    _check_size(tree, source)
    tree = copy.deepcopy(tree)  # overrides edit the tree in place; leave the caller's alone
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        _check_size(tree, source)
    try:
        tree = interpolate(tree, os.environ if env is None else env)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    version = tree.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RecipeError(f"{source}: schema_version {version!r} is not supported (this Lepton reads {SCHEMA_VERSION})")
    tree = dict(tree)
    tree["stages"] = _validate_stages(tree.get("stages"), source)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(format_errors(e, Recipe, "", source)) from None


def read_yaml(path: str | os.PathLike[str], what: str = "recipe",
              error: type[LeptonError] = RecipeError, max_values: int = MAX_RECIPE_VALUES) -> Any:
    """A YAML file's tree; a missing, unreadable or malformed file is one ``error`` naming it (and
    the line, for bad YAML). Recipes, monitor configs and search spaces are all read here, so
    each is refused when its aliases expand past ``max_values`` values (an alias bomb: a 1 KB file
    standing for 10^9 values), before anything copies or walks the tree."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} file not found")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))
        if expanded_size(tree, max_values) > max_values:
            raise error(f"{p}: expands to more than {max_values:,} values or nests more than 200 deep "
                        f"(YAML aliases repeating a node?); write the {what} out plainly")
        return tree
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{p}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    except UnicodeDecodeError:
        raise error(f"{p}: not a UTF-8 text file") from None
    except RecursionError:
        raise error(f"{p}: nested too deeply to be a {what}") from None
    except OSError as err:
        from lepton.core.atomic import describe

        raise error(f"{p}: cannot read the {what} ({describe(err)})") from None


def load_recipe(path: str | os.PathLike[str], overrides: typing.Sequence[str] = (),
                env: typing.Mapping[str, str] | None = None) -> Recipe:
    p = Path(path)
    tree = read_yaml(p)
    recipe = parse_recipe(tree, source=str(p), overrides=overrides, env=env)
    check_model(recipe, str(p))
    check_layers(recipe, str(p))
    return recipe


def check_model(recipe: Recipe, source: str) -> None:
    """An unknown builtin name fails validation. (Files a recipe names, model folders and data,
    need not exist to validate it: they are checked when the run starts, before any training.)"""
    from lepton.models import resolve_model

    if not isinstance(recipe.model, str) or not recipe.model.startswith("builtin:"):
        return
    try:
        resolve_model(recipe.model)
    except LeptonError as err:
        raise RecipeError(f"{source}: {err}") from None


def _check_size(tree: Any, source: str) -> None:
    if expanded_size(tree, MAX_RECIPE_VALUES) > MAX_RECIPE_VALUES:
        raise RecipeError(f"{source}: expands to more than {MAX_RECIPE_VALUES:,} values or nests more "
                          "than 200 deep (YAML aliases repeating a node?); write the recipe out plainly")


def expanded_size(tree: Any, limit: int) -> int:
    """How many values ``tree`` holds with every alias expanded (YAML aliases share one object,
    so a 1 KB file can stand for 10^9 values), counted in time proportional to the distinct
    nodes; stops early past ``limit``."""
    memo: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        if depth > 200:
            return limit + 1  # nesting no recipe needs
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key not in memo:
            memo[key] = limit + 1  # a cycle (a recursive alias) counts as too big
            children = node.values() if isinstance(node, dict) else node
            total = 1
            for child in children:
                total += size(child, depth + 1)
                if total > limit:
                    break
            memo[key] = total
        return memo[key]

    return size(tree, 0)


def _layer_count(model: str) -> int | None:
    """The encoder's layer count from the model's config.json; None where it cannot be read
    (a hub id, an unusual config): the stage checks again when it runs."""

    from lepton.models import resolve_model

    try:
        folder = Path(resolve_model(model))
        config = atomic.loads_json((folder / "config.json").read_text(encoding="utf-8"))
        value = config.get("num_hidden_layers")  # type: ignore[union-attr]
    except (LeptonError, OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def check_layers(recipe: Recipe, source: str) -> None:
    """Settings that change the layer count (drop_layers) against the model's, before any stage runs."""
    # Only a stage that overrides layers_left can fail here: without one, config.json is not read.
    if all(type(s).layers_left is StageConfig.layers_left for s in recipe.stages) or not isinstance(recipe.model, str):
        return
    total = _layer_count(recipe.model)
    if total is None:
        return
    for i, stage in enumerate(recipe.stages):
        total = stage.layers_left(total, f"{source}: stages.{i}")


def task_recipe(recipe: dict[str, Any], name: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(task section, data section) of task ``name`` in a resolved recipe: the recipe's own, or
    the ``tasks`` entry of the multitask stage that added it."""
    own = (recipe.get("task") or {}, recipe.get("data") or {})
    if name is None:
        return own
    for stage in recipe.get("stages") or []:
        if not declared(stage.get("kind"), "adds_heads"):
            continue
        if name == stage.get("main", "main"):
            return own
        extra = (stage.get("tasks") or {}).get(name)
        if extra is not None:
            return extra.get("task") or {}, extra.get("data") or {}
    return own
