"""Self-service: the caller's own API keys. The caller must be a user with api_keys:manage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from keyservice import apidoc
from keyservice.api_keys import service
from keyservice.api_keys.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRead,
    ApiKeyRotate,
    ApiKeyUpdate,
)
from keyservice.database import utcnow
from keyservice.dependencies import (
    ContextDep,
    RequestIp,
    SessionDep,
    TokenPrincipal,
    require_scope,
)
from keyservice.exceptions import InsufficientScope, InvalidToken
from keyservice.ids import PathId
from keyservice.principals.models import Principal
from keyservice.responses import NO_STORE
from keyservice.routing import TableRoute
from keyservice.scopes.models import API_KEYS_MANAGE

router = APIRouter(prefix="/api-keys", tags=["api-keys"], route_class=TableRoute)


# One callable, so that FastAPI verifies the token once for both dependencies below.
ManagerDep = Annotated[TokenPrincipal, Depends(require_scope(API_KEYS_MANAGE))]


async def current_user(principal: ManagerDep, session: SessionDep) -> Principal:
    """The calling user; devices cannot manage keys (403)."""
    if principal.type != "user":
        raise InsufficientScope(
            API_KEYS_MANAGE,
            "Only users manage API keys of their own; a device's keys are managed by an admin.",
        )
    user = await session.get(Principal, principal.id)
    if user is None or not user.usable:
        raise InvalidToken("The account behind this token no longer exists or is disabled.")
    return user


UserDep = Annotated[Principal, Depends(current_user)]


async def audit_actor(principal: ManagerDep, user: UserDep) -> str:
    """Name the caller in audit events as the admin API does: `key:<client id>` when the
    token came from an API key (a leaked key managing keys shows as that key), else the user.
    """
    return principal.actor if principal.client_id else f"user:{user.name}"


ActorDep = Annotated[str, Depends(audit_actor)]


@router.post(
    "",
    summary="Create an API key of one's own (secret shown once)",
    responses={409: apidoc.CONFLICT},
    status_code=201,
    response_model=ApiKeyCreated,
)
async def create_key(
    data: ApiKeyCreate,
    user: UserDep,
    actor: ActorDep,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
    response: Response,
) -> ApiKeyCreated:
    response.headers.update(NO_STORE)
    return await service.create(context, session, owner=user, data=data, actor=actor, ip=ip)


@router.get("", summary="List one's own API keys", response_model=ApiKeyList)
async def list_keys(user: UserDep, session: SessionDep, context: ContextDep) -> ApiKeyList:
    return ApiKeyList(items=await service.list_for_owner(context, session, owner=user))


@router.get("/{key_id}", summary="Read one of one's own API keys", response_model=ApiKeyRead)
async def get_key(
    key_id: PathId, user: UserDep, session: SessionDep, context: ContextDep
) -> ApiKeyRead:
    key = await service.get_owned(session, key_id=key_id, owner_id=user.id)
    return service.to_read(key, user, context.settings, utcnow())


@router.patch(
    "/{key_id}",
    summary="Update one of one's own API keys",
    responses={409: apidoc.EXPIRED_KEY_EDIT},
    response_model=ApiKeyRead,
)
async def update_key(
    key_id: PathId,
    data: ApiKeyUpdate,
    user: UserDep,
    actor: ActorDep,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
) -> ApiKeyRead:
    """Change the key's settings (only the fields sent); its secret stays the same."""
    return await service.update(
        context, session, owner=user, key_id=key_id, data=data, actor=actor, ip=ip
    )


@router.delete("/{key_id}", summary="Delete (revoke) one of one's own API keys", status_code=204)
async def delete_key(
    key_id: PathId,
    user: UserDep,
    actor: ActorDep,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
) -> Response:
    key = await service.get_owned(session, key_id=key_id, owner_id=user.id)
    await service.revoke(context, session, key=key, actor=actor, ip=ip)
    return Response(status_code=204)


@router.post(
    "/{key_id}/rotate",
    summary="Rotate one of one's own API keys (new secret shown once)",
    responses={409: apidoc.CONFLICT},
    status_code=201,
    response_model=ApiKeyCreated,
)
async def rotate_key(
    key_id: PathId,
    user: UserDep,
    actor: ActorDep,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
    response: Response,
    data: ApiKeyRotate | None = None,
) -> ApiKeyCreated:
    response.headers.update(NO_STORE)
    key = await service.get_owned(session, key_id=key_id, owner_id=user.id)
    return await service.rotate(
        context,
        session,
        key=key,
        owner=user,
        grace_seconds=(data or ApiKeyRotate()).grace_seconds,
        actor=actor,
        ip=ip,
    )
