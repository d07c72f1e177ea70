from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

from keyservice.security.ip import parse_cidrs
from keyservice.timestamps import Timestamp
from keyservice.users.schemas import Description, NoSecret, ScopeRef, ShownName


def _name_not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("the name must not be blank")
    return value.strip()


def _scopes_not_empty(value: list[str] | None) -> list[str] | None:
    if value is not None and not value:
        raise ValueError("give at least one scope, or omit scopes to inherit permissions")
    return value


def normalized_cidrs(value: list[str]) -> list[str]:
    """An allow-list as stored: each network normalized (a bare address is a /32 or /128),
    once, in the order given (a repeat, `10.0.0.1` beside `10.0.0.1/32`, allows nothing more)."""
    return list(dict.fromkeys(str(net) for net in parse_cidrs(value, strict=True)))


# A key's settings as a body gives them, checked the same way at creation and at an edit.
KeyName = Annotated[
    str,
    Field(min_length=1, max_length=100),
    ShownName,  # before the strip, which would drop a trailing one silently
    AfterValidator(_name_not_blank),
    NoSecret,
]
KeyScopes = Annotated[
    list[ScopeRef] | None, Field(max_length=100), AfterValidator(_scopes_not_empty)
]
KeyAllowedIps = Annotated[list[str], Field(max_length=100), AfterValidator(normalized_cidrs)]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName
    description: Description = ""
    scopes: KeyScopes = None
    expires_at: Timestamp | None = None
    allowed_ips: KeyAllowedIps = Field(default_factory=list)


# What an edit may change, in the order its audit event names them.
UPDATABLE = ("name", "description", "scopes", "expires_at", "allowed_ips")


def _update_schema(schema: dict[str, Any]) -> None:
    # Only `scopes` takes null; an empty body changes nothing (422).
    for name, field in schema["properties"].items():
        if name != "scopes":
            field.pop("default", None)
            branches = [one for one in field.pop("anyOf", ()) if one.get("type") != "null"]
            for branch in branches:
                field.update(branch)
    schema["minProperties"] = 1


class ApiKeyUpdate(BaseModel):
    """An edit of a key's settings: only the fields sent change (`model_fields_set`).

    `scopes: null` makes the key inherit its owner's permissions; the other fields take no
    null (leave one out to keep it).
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_update_schema)

    name: KeyName | None = None
    description: Description | None = None
    scopes: KeyScopes = None
    expires_at: Timestamp | None = None
    allowed_ips: KeyAllowedIps | None = None

    @field_validator("name", "description", "expires_at", "allowed_ips")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # A None here was sent (a default is not validated): only scopes has a null.
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep its value")
        return value


class ApiKeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A JSON integer: lax parsing would also take "10", 10.0 and true.
    grace_seconds: StrictInt = Field(default=86400, ge=0, le=86400 * 30)


class ApiKeyRead(BaseModel):
    id: str
    client_id: str
    name: str
    description: str
    scopes: list[str] | None
    inherits_permissions: bool
    allowed_ips: list[str]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    last_used_ip: str | None
    status: str
    expires_soon: bool
    owner_id: str
    owner_type: str
    legacy: bool = False


class ApiKeyCreated(ApiKeyRead):
    """A key as just created or rotated: the only answer that ever shows its secret."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5f0c6a7e-2b1d-4c8e-9a51-3d2f7b9e0c14",
                    "client_id": "kc_...",
                    "name": "billing exporter",
                    "description": "",
                    "scopes": ["projects:read"],
                    "inherits_permissions": False,
                    "allowed_ips": ["203.0.113.0/24"],
                    "created_at": "2026-11-22T10:00:00Z",
                    "expires_at": "2027-02-20T10:00:00Z",
                    "last_used_at": None,
                    "last_used_ip": None,
                    "status": "valid",
                    "expires_soon": False,
                    "owner_id": "0b7c1e52-8f4a-4d3e-b6a9-1c2d3e4f5a6b",
                    "owner_type": "user",
                    "legacy": False,
                    "client_secret": "<shown once>",
                    "api_key": "ksk_...",
                }
            ]
        }
    )

    client_secret: str | None = Field(
        repr=False, description="Shown in this answer only; stored as a hash."
    )
    api_key: str = Field(
        repr=False,
        description="The single key string (client id and secret) to configure a client "
        "with; shown in this answer only.",
    )


class ApiKeyList(BaseModel):
    items: list[ApiKeyRead]


class AdminApiKeyList(BaseModel):
    items: list[ApiKeyRead]
    next_cursor: str | None = Field(
        description="With `limit`: the `cursor` of the next page; null on the last page "
        "and when no `limit` was given (then `items` holds every key)."
    )
