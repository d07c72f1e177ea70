"""Admin API for devices and their keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from keyservice import apidoc
from keyservice.api_keys.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    ApiKeyRotate,
    ApiKeyUpdate,
)
from keyservice.dependencies import (
    AdminPrincipal,
    ContextDep,
    RequestIp,
    SessionDep,
    audit_actor,
)
from keyservice.devices import service
from keyservice.devices.schemas import DeviceCreate, DeviceList, DeviceRead, DeviceUpdate
from keyservice.ids import PathId
from keyservice.paging import Cursor, Limit
from keyservice.responses import NO_STORE
from keyservice.routing import TableRoute

router = APIRouter(prefix="/admin/devices", tags=["admin"], route_class=TableRoute)


@router.post(
    "",
    summary="Register a device",
    responses={409: apidoc.CONFLICT},
    status_code=201,
    response_model=DeviceRead,
)
async def create_device(
    data: DeviceCreate, admin: AdminPrincipal, session: SessionDep, ip: RequestIp
) -> DeviceRead:
    device = await service.create(
        session,
        name=data.name,
        description=data.description,
        permissions=data.permissions,
        actor=await audit_actor(session, admin),
        ip=ip,
    )
    return DeviceRead.of(device)


@router.get("", summary="List devices", response_model=DeviceList)
async def list_devices(
    _admin: AdminPrincipal,
    session: SessionDep,
    limit: Limit = None,
    cursor: Cursor = None,
    name: Annotated[
        str | None,
        Query(
            max_length=100,
            description=(
                "Only the device with this name, in any letter case (none or one: live "
                "names are unique whatever their case), e.g. to find the id of a device "
                "whose create answered 409."
            ),
        ),
    ] = None,
) -> DeviceList:
    """Every device not deleted, by name (then id); with `limit`, paged by `next_cursor`."""
    devices, next_cursor = await service.page_devices(
        session, limit=limit, cursor=cursor, name=name
    )
    return DeviceList(items=[DeviceRead.of(d) for d in devices], next_cursor=next_cursor)


@router.get("/{device_id}", summary="Read a device", response_model=DeviceRead)
async def get_device(device_id: PathId, _admin: AdminPrincipal, session: SessionDep) -> DeviceRead:
    return DeviceRead.of(await service.get(session, device_id=device_id))


@router.patch(
    "/{device_id}",
    summary="Update a device (disable, permissions)",
    response_model=DeviceRead,
)
async def update_device(
    device_id: PathId,
    data: DeviceUpdate,
    admin: AdminPrincipal,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
) -> DeviceRead:
    data.require_change()
    device = await service.update(
        session,
        context,
        device_id=device_id,
        disabled=data.disabled,
        permissions=data.permissions,
        description=data.description,
        actor=await audit_actor(session, admin),
        ip=ip,
    )
    return DeviceRead.of(device)


@router.delete("/{device_id}", summary="Delete a device and revoke its keys", status_code=204)
async def delete_device(
    device_id: PathId,
    admin: AdminPrincipal,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
) -> Response:
    await service.delete(
        session, context, device_id=device_id, actor=await audit_actor(session, admin), ip=ip
    )
    return Response(status_code=204)


@router.post(
    "/{device_id}/api-keys",
    summary="Create an API key for a device (secret shown once)",
    responses={409: apidoc.CONFLICT},
    status_code=201,
    response_model=ApiKeyCreated,
)
async def create_device_key(
    device_id: PathId,
    data: ApiKeyCreate,
    admin: AdminPrincipal,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
    response: Response,
) -> ApiKeyCreated:
    response.headers.update(NO_STORE)
    return await service.create_key(
        context,
        session,
        device_id=device_id,
        data=data,
        actor=await audit_actor(session, admin),
        ip=ip,
    )


@router.patch(
    "/{device_id}/api-keys/{key_id}",
    summary="Update a device's API key",
    responses={409: apidoc.EXPIRED_KEY_EDIT},
    response_model=ApiKeyRead,
)
async def update_device_key(
    device_id: PathId,
    key_id: PathId,
    data: ApiKeyUpdate,
    admin: AdminPrincipal,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
) -> ApiKeyRead:
    """Change a device key's settings (only the fields sent); its secret stays the same."""
    return await service.update_key(
        context,
        session,
        device_id=device_id,
        key_id=key_id,
        data=data,
        actor=await audit_actor(session, admin),
        ip=ip,
    )


@router.post(
    "/{device_id}/api-keys/{key_id}/rotate",
    summary="Rotate a device's API key (new secret shown once)",
    responses={409: apidoc.CONFLICT},
    status_code=201,
    response_model=ApiKeyCreated,
)
async def rotate_device_key(
    device_id: PathId,
    key_id: PathId,
    admin: AdminPrincipal,
    session: SessionDep,
    context: ContextDep,
    ip: RequestIp,
    response: Response,
    data: ApiKeyRotate | None = None,
) -> ApiKeyCreated:
    response.headers.update(NO_STORE)
    return await service.rotate_key(
        context,
        session,
        device_id=device_id,
        key_id=key_id,
        grace_seconds=(data or ApiKeyRotate()).grace_seconds,
        actor=await audit_actor(session, admin),
        ip=ip,
    )
