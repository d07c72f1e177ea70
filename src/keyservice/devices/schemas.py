"""Devices as the admin API shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from keyservice.principals.models import Principal
from keyservice.users.schemas import Description, Name, PrincipalEdit, ScopeRef


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: Description = ""
    permissions: list[ScopeRef] = Field(default_factory=list, max_length=100)


class DeviceUpdate(PrincipalEdit):
    # Strict: lax parsing reads "yes", "off" or 1 as a boolean, a guess about an admin action.
    disabled: StrictBool | None = None
    permissions: list[ScopeRef] | None = Field(default=None, max_length=100)
    description: Description | None = None


class DeviceRead(BaseModel):
    id: str
    type: str = "device"
    name: str
    description: str
    permissions: list[str]
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, device: Principal) -> DeviceRead:
        return cls(
            id=device.id,
            name=device.name,
            description=device.description,
            permissions=sorted(device.permissions),
            disabled=device.disabled,
            created_at=device.created_at,
            updated_at=device.updated_at,
        )


class DeviceList(BaseModel):
    items: list[DeviceRead]
    next_cursor: str | None = Field(
        description="With `limit`: the `cursor` of the next page; null on the last page "
        "and when no `limit` was given (then `items` holds every one)."
    )
