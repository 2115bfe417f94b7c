"""Base class for every recipe section: strict, so a typo is an error, never ignored."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

# Names that become part of a file path or URL (stage names, task/head names): one plain path
# component, so no name can point outside the folder it is written into.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def plain_name(value: str) -> str:
    if not isinstance(value, str) or not _PLAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain name: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (it names files and URLs)")
    return value


PlainName = Annotated[str, AfterValidator(plain_name)]

SMOKE_NOTE = ("smoke run: every data source and training stage was capped (lepton run --smoke); "
              "the figures show that the recipe works, not what it achieves")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # What a smoke run (``lepton run --smoke``) caps in this section: field -> value. A number
    # caps the field (a None, "no limit", becomes the cap); anything else replaces it. A section
    # declares its own caps, so a new data source or stage is capped by declaring them here.
    smoke_caps: ClassVar[dict[str, Any]] = {}
    # Fields a smoke run sets only where the recipe left them unset (None), e.g. a sample's seed.
    smoke_defaults: ClassVar[dict[str, Any]] = {}

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `epochs: true` as 1; a boolean where a number belongs is a mistake.
        if isinstance(value, bool) and info.field_name is not None:
            annotation = str(cls.model_fields[info.field_name].annotation)
            if "bool" not in annotation and ("int" in annotation or "float" in annotation):
                raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
        return value

    def apply_smoke(self) -> None:
        """Cap this section and every section inside it for a smoke run (in place)."""
        for field, cap in type(self).smoke_caps.items():
            value = getattr(self, field)
            numeric = isinstance(cap, (int, float)) and not isinstance(cap, bool)
            new = (cap if value is None else min(value, cap)) if numeric else cap
            if new != value:
                setattr(self, field, new)
        for field, default in type(self).smoke_defaults.items():
            if getattr(self, field) is None:
                setattr(self, field, default)
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
