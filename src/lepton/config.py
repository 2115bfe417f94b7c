"""Base class for every recipe section: strict, so a typo is an error, never ignored."""

from __future__ import annotations

import re
from typing import Annotated, Any

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


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `epochs: true` as 1; a boolean where a number belongs is a mistake.
        if isinstance(value, bool) and info.field_name is not None:
            annotation = str(cls.model_fields[info.field_name].annotation)
            if "bool" not in annotation and ("int" in annotation or "float" in annotation):
                raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
        return value
