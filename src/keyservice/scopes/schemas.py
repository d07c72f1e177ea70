"""The scope catalog as the admin API shows it."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyservice.users.schemas import Description, NoSecret, matching

# A subset of RFC 6749 §3.3 scope-token characters that reads well in URLs and tables.
SCOPE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
SCOPE_NAME = re.compile(SCOPE_NAME_PATTERN)
# A new name must also be slash-separated parts, none empty, "." or "..": HTTP clients
# resolve dot parts out of `/admin/scopes/{name}` (RFC 3986 §5.2.4), and proxies may merge
# `//` or drop a final `/`, so PATCH and DELETE could never reach such a scope. Only
# creation checks it: names made before stay valid (the console sends names as form fields).
NEW_SCOPE_NAME_PATTERN = (
    r"^(?!.*/\.\.?(?:/|$))"  # no "." or ".." part
    r"[A-Za-z0-9][A-Za-z0-9_.:-]*(?:/[A-Za-z0-9_.:-]+)*$"
)
NEW_SCOPE_NAME = re.compile(NEW_SCOPE_NAME_PATTERN)


class ScopeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        Field(min_length=1, max_length=100, json_schema_extra={"pattern": NEW_SCOPE_NAME_PATTERN}),
        matching(SCOPE_NAME_PATTERN, "may hold only letters, digits and _ . : / -, and must "
                 "start with a letter or digit"),
        matching(NEW_SCOPE_NAME_PATTERN, "may not end with /, nor have an empty, . or .. part "
                 "between slashes: a URL would lose it, and the scope could not be edited or "
                 "deleted"),
        NoSecret,
    ]  # fmt: skip
    description: Description = ""


def _update_schema(schema: dict[str, Any]) -> None:
    # `description` takes no null; an empty body changes nothing (422).
    field = schema["properties"]["description"]
    field.pop("default", None)
    for branch in [one for one in field.pop("anyOf", ()) if one.get("type") != "null"]:
        field.update(branch)
    schema["minProperties"] = 1


class ScopeUpdate(BaseModel):
    """An edit of a scope: its description (the name is what principals and keys hold)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_update_schema)

    description: Description | None = None

    @field_validator("description")
    @classmethod
    def _not_null(cls, value: str | None) -> str | None:
        # A None here was sent (a default is not validated).
        if value is None:
            raise ValueError('cannot be null: give the new description ("" for none)')
        return value


class ScopeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    description: str
    builtin: bool
    created_at: datetime


class ScopeList(BaseModel):
    items: list[ScopeRead]
