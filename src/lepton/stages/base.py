"""The stage contract: every stage's config base class and the one registry that dispatches stages.

A stage is a config class (a ``StageConfig`` subclass whose ``kind`` field is a ``Literal`` of its
name) plus one function ``apply(bundle, config, ctx) -> bundle`` per model family it supports,
each registered with ``register(Config, family=...)``.
What a stage *is* (it trains, it is the baseline, it leaves another runtime, ...) is declared
here as ClassVars of its config, so that no other module checks a stage kind's name.

This module imports no stage: stage modules import it, ``lepton.stages`` imports both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, get_args, get_origin

from lepton.core.config import PlainName, StrictModel
from lepton.core.errors import StageError
from lepton.core.registry import Registry
from lepton.models.family import ENCODER, families
from lepton.runtimes.bundle import TrainHook

__all__ = ["StageConfig", "StageFn", "TrainHook", "configs", "contract_of", "declared", "handler_for",
           "handlers", "register", "stage_kinds_for"]


class StageConfig(StrictModel):
    """Base of every stage's settings; ``kind`` is the name used in recipes.

    A concrete stage writes its kind once, as ``kind: Literal["name"] = "name"``; ``stage_kind``
    is read from it when the class is made. Base classes (``TrainSettings``) leave ``kind`` a
    plain ``str`` and get no stage kind.
    """

    kind: str
    # A label for this stage's variant in reports (default: its kind); it also names files
    # (e.g. the LoRA adapter folder), so it must be a plain name.
    name: PlainName | None = None

    # The recipe name of this stage; derived from the ``kind`` Literal, never written by hand.
    stage_kind: ClassVar[str] = ""
    # It runs the shared training loop (and so applies training hooks, such as gradual pruning's
    # masks): a stage that leaves hooks needs one of these after it.
    trains: ClassVar[bool] = False
    # It trains the task head: a recipe needs one such stage, or a saved Lepton model to start from.
    trains_head: ClassVar[bool] = False
    # Its result is the baseline the run compares every later variant with (the first such
    # stage; a search measures every trial against the stages up to it).
    is_baseline: ClassVar[bool] = False
    # It adds task heads on the shared encoder: its settings' ``tasks`` name them, and its summary's
    # ``dev`` holds a score per task (reports and model cards show them; ``lepton.runtimes.heads`` finds a
    # head's task and data in it).
    adds_heads: ClassVar[bool] = False
    # It leaves a quantized model: no later stage can take it (a model is quantized once; export,
    # training and pruning need a float model).
    quantizes: ClassVar[bool] = False
    # The runtimes whose model it takes, and the runtime it leaves (None: the one it was given).
    accepts_runtimes: ClassVar[tuple[str, ...]] = ("torch",)
    produces_runtime: ClassVar[str | None] = None
    # Minimal settings the stage contract test (tests/test_stage_contract.py) runs it with, on a
    # tiny model, and the stages that must run before it there (settings dicts, in order; a
    # stage needing a teacher names one of them by its ``name``). A new stage joins the test
    # by declaring these. String values the test fills in: "{train}" / "{dev}" (data files of
    # the task kind under test), "{task}" (that kind's task section), "{text}" (a plain-text
    # file, one document per line).
    contract_example: ClassVar[dict[str, Any]] = {}
    contract_before: ClassVar[tuple[dict[str, Any], ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        annotation = cls.model_fields["kind"].annotation
        if get_origin(annotation) is Literal:
            (cls.stage_kind,) = get_args(annotation)
        else:  # a shared base (TrainSettings): not a stage of its own
            cls.stage_kind = ""

    def runtime_problem(self, runtime: str) -> str | None:
        """Why this stage cannot take a model on ``runtime`` beyond ``accepts_runtimes`` (a
        method that runs on one runtime only, say); None when it can. Checked at validation."""
        return None

    def needs_training_after(self) -> str | None:
        """Why a training stage (``trains``) must follow this one, e.g. "gradual pruning happens
        during training"; None when none must. Checked at validation."""
        return None

    def layers_left(self, total: int, where: str) -> int:
        """The encoder layer count this stage leaves from ``total``, checked before anything runs
        (raise ``RecipeError`` naming ``where`` when the settings cannot fit). Default: unchanged."""
        return total


StageFn = Callable[..., Any]  # (ModelBundle, StageConfig, RunContext) -> ModelBundle

configs: Registry[type[StageConfig]] = Registry("stage kind")
# (stage config class, model family) -> the function that runs that stage on that family's models
handlers: dict[tuple[type[StageConfig], str], StageFn] = {}
# The settings and the stages before it (each None: the config's own ``contract_example`` /
# ``contract_before``) that the stage contract test runs one family's implementation with.
contracts: dict[tuple[type[StageConfig], str], tuple[dict[str, Any] | None, tuple[dict[str, Any], ...] | None]] = {}


def register(config_cls: type[StageConfig], *, family: str | tuple[str, ...] = ENCODER.name,
             example: dict[str, Any] | None = None,
             before: tuple[dict[str, Any], ...] | None = None) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as the implementation of ``config_cls`` for the model ``family`` (one
    name or several; see ``lepton.models.family``). The first registration of a config class adds
    its ``kind`` to the recipe's stage kinds. ``example`` / ``before``: the contract test's
    settings for this family when the config's own do not fit it."""
    if not config_cls.stage_kind:
        raise TypeError(f"{config_cls.__name__}: a stage config declares kind: Literal['<name>']")
    names = (family,) if isinstance(family, str) else family
    for name in names:
        families.get(name)  # an unknown family is a programming error, with a suggestion

    def wrap(fn: StageFn) -> StageFn:
        if config_cls.stage_kind not in configs:
            configs.add(config_cls.stage_kind, config_cls)
        for name in names:
            if (config_cls, name) in handlers:
                raise ValueError(f"{config_cls.stage_kind} already has an implementation for {name} models")
            handlers[(config_cls, name)] = fn
            contracts[(config_cls, name)] = (example, before)
        return fn

    return wrap


def handler_for(config: StageConfig, family: str = ENCODER.name, where: str = "") -> StageFn:
    """The function that runs ``config`` on a model of ``family`` (``ModelBundle.family``); a
    stage with no implementation for that family is refused in one line naming both."""
    fn = handlers.get((type(config), family))
    if fn is None:
        kind = type(config).stage_kind
        known = ", ".join(f for (cls, f) in sorted(handlers, key=lambda k: k[1]) if cls is type(config))
        raise StageError(f"{where + ': ' if where else ''}{kind} is not implemented for "
                         f"{families.get(family).title} (it is for: {known or 'none'})")
    return fn


def stage_kinds_for(family_names: tuple[str, ...]) -> tuple[str, ...]:
    """The stage kinds with an implementation for any of ``family_names``."""
    return tuple(sorted({cls.stage_kind for (cls, f) in handlers if f in family_names}))


def contract_of(config_cls: type[StageConfig], family: str) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """(settings, stages before) the contract test runs ``config_cls`` with on ``family``."""
    example, before = contracts.get((config_cls, family), (None, None))
    return (example if example is not None else config_cls.contract_example,
            before if before is not None else config_cls.contract_before)


def declared(kind: Any, attribute: str) -> Any:
    """What stage kind ``kind`` declares as ``attribute`` (a ClassVar of its config), for records
    read back from manifests and reports; None for a kind this Lepton does not know."""
    if not isinstance(kind, str) or kind not in configs:
        return None
    return getattr(configs.get(kind), attribute)
