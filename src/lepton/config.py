"""Base class for every recipe section: strict, so a typo is an error, never ignored."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

SMOKE_NOTE = ("smoke run: every data source and training stage was capped (lepton run --smoke); "
              "the figures show that the recipe works, not what it achieves")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # What a smoke run (``lepton run --smoke``) caps in this section: field -> value. A number
    # caps the field (a None, "no limit", becomes the cap); anything else replaces it. A section
    # declares its own caps, so a new data source or stage is capped by declaring them here.
    smoke_caps: ClassVar[dict[str, Any]] = {}

    def apply_smoke(self) -> None:
        """Cap this section and every section inside it for a smoke run (in place)."""
        for field, cap in type(self).smoke_caps.items():
            value = getattr(self, field)
            numeric = isinstance(cap, (int, float)) and not isinstance(cap, bool)
            new = (cap if value is None else min(value, cap)) if numeric else cap
            if new != value:
                setattr(self, field, new)
        for name in type(self).model_fields:
            for child in _sections(getattr(self, name)):
                child.apply_smoke()


def _sections(value: Any) -> list[StrictModel]:
    if isinstance(value, StrictModel):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, StrictModel)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, StrictModel)]
    return []
