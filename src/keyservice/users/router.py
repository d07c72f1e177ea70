"""Admin API for users: create, list, get, update (disable, permissions, password)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from keyservice import apidoc
from keyservice.dependencies import (
    AdminPrincipal,
    ContextDep,
    RequestIp,
    SessionDep,
    audit_actor,
)
from keyservice.ids import PathId
from keyservice.paging import Cursor, Limit
from keyservice.routing import TableRoute
from keyservice.users import service
from keyservice.users.schemas import UserCreate, UserList, UserRead, UserUpdate

router = APIRouter(prefix="/admin/users", tags=["admin"], route_class=TableRoute)


@router.post(
    "",
    summary="Create a user",
    responses={409: apidoc.CONFLICT},
    status_code=201,
    response_model=UserRead,
)
async def create_user(
    data: UserCreate,
    admin: AdminPrincipal,
    session: SessionDep,
    ip: RequestIp,
) -> UserRead:
    user = await service.create(
        session,
        username=data.username,
        password=data.password,
        permissions=data.permissions,
        actor=await audit_actor(session, admin),
        ip=ip,
    )
    return UserRead.of(user)


@router.get("", summary="List users", response_model=UserList)
async def list_users(
    _admin: AdminPrincipal,
    session: SessionDep,
    limit: Limit = None,
    cursor: Cursor = None,
    username: Annotated[
        str | None,
        Query(
            max_length=100,
            description=(
                "Only the user with this username, in any letter case (none or one), e.g. "
                "to find the id of a user whose create answered 409."
            ),
        ),
    ] = None,
) -> UserList:
    """Every user by username (then id); with `limit`, paged by `next_cursor`."""
    users, next_cursor = await service.page_users(
        session, limit=limit, cursor=cursor, username=username
    )
    return UserList(items=[UserRead.of(user) for user in users], next_cursor=next_cursor)


@router.get("/{user_id}", summary="Read a user", response_model=UserRead)
async def get_user(user_id: PathId, _admin: AdminPrincipal, session: SessionDep) -> UserRead:
    return UserRead.of(await service.get(session, user_id=user_id))


@router.patch(
    "/{user_id}",
    summary="Update a user (disable, permissions, password)",
    responses={409: apidoc.CONFLICT},
    response_model=UserRead,
)
async def update_user(
    user_id: PathId,
    data: UserUpdate,
    admin: AdminPrincipal,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
) -> UserRead:
    data.require_change()
    user = await service.update(
        session,
        context,
        user_id=user_id,
        disabled=data.disabled,
        permissions=data.permissions,
        password=data.password,
        actor=await audit_actor(session, admin),
        ip=ip,
        actor_id=admin.id,
    )
    return UserRead.of(user)
