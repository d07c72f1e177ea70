"""Users as the admin API shows them: never a password or its hash."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError

from keyservice.exceptions import ValidationFailed
from keyservice.principals.models import Principal
from keyservice.security.tokens import holds_secret

# Letters, digits and a few separators: names end up in audit actors and CLI tables.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$"
MIN_PASSWORD_LENGTH = 8


def matching(pattern: str, says: str) -> AfterValidator:
    """Check a name against `pattern`, refusing it in words rather than with the regex.

    pydantic's own message ("String should match pattern '^[A-Za-z0-9]...'") leaves the
    person who typed "john doe" to read a regular expression.
    """
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if compiled.fullmatch(value) is None:
            raise PydanticCustomError("name_format", says)
        return value

    return AfterValidator(check)


def _no_secret(value: str) -> str:
    if holds_secret(value):
        raise PydanticCustomError(
            "looks_like_secret",
            "looks like a secret (an API key, client secret, refresh token or access "
            "token): names and descriptions are shown to others, so keep secrets out of them",
        )
    return value


# Characters that change how the text around them is shown, not what it says: controls (a
# line break in a key's name forges a line in a terminal's listing, ESC starts a terminal
# escape) and Unicode's text-direction embeddings, overrides and isolates (U+202E shows
# "exe.jpg" as "gpj.exe"). Descriptions keep tabs and line breaks.
_HIDDEN_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_HIDDEN_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _shown_as_written(hidden: re.Pattern[str]) -> AfterValidator:
    def check(value: str) -> str:
        found = hidden.search(value)
        if found is not None:
            raise PydanticCustomError(
                "hidden_character",
                "holds the character U+{code}, a control or text-direction character that "
                "would change how the text is shown to others; remove it",
                {"code": f"{ord(found.group()):04X}"},
            )
        return value

    return AfterValidator(check)


ShownName = _shown_as_written(_HIDDEN_IN_NAMES)

# For text that lists, the console and the audit trail show: names and descriptions. A
# credential pasted into one (the key string as its own name, say) would be shown to
# everyone who reads them; audit events would hide it, lists could not.
NoSecret = AfterValidator(_no_secret)

# A description of a key, a device or a scope, as every one is checked.
Description = Annotated[str, Field(max_length=1000), _shown_as_written(_HIDDEN_IN_TEXT), NoSecret]

# The pattern stays in the JSON schema (OpenAPI) for clients and generators.
Name = Annotated[
    str,
    Field(min_length=1, max_length=100, json_schema_extra={"pattern": NAME_PATTERN}),
    matching(NAME_PATTERN, "may hold only letters, digits and . _ @ + -, and must start "
             "with a letter or digit"),
    NoSecret,
]  # fmt: skip


# A scope name in a list of permissions or of a key's scopes. Whether the catalog holds it
# is the service's to say; an empty one (a blank left in a template) is refused as empty,
# rather than as an unknown scope the admin should add to the catalog.
ScopeRef = Annotated[str, Field(min_length=1)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Name
    password: str = Field(min_length=1, max_length=1024, repr=False)
    permissions: list[ScopeRef] = Field(default_factory=list, max_length=100)


def _edit_schema(schema: dict[str, Any]) -> None:
    schema["minProperties"] = 1


class PrincipalEdit(BaseModel):
    """An admin's edit of a user or device: only the fields sent are changed, and `null`
    counts as not sent. One that sends nothing is refused (422), as an edit of a key or a
    scope is: a client that meant to change something learns it did not."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_edit_schema)

    def require_change(self) -> None:
        names = type(self).model_fields
        if all(getattr(self, name) is None for name in names):
            raise ValidationFailed(
                "Nothing to change: give at least one of " + ", ".join(names) + "."
            )


class UserUpdate(PrincipalEdit):
    # Strict: lax parsing reads "yes", "off" or 1 as a boolean, a guess about an admin action.
    disabled: StrictBool | None = None
    permissions: list[ScopeRef] | None = Field(default=None, max_length=100)
    password: str | None = Field(default=None, min_length=1, max_length=1024, repr=False)


class UserRead(BaseModel):
    id: str
    type: str = "user"
    username: str
    permissions: list[str]
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: Principal) -> UserRead:
        return cls(
            id=user.id,
            username=user.name,
            permissions=sorted(user.permissions),
            disabled=user.disabled,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class UserList(BaseModel):
    items: list[UserRead]
    next_cursor: str | None = Field(
        description="With `limit`: the `cursor` of the next page; null on the last page "
        "and when no `limit` was given (then `items` holds every one)."
    )
