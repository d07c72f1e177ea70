from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class KeyWarning(BaseModel):
    key_id: str
    client_id: str
    name: str
    expires_at: datetime
    status: str
    # The client id of the key that replaces this one (it was rotated and is in its grace
    # period): nothing is left to do but put that key in place before this one stops.
    replaced_by: str | None = None


class MeRead(BaseModel):
    id: str
    type: str
    username: str | None = None
    name: str | None = None
    permissions: list[str]
    warnings: list[KeyWarning]


class TokenRead(BaseModel):
    sub: str
    principal_type: str
    scope: list[str]
    client_id: str | None
    sid: str | None
    exp: int
    iat: int


class PasswordChange(BaseModel):
    """POST /me/password: the current password, then the new one."""

    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024, repr=False)
    new_password: str = Field(min_length=1, max_length=1024, repr=False)
