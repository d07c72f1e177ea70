"""Admin API over all API keys: list any principal's keys, revoke any key."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from keyservice.api_keys import service
from keyservice.api_keys.schemas import AdminApiKeyList, ApiKeyRead
from keyservice.database import utcnow
from keyservice.dependencies import (
    AdminPrincipal,
    ContextDep,
    RequestIp,
    SessionDep,
    audit_actor,
)
from keyservice.ids import IdFilter, PathId
from keyservice.paging import Cursor, Limit
from keyservice.routing import TableRoute

router = APIRouter(prefix="/admin/api-keys", tags=["admin"], route_class=TableRoute)

Status = Literal["revoked", "expired", "suspended", "valid"]


@router.get("", summary="List every API key (filters, paging)", response_model=AdminApiKeyList)
async def list_keys(
    _admin: AdminPrincipal,
    session: SessionDep,
    context: ContextDep,
    client_id: Annotated[
        str | None,
        Query(
            description=(
                "The key with this client ID (kc_...; a leaked key string's ksk_ part names "
                "it). Never the key string itself: that is refused (422)."
            )
        ),
    ] = None,
    owner_type: Annotated[
        Literal["user", "device"] | None, Query(description="Only keys of users, or of devices.")
    ] = None,
    owner_id: IdFilter = None,
    status: Annotated[
        Status | None, Query(description="Only keys of this (derived) status.")
    ] = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> AdminApiKeyList:
    """Every key, newest first (then by id); with `limit`, paged by `next_cursor`."""
    items, next_cursor = await service.list_all(
        context,
        session,
        client_id=client_id,
        owner_type=owner_type,
        owner_id=owner_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    return AdminApiKeyList(items=items, next_cursor=next_cursor)


@router.get("/{key_id}", summary="Read any API key", response_model=ApiKeyRead)
async def get_key(
    key_id: PathId, _admin: AdminPrincipal, session: SessionDep, context: ContextDep
) -> ApiKeyRead:
    key, owner = await service.get_any(session, key_id=key_id)
    return service.to_read(key, owner, context.settings, utcnow())


@router.delete("/{key_id}", summary="Revoke any API key", status_code=204)
async def revoke_key(
    key_id: PathId, admin: AdminPrincipal, session: SessionDep, context: ContextDep, ip: RequestIp
) -> Response:
    """Revoke any key (a leaked one, say); revoking a revoked key changes nothing."""
    key, _owner = await service.get_any(session, key_id=key_id)
    await service.revoke(context, session, key=key, actor=await audit_actor(session, admin), ip=ip)
    return Response(status_code=204)
