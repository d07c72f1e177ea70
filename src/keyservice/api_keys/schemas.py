from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from keyservice.security.ip import parse_cidrs
from keyservice.timestamps import Timestamp


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=1000)
    scopes: list[str] | None = Field(default=None, max_length=100)
    expires_at: Timestamp | None = None
    allowed_ips: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the name must not be blank")
        return value.strip()

    @field_validator("scopes")
    @classmethod
    def _scopes_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("give at least one scope, or omit scopes to inherit permissions")
        return value

    @field_validator("allowed_ips")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [str(net) for net in parse_cidrs(value, strict=True)]


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
    client_secret: str | None = Field(repr=False)
    api_key: str = Field(repr=False)


class ApiKeyList(BaseModel):
    items: list[ApiKeyRead]


class AdminApiKeyList(BaseModel):
    items: list[ApiKeyRead]
    next_cursor: str | None = Field(
        description="With `limit`: the `cursor` of the next page; null on the last page "
        "and when no `limit` was given (then `items` holds every key)."
    )
