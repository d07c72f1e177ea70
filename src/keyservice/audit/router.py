"""Admin API for the audit log: filtered, newest first, paged by an opaque cursor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from keyservice.audit import service
from keyservice.audit.schemas import AuditEventList, AuditEventRead
from keyservice.dependencies import AdminPrincipal, SessionDep
from keyservice.ids import IdFilter
from keyservice.routing import TableRoute
from keyservice.timestamps import Timestamp

router = APIRouter(prefix="/admin/audit-events", tags=["admin"], route_class=TableRoute)


@router.get("", summary="List audit events, newest first", response_model=AuditEventList)
async def list_events(
    _admin: AdminPrincipal,
    session: SessionDep,
    type: Annotated[
        str | None,
        Query(max_length=64, description="Only events of this type, e.g. `token.exchange`."),
    ] = None,
    principal_id: IdFilter = None,
    key_id: IdFilter = None,
    since: Annotated[Timestamp | None, Query(description="RFC 3339 with an offset.")] = None,
    limit: Annotated[
        int, Query(ge=1, description="Page size (default 100; at most 500 are returned).")
    ] = 100,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="The `next_cursor` of the previous page, to read the next one.",
        ),
    ] = None,
) -> AuditEventList:
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
