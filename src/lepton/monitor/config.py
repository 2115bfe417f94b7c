"""The monitor config: one YAML file, validated as strictly as a recipe.

Loading goes YAML -> ``--set`` overrides -> ``${VAR}`` interpolation -> validation; an unknown key
is an error naming its path and the closest valid key (the recipe's own machinery).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from lepton.core.config import StrictModel
from lepton.core.errors import LeptonError

SCHEMA_VERSION = 1


class MonitorConfigError(LeptonError):
    """The monitor config is malformed (the message names the file and key)."""


class MonitorError(LeptonError):
    """The monitor stopped because a source failed (the message names the source and the cause)."""


class HeadRef(StrictModel):
    """Where one label set comes from: which MODEL argument, and which task of it."""

    model: int = Field(0, ge=0, le=1)  # 0: the first MODEL argument, 1: MODEL2
    task: str | None = None  # a multi-task model's task; None: its main task


class PredictConfig(StrictModel):
    sentiment: HeadRef = Field(default_factory=HeadRef)
    topic: HeadRef = Field(default_factory=lambda: HeadRef(model=0, task="topic"))
    negative_label: str = "negative"  # the sentiment label that counts as negative
    batch_size: int = Field(32, ge=1, le=1024)  # inputs per model call
    # Both tasks of one multi-task model from one encoder pass (lepton.monitor.onepass); false:
    # one predict() call per task, the encoder running twice.
    one_pass: bool = True


class WindowConfig(StrictModel):
    width_s: float = Field(300.0, gt=0)  # tumbling windows per topic, aligned to the Unix epoch
    # A window closes (and is tested) once an item stamped this long after its end has arrived;
    # items for a window already closed are stored and counted, but the window is not re-tested.
    lateness_s: float = Field(0.0, ge=0)
    # An item stamped more than this many seconds ahead of both the newest stored item and the
    # wall clock is refused (logged, counted), never stored: one wrong timestamp would otherwise
    # move the watermark years ahead and close every open window at once.
    max_ahead_s: float = Field(3600.0, gt=0)


class SurgeConfig(StrictModel):
    """The surge rule, per topic and closed window: one-sided Fisher exact test of the window's
    negative share against the topic's baseline (its last ``baseline_windows`` closed windows
    outside any alert episode). Fires when p <= alpha and the minimum counts are met."""

    method: Literal["fisher"] = "fisher"
    alpha: float = Field(0.001, gt=0, lt=0.5)  # false-alarm rate per topic and window, at most
    min_count: int = Field(10, ge=1)  # items of the topic in the window
    min_negative: int = Field(3, ge=1)  # negative items in the window
    min_lift: float = Field(0.0, ge=0, le=1)  # window share minus baseline share, at least
    baseline_windows: int = Field(12, ge=1)
    min_baseline: int = Field(30, ge=1)  # items in the baseline before the rule may fire
    close_after: int = Field(2, ge=1)  # windows without a firing that end an episode


class DriftConfig(StrictModel):
    """The drift check per time window (across all topics): the window's texts, predicted labels and
    confidences against the model's drift reference (lepton.evaluation.drift.check_window)."""

    enabled: bool = True  # on where the model carries a drift reference
    alpha: float = Field(0.01, gt=0, lt=1)  # family-wise false-alarm rate per window (Holm over the tests)
    min_items: int = Field(30, ge=2)  # a window with fewer items is not tested


class WebhookConfig(StrictModel):
    url: str
    timeout_s: float = Field(5.0, gt=0, le=3600)  # the whole of one delivery: connect, send, answer
    max_in_flight: int = Field(4, ge=1, le=64)  # deliveries at once (of different alerts)
    max_attempts: int = Field(8, ge=1)
    backoff_s: float = Field(0.5, gt=0, le=86400)  # first retry after this, doubling each time
    backoff_max_s: float = Field(60.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _http_url(self) -> WebhookConfig:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        return self


class AlertsConfig(StrictModel):
    log: bool = True  # every alert event as a WARNING log line
    webhook: WebhookConfig | None = None
    top_items: int = Field(10, ge=1, le=1000)  # the most negative items shown per alert


class StoreConfig(StrictModel):
    # None: SQLite (WAL) at OUTPUT/monitor.db; "sqlite:///path.db" or "postgresql://..." otherwise.
    url: str | None = None

    @model_validator(mode="after")
    def _known_scheme(self) -> StoreConfig:
        if self.url is not None and not self.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("url must start with sqlite:/// or postgresql:// "
                             f"(got {self.url.split('://')[0] + '://' if '://' in self.url else self.url!r})")
        return self


class IngestConfig(StrictModel):
    max_batch: int = Field(64, ge=1, le=4096)  # items per model call + commit
    max_wait_ms: float = Field(20.0, ge=0)  # how long a batch waits for more items
    max_queue: int = Field(10_000, ge=1)  # items waiting; beyond it POST /v1/ingest gets 503
    max_items: int = Field(256, ge=1)  # items per POST /v1/ingest
    max_chars: int = Field(10_000, ge=1)  # characters per text
    max_body_bytes: int = Field(4 << 20, ge=1)


class ServerConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65535)
    refresh_s: float = Field(2.0, gt=0)  # how often the dashboard polls
    header_timeout_s: float = Field(10.0, gt=0, le=3600)  # a connection whose headers stall is closed
    body_timeout_s: float = Field(30.0, gt=0, le=3600)  # a body that stalls this long: 408


class MonitorConfig(StrictModel):
    schema_version: Literal[1] = 1
    name: str = "monitor"
    predict: PredictConfig = Field(default_factory=PredictConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    surge: SurgeConfig = Field(default_factory=SurgeConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    output: str = Field("runs/monitor", min_length=1)


def parse_config(tree: Any, *, source: str = "<monitor config>", overrides: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> MonitorConfig:
    from lepton.core.errors import RecipeError
    from lepton.pipeline.recipe import MAX_RECIPE_VALUES, apply_override, expanded_size, format_errors, interpolate

    def check_size() -> None:  # before copying or walking a tree YAML aliases may have blown up
        if expanded_size(tree, MAX_RECIPE_VALUES) > MAX_RECIPE_VALUES:
            raise MonitorConfigError(f"{source}: expands to more than {MAX_RECIPE_VALUES:,} values or nests "
                                     "more than 200 deep (YAML aliases repeating a node?); write it out plainly")

    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise MonitorConfigError(f"{source}: a monitor config is a YAML mapping at the top level")
    check_size()
    tree = copy.deepcopy(tree)
    try:
        for assignment in overrides:
            apply_override(tree, assignment)
        if overrides:
            check_size()
        tree = interpolate(tree, os.environ if env is None else env)
    except RecipeError as err:
        raise MonitorConfigError(f"{source}: {err}") from None
    try:
        return MonitorConfig.model_validate(tree)
    except ValidationError as err:
        raise MonitorConfigError(format_errors(err, MonitorConfig, "", source)) from None


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = (),
                env: Mapping[str, str] | None = None) -> MonitorConfig:
    """The config at ``path`` (None: every default) with ``overrides`` applied."""
    if path is None:
        return parse_config({}, overrides=overrides, env=env)
    from lepton.pipeline.recipe import read_yaml

    tree = read_yaml(path, "monitor config", MonitorConfigError)
    return parse_config(tree, source=str(path), overrides=overrides, env=env)
