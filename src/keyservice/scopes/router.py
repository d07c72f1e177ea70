"""Admin API for the scope catalog."""

from __future__ import annotations

from fastapi import APIRouter, Response

from keyservice import apidoc
from keyservice.dependencies import (
    AdminPrincipal,
    ContextDep,
    RequestIp,
    SessionDep,
    audit_actor,
)
from keyservice.routing import TableRoute
from keyservice.scopes import service
from keyservice.scopes.schemas import ScopeCreate, ScopeList, ScopeRead, ScopeUpdate

router = APIRouter(prefix="/admin/scopes", tags=["admin"], route_class=TableRoute)


@router.get("", summary="List the scope catalog", response_model=ScopeList)
async def list_scopes(_admin: AdminPrincipal, session: SessionDep) -> ScopeList:
    scopes = await service.list_scopes(session)
    return ScopeList(items=[ScopeRead.model_validate(scope) for scope in scopes])


@router.post(
    "",
    summary="Add a scope to the catalog",
    responses={409: apidoc.CONFLICT},
    status_code=201,
    response_model=ScopeRead,
)
async def create_scope(
    data: ScopeCreate,
    admin: AdminPrincipal,
    session: SessionDep,
    ip: RequestIp,
    context: ContextDep,
) -> ScopeRead:
    scope = await service.create(
        session,
        name=data.name,
        description=data.description,
        actor=await audit_actor(session, admin),
        ip=ip,
        names=context.scope_names,
    )
    return ScopeRead.model_validate(scope)


# `:path`: a scope name may hold '/' (`files/read`), sent as it is or as %2F.
@router.patch(
    "/{name:path}",
    summary="Update a scope's description",
    response_model=ScopeRead,
)
async def update_scope(
    name: str, data: ScopeUpdate, admin: AdminPrincipal, session: SessionDep, ip: RequestIp
) -> ScopeRead:
    scope = await service.update(
        session,
        name=name,
        description=data.description,
        actor=await audit_actor(session, admin),
        ip=ip,
    )
    return ScopeRead.model_validate(scope)


@router.delete(
    "/{name:path}",
    summary="Delete a scope from the catalog",
    responses={409: apidoc.CONFLICT},
    status_code=204,
)
async def delete_scope(
    name: str, admin: AdminPrincipal, session: SessionDep, ip: RequestIp, context: ContextDep
) -> Response:
    await service.delete(
        session,
        name=name,
        actor=await audit_actor(session, admin),
        ip=ip,
        names=context.scope_names,
    )
    return Response(status_code=204)
