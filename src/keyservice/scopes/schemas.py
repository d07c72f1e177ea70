"""The scope catalog as the admin API shows it."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from keyservice.users.schemas import matching

# A subset of RFC 6749 §3.3 scope-token characters that reads well in URLs and tables.
SCOPE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
SCOPE_NAME = re.compile(SCOPE_NAME_PATTERN)


class ScopeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        Field(min_length=1, max_length=100, json_schema_extra={"pattern": SCOPE_NAME_PATTERN}),
        matching(SCOPE_NAME_PATTERN, "may hold only letters, digits and _ . : / -, and must "
                 "start with a letter or digit"),
    ]  # fmt: skip
    description: str = Field(default="", max_length=1000)


class ScopeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    description: str
    builtin: bool
    created_at: datetime


class ScopeList(BaseModel):
    items: list[ScopeRead]
