"""Admin API for the audit log: filtered, newest first, paged by an opaque cursor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from keyservice.audit import service
from keyservice.audit.schemas import AuditEventList, AuditEventRead
from keyservice.dependencies import AdminPrincipal, SessionDep
from keyservice.routing import TableRoute

router = APIRouter(prefix="/admin/audit-events", tags=["admin"], route_class=TableRoute)


@router.get("", response_model=AuditEventList)
async def list_events(
    _admin: AdminPrincipal,
    session: SessionDep,
    type: Annotated[str | None, Query(max_length=64)] = None,
    principal_id: Annotated[str | None, Query(max_length=36)] = None,
    key_id: Annotated[str | None, Query(max_length=36)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, description="At most 500 are returned.")] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditEventList:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a time without an offset is read as UTC
    items, next_cursor = await service.list_events(
        session,
        type=type,
        principal_id=principal_id,
        key_id=key_id,
        since=since,
        limit=limit,
        cursor=cursor,
    )
    return AuditEventList(
        items=[AuditEventRead.model_validate(item) for item in items], next_cursor=next_cursor
    )
