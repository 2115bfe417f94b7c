"""What an incoming item looks like (HTTP and files alike), validated strictly."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from lepton.core.errors import LeptonError


class BadItemError(LeptonError):
    """An item is malformed (the message names the file and line, or the field)."""


# Unix seconds an item may carry: from 1970 to the year 5138. Whether a time inside this range is
# plausible now (not far ahead of the stream and the clock) is the engine's check
# (lepton.monitor.engine.Monitor.timestamp_problem), which knows the watermark.
MAX_TIMESTAMP = 1e11


def parse_timestamp(value: Any) -> float:
    """Unix seconds from a number or an ISO 8601 string (no zone: UTC); finite, 0 to 1e11."""
    if isinstance(value, bool):
        raise ValueError("must be Unix seconds or an ISO 8601 string")
    if isinstance(value, (int, float)):
        if not 0 <= value < MAX_TIMESTAMP:  # NaN and +-inf fail this too
            raise ValueError(f"{value} is not Unix seconds (0 to {MAX_TIMESTAMP:.0e})")
        return float(value)
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        try:
            seconds = when.timestamp()
        except (OverflowError, ValueError, OSError):
            raise ValueError(f"{value[:40]!r} is out of range") from None
        if not 0 <= seconds < MAX_TIMESTAMP:
            raise ValueError(f"{value[:40]!r} is before 1970 or too far ahead")
        return seconds
    raise ValueError("must be Unix seconds or an ISO 8601 string")


class IngestItem(BaseModel):
    """One item: ``text``, and optionally ``timestamp``, ``id`` and ``source``."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    timestamp: float | None = Field(None, description="Unix seconds or ISO 8601; default: arrival time")
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None, description="the item's id; an id already stored is not counted again")
    source: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "http"

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> float | None:
        return None if value is None else parse_timestamp(value)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


def item_model(max_chars: int) -> type[IngestItem]:
    """IngestItem with this server's text limit in its schema."""
    from pydantic import create_model

    text = Annotated[str, StringConstraints(min_length=1, max_length=max_chars)]
    return create_model("IngestItem", __base__=IngestItem, text=(text, ...))


def parse_line(line: bytes, where: str, model: type[IngestItem] = IngestItem) -> IngestItem:
    """One JSONL line as an item; BadItemError naming ``where`` (file:line) and the field."""
    try:
        tree = json.loads(line)
    except RecursionError:
        raise BadItemError(f"{where}: JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer of 5,000 digits
        raise BadItemError(f"{where}: not a JSON object ({str(err)[:200]})") from None
    if not isinstance(tree, dict):
        raise BadItemError(f"{where}: expected a JSON object with a 'text' field")
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "item"
        raise BadItemError(f"{where}: field {field!r}: {first['msg']}") from None
