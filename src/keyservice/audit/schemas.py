"""Audit events as the admin API shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    at: datetime
    type: str
    actor: str | None
    principal_id: str | None
    key_id: str | None
    ip: str | None
    outcome: str
    reason: str | None


class AuditEventList(BaseModel):
    items: list[AuditEventRead]
    next_cursor: str | None
