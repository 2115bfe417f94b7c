"""The search space a recipe declares, and the plain recipe of one point in it.

A search recipe is a normal recipe in which stage settings may be written as a space instead of a
value, and whole stages may be optional::

    stages:
      - {kind: drop_layers, strategy: alternate, layers: {choices: [2, 3, 4, 6]}}
      - {kind: prune, method: ffn, sparsity: {low: 0.2, high: 0.7}, optional: true}
      - {kind: quantize, method: {choices: [dynamic_int8, static_int8]}}

``{choices: [...]}`` is a categorical setting; ``{low: a, high: b}`` (with ``step`` and ``log``
if wanted) an integer range when both ends are integers, else a float range. A top-level
``search:`` section holds the search's own settings (trials, budget, objectives...); the CLI's
flags override it. Every point of the space becomes a plain recipe (no spaces, no ``optional``,
no ``search``) that ``lepton run`` accepts as it is.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from lepton.core.config import StrictModel
from lepton.core.errors import RecipeError
from lepton.core.registry import suggest
from lepton.pipeline.recipe import Recipe, parse_recipe

CHOICE_KEYS = frozenset({"choices"})
RANGE_KEYS = frozenset({"low", "high", "step", "log"})
SPACE_KEYS = CHOICE_KEYS | RANGE_KEYS
ENABLED = "enabled"  # the parameter that switches an optional stage on or off
QUALITY_DIRECTIONS = ("maximize",)


class SearchSettings(StrictModel):
    """The ``search:`` section of a search recipe; ``lepton search`` flags override each key."""

    trials: int = Field(default=20, ge=1)  # finished trials (complete or failed) in the whole study
    # metric -> points below the baseline; None: the task's headline metric (accuracy, entity_f1) at 1.0
    max_drop: dict[str, float] | None = None
    objectives: list[str] | None = None  # None: the headline metric, latency, size
    timeout: str | None = None  # e.g. "2h", "90m", "1h30m", "3600" (seconds)
    storage: str | None = None  # a database URL, or a journal file; default OUT/study.journal
    study_name: str | None = None  # default: the recipe's name
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    startup_trials: int = Field(default=8, ge=1)  # tpe: random trials before the model takes over
    sampler_seed: int | None = Field(default=None, ge=0, lt=2**32)  # default: the recipe's seed
    trial_robustness: bool = False  # perturbed-input accuracy for every trial (the best always gets it)
    # OUT/cache (prefix snapshots, teacher outputs) is kept under this size: after each trial the least
    # recently used entries go, never the baseline's or one a running trial uses; None: no limit
    cache_max_gb: float | None = Field(default=10.0, gt=0)

    @field_validator("max_drop")
    @classmethod
    def _budget(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("give at least one METRIC: POINTS, e.g. {accuracy: 1.0} (or leave it out)")
        for metric, points in value.items():
            if not str(metric).strip():
                raise ValueError("a metric name is empty")
            if not math.isfinite(points) or points < 0:
                raise ValueError(f"{metric}: give the points as a number >= 0, e.g. 1.0 (got {points})")
        return value

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("give at least one objective, e.g. [accuracy, latency, size] (or leave it out)")
        if any(not o.strip() for o in value):
            raise ValueError("an objective name is empty")
        if len(set(value)) != len(value):
            raise ValueError("an objective appears twice")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | None) -> str | None:
        from lepton.core.errors import SearchError
        from lepton.search.study import parse_duration

        try:
            parse_duration(value, "")
        except SearchError as err:
            raise ValueError(str(err).strip()) from None
        return value

    @field_validator("storage", "study_name")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty; give a value or leave it out")
        return value


@dataclass
class Param:
    """One searchable setting: its Optuna name, where it sits, and its distribution's settings."""

    name: str  # "<stage name>.<key path>" or "<stage name>.enabled"
    stage: int  # index in the search recipe's stages
    path: tuple[str | int, ...]  # key path inside the stage ("enabled" params: empty)
    kind: Literal["choice", "int", "float", "enabled"]
    choices: list[Any] = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False

    def distribution(self) -> Any:
        import optuna.distributions as d

        if self.kind == "enabled":
            return d.CategoricalDistribution([True, False])
        if self.kind == "choice":
            return d.CategoricalDistribution(self._stored_choices())
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return d.FloatDistribution(float(self.low), float(self.high), step=self.step, log=self.log)

    def _stored_choices(self) -> list[Any]:
        # Optuna stores only None/bool/int/float/str choices; lists and mappings go in as JSON text.
        return [c if _primitive(c) else json.dumps(c, sort_keys=True) for c in self.choices]

    def value_of(self, stored: Any) -> Any:
        """The recipe value for an Optuna parameter value."""
        if self.kind == "choice" and isinstance(stored, str) and stored not in self.choices:
            return json.loads(stored)
        return stored

    def finite(self) -> bool:
        return self.kind != "float"

    def corners(self) -> list[Any]:
        """Values that, set one at a time, check that every part of the space is a valid recipe."""
        if self.kind in ("choice", "enabled"):
            return list(self.choices) if self.kind == "choice" else [True, False]
        return [self.low, self.high]


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass
class SearchSpace:
    """A parsed search recipe: the recipe tree with spaces, the stages' names, the parameters."""

    tree: dict[str, Any]  # the recipe without its search section; spaces still in place
    stage_names: list[str]
    params: list[Param]
    settings: SearchSettings
    source: str

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def stage_params(self, stage: int) -> list[Param]:
        return [p for p in self.params if p.stage == stage]

    def plain_tree(self, values: dict[str, Any]) -> dict[str, Any]:
        """The plain recipe tree for ``values`` (param name -> recipe value; a missing value: the
        first choice / the low end). Optional stages switched off are left out; every stage gets
        an explicit name so that names (a distill's teacher) do not shift when one is left out."""
        tree = copy.deepcopy(self.tree)
        stages = []
        for i, raw in enumerate(tree.get("stages") or []):
            if not isinstance(raw, dict):
                stages.append(raw)  # parse_recipe names the problem
                continue
            stage = dict(raw)
            optional = stage.pop("optional", False)
            if optional and not values.get(f"{self.stage_names[i]}.{ENABLED}", True):
                continue
            for p in self.stage_params(i):
                if p.kind != "enabled":
                    _set(stage, p.path, values[p.name] if p.name in values else p.corners()[0])
            stage["name"] = self.stage_names[i]
            stages.append(stage)
        tree["stages"] = stages
        return tree

    def plain_recipe(self, values: dict[str, Any]) -> Recipe:
        """The validated plain recipe for ``values``; a RecipeError says why the combination is bad."""
        return parse_recipe(self.plain_tree(values), source=self.source)

    def fingerprint(self) -> str:
        """Identifies the space (not the search settings), to refuse a study made for another one."""
        import hashlib

        text = json.dumps({"tree": self.tree, "params": [p.name for p in self.params]}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _set(node: Any, path: tuple[str | int, ...], value: Any) -> None:
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _space_kind(value: dict[str, Any], where: str, source: str) -> str | None:
    """'choice', 'range' or None (an ordinary mapping); a near miss of a space is an error."""
    keys = set(value)
    if keys & CHOICE_KEYS and keys & RANGE_KEYS:
        raise RecipeError(f"{source}: {where}: a search space has either 'choices' or 'low'/'high', not both")
    if keys & SPACE_KEYS:
        allowed = CHOICE_KEYS if "choices" in keys else RANGE_KEYS
        for key in sorted(keys - allowed):
            raise RecipeError(f"{source}: {where}: unknown key {key!r} in a search space"
                              f"{suggest(str(key), sorted(allowed))} (valid here: {', '.join(sorted(allowed))})")
        return "choice" if "choices" in keys else "range"
    near = {k: difflib.get_close_matches(str(k), SPACE_KEYS, n=1, cutoff=0.75) for k in keys}
    if keys and all(near.values()):
        key = sorted(keys, key=str)[0]
        raise RecipeError(f"{source}: {where}: unknown key {key!r}; did you mean {near[key][0]!r}? "
                          "(a search space is {choices: [...]} or {low: ..., high: ...})")
    return None


def _make_param(value: dict[str, Any], kind: str, name: str, stage: int, path: tuple[str | int, ...],
                where: str, source: str) -> Param:
    if kind == "choice":
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise RecipeError(f"{source}: {where}.choices: give a non-empty list of values")
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            raise RecipeError(f"{source}: {where}.choices: a value appears twice")
        return Param(name, stage, path, "choice", choices=choices)
    for key in ("low", "high"):
        if key not in value:
            raise RecipeError(f"{source}: {where}: a range needs both 'low' and 'high' ({key!r} is missing)")
        if isinstance(value[key], bool) or not isinstance(value[key], (int, float)):
            raise RecipeError(f"{source}: {where}.{key}: expected a number (got {value[key]!r})")
    low, high, step, log = value["low"], value["high"], value.get("step"), value.get("log", False)
    if not low < high:
        raise RecipeError(f"{source}: {where}: low must be below high (got {low} and {high})")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise RecipeError(f"{source}: {where}.step: expected a positive number (got {step!r})")
    if not isinstance(log, bool):
        raise RecipeError(f"{source}: {where}.log: expected true or false (got {log!r})")
    if log and (low <= 0 or step is not None):
        raise RecipeError(f"{source}: {where}: a log range needs low > 0 and no step")
    is_int = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
    return Param(name, stage, path, "int" if is_int else "float", low=low, high=high, step=step, log=log)


def _collect(node: Any, stage: int, stage_name: str, path: tuple[str | int, ...], source: str,
             out: list[Param]) -> None:
    """Find the spaces inside one stage (nested sections too, e.g. ``lora: {r: {choices: ...}}``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        sub = (*path, key)
        where = f"stages.{stage}." + ".".join(str(p) for p in sub)
        if isinstance(value, dict):
            kind = _space_kind(value, where, source)
            if kind is not None:
                if sub == ("kind",):
                    raise RecipeError(f"{source}: {where}: a stage's kind cannot be searched; write one "
                                      "optional stage per kind instead")
                name = f"{stage_name}." + ".".join(str(p) for p in sub)
                out.append(_make_param(value, kind, name, stage, sub, where, source))
                continue
        if isinstance(value, (dict, list)):
            _collect(value, stage, stage_name, sub, source, out)


def _outside_stages(tree: dict[str, Any], source: str) -> None:
    """A space outside ``stages`` is not searched: say so instead of a confusing type error."""
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node and set(node) <= SPACE_KEYS and ("choices" in node or {"low", "high"} <= set(node)):
                raise RecipeError(f"{source}: {where}: only stage settings can be searched")
            for k, v in node.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}.{i}")

    walk({k: v for k, v in tree.items() if k != "stages"}, "")


def _names(stages: list[Any]) -> list[str]:
    """Stage names as Recipe.stage_names gives them, for the full list of stages."""
    names: list[str] = []
    for i, stage in enumerate(stages):
        name = (stage.get("name") if isinstance(stage, dict) else None) or (
            stage.get("kind") if isinstance(stage, dict) else None) or f"stage{i}"
        names.append(f"{name}-{i}" if name in names else str(name))
    return names


def parse_space(tree: Any, *, source: str = "<recipe>", overrides: tuple[str, ...] = ()) -> SearchSpace:
    """Parse and check a search recipe: its spaces, its search section, and that every value of
    every space (one at a time, the others at their first value) gives a valid recipe."""
    from lepton.pipeline.recipe import apply_override

    if not isinstance(tree, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping at the top level")
    _check_size(tree, source)  # before anything walks it: YAML aliases can stand for 10^9 values
    tree = copy.deepcopy(tree)
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        _check_size(tree, source)
    raw_settings = tree.pop("search", None)
    raw_settings = {} if raw_settings is None else raw_settings
    try:
        settings = SearchSettings.model_validate(raw_settings)
    except ValidationError as err:
        from lepton.pipeline.recipe import format_errors

        raise RecipeError(format_errors(err, SearchSettings, "search", source)) from None
    _outside_stages(tree, source)
    stages = tree.get("stages")
    if not isinstance(stages, list) or not stages:
        raise RecipeError(f"{source}: stages: a search needs a list of stages to search over")
    names = _names(stages)
    params: list[Param] = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            continue  # parse_recipe below names the problem
        optional = stage.get("optional", False)
        if not isinstance(optional, bool):
            raise RecipeError(f"{source}: stages.{i}.optional: expected true or false (got {optional!r})")
        if optional:
            params.append(Param(f"{names[i]}.{ENABLED}", i, (), "enabled"))
        _collect({k: v for k, v in stage.items() if k != "optional"}, i, names[i], (), source, params)
    space = SearchSpace(tree=tree, stage_names=names, params=params, settings=settings, source=source)
    _check_corners(space)
    return space


def _check_size(tree: Any, source: str) -> None:
    """The guard ``lepton validate`` applies (``lepton.pipeline.recipe``), applied to a search recipe."""
    from lepton.pipeline.recipe import MAX_RECIPE_VALUES, expanded_size

    if expanded_size(tree, MAX_RECIPE_VALUES) > MAX_RECIPE_VALUES:
        raise RecipeError(f"{source}: expands to more than {MAX_RECIPE_VALUES:,} values or nests more "
                          "than 200 deep (YAML aliases repeating a node?); write the recipe out plainly")


def _check_corners(space: SearchSpace) -> None:
    try:
        space.plain_recipe({})
    except RecipeError as err:
        raise RecipeError(f"{err} [every search space at its first value]") from None
    for p in space.params:
        for value in p.corners():
            try:
                space.plain_recipe({p.name: value})
            except RecipeError as err:
                if p.kind == "enabled":
                    continue  # leaving a stage out may break another (a teacher): a bad combination
                raise RecipeError(f"{err} [search space {p.name} = {value!r}]") from None


def load_space(path: str | os.PathLike[str], overrides: tuple[str, ...] = ()) -> SearchSpace:
    from lepton.pipeline.recipe import read_yaml

    return parse_space(read_yaml(path), source=str(path), overrides=overrides)
