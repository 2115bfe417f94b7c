"""The stage contract: every stage's config base class, the registry, and the train-hook protocol.

A stage is a config class (a ``StageConfig`` subclass whose ``kind`` field is a ``Literal`` of its
name) plus one function ``apply(bundle, config, ctx) -> bundle`` registered with ``register``.
What a stage *is* (it trains, it is the baseline, it leaves another runtime, ...) is declared
here as ClassVars of its config, so that no other module checks a stage kind's name.

This module imports no stage: stage modules import it, ``lepton.stages`` imports both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, Protocol, get_args, get_origin, runtime_checkable

from lepton.core.config import PlainName, StrictModel
from lepton.core.registry import Registry


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
    # It runs the shared training loop (and so applies training hooks, such as gradual pruning's
    # masks): a stage that leaves hooks needs one of these after it.
    trains: ClassVar[bool] = False
    # It trains the task head: a recipe needs one such stage, or a saved Lepton model to start from.
    trains_head: ClassVar[bool] = False
    # Its result is the baseline the run compares every later variant with (the first such
    # stage; a search measures every trial against the stages up to it).
    is_baseline: ClassVar[bool] = False
    # It adds task heads on the shared encoder: its settings' ``tasks`` name them, and its summary's
    # ``dev`` holds a score per task (reports and model cards show them; ``lepton.tasks.heads`` finds a
    # head's task and data in it).
    adds_heads: ClassVar[bool] = False
    # It leaves a quantized model: no later stage can take it (a model is quantized once; export,
    # training and pruning need a float model).
    quantizes: ClassVar[bool] = False
    # The runtimes whose model it takes, and the runtime it leaves (None: the one it was given).
    accepts_runtimes: ClassVar[tuple[str, ...]] = ("torch",)
    produces_runtime: ClassVar[str | None] = None
    # The task kinds it can work on (None: any).
    task_kinds: ClassVar[tuple[str, ...] | None] = None
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


@runtime_checkable
class TrainHook(Protocol):
    """What a stage leaves in ``ModelBundle.train_hooks`` for the next training stage (e.g.
    gradual pruning's masks): called after each optimizer step and once at the end."""

    def after_step(self, model: Any, step: int, total_steps: int) -> None: ...

    def finish(self, model: Any) -> dict[str, Any] | None: ...


StageFn = Callable[..., Any]  # (ModelBundle, StageConfig, RunContext) -> ModelBundle

configs: Registry[type[StageConfig]] = Registry("stage kind")
handlers: dict[type[StageConfig], StageFn] = {}


def register(config_cls: type[StageConfig]) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as the handler of ``config_cls`` under its ``kind``."""
    if not config_cls.stage_kind:
        raise TypeError(f"{config_cls.__name__}: a stage config declares kind: Literal['<name>']")

    def wrap(fn: StageFn) -> StageFn:
        configs.add(config_cls.stage_kind, config_cls)
        handlers[config_cls] = fn
        return fn

    return wrap


def handler_for(config: StageConfig, task: Any = None) -> StageFn:
    """The function that runs ``config``: the task kind's own for this stage when it has one
    (generative models compress, export and quantize their own way), else the registered one."""
    if task is not None:
        from lepton.tasks import kind_of

        own = kind_of(task).stage_handler(config)
        if own is not None:
            return own
    return handlers[type(config)]


def declared(kind: Any, attribute: str) -> Any:
    """What stage kind ``kind`` declares as ``attribute`` (a ClassVar of its config), for records
    read back from manifests and reports; None for a kind this Lepton does not know."""
    if not isinstance(kind, str) or kind not in configs:
        return None
    return getattr(configs.get(kind), attribute)
