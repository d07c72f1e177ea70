"""Devices: machines and connectors registered by admins, with keys that admins manage."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.api_keys import service as keys_service
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead, ApiKeyUpdate
from keyservice.audit import service as audit
from keyservice.auth.revocation import publish
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import Conflict
from keyservice.principals import service as principals_service
from keyservice.principals.models import Principal, named
from keyservice.users.service import check_permissions


async def get_by_name(session: AsyncSession, *, name: str) -> Principal | None:
    return await session.scalar(
        select(Principal).where(
            Principal.kind == "device", named(name), Principal.deleted_at.is_(None)
        )
    )


async def get(session: AsyncSession, *, device_id: str, for_update: bool = False) -> Principal:
    """Return the live device with this id; 404 for an unknown, deleted or user id."""
    return await principals_service.get_live(
        session, kind="device", principal_id=device_id, for_update=for_update
    )


async def list_devices(session: AsyncSession) -> list[Principal]:
    """Every one of them, in list order (the console, the CLI)."""
    return (await page_devices(session))[0]


async def page_devices(
    session: AsyncSession,
    *,
    limit: int | None = None,
    cursor: str | None = None,
    name: str | None = None,
) -> tuple[list[Principal], str | None]:
    """Return the devices that are not deleted, by name (then id); with `limit`, one page
    and the next cursor; with `name`, only the live device of that name, if any."""
    return await principals_service.page_live(
        session, kind="device", limit=limit, cursor=cursor, name=name
    )


def _taken(name: str, holder: str | None = None) -> str:
    return principals_service.taken(f"A device named '{name}' already exists", name, holder)


async def create(
    session: AsyncSession,
    *,
    name: str,
    description: str = "",
    permissions: Sequence[str],
    actor: str | None,
    ip: str | None,
) -> Principal:
    """Register a device (409 if a live device has the name) and commit."""
    perms = await check_permissions(session, permissions)
    holder = await get_by_name(session, name=name)
    if holder is not None:
        raise Conflict(_taken(name, holder.name))
    device = Principal(kind="device", name=name, description=description, permissions=perms)
    return await principals_service.insert(
        session,
        device,
        event="device.created",
        taken=_taken(name),
        actor=actor,
        ip=ip,
    )


async def update(
    session: AsyncSession,
    ctx: AppContext,
    *,
    device_id: str,
    disabled: bool | None = None,
    permissions: Sequence[str] | None = None,
    description: str | None = None,
    actor: str | None,
    ip: str | None,
) -> Principal:
    """Change a device's state, permissions or description, audit it and commit.

    Disabling suspends its keys without revoking them; re-enabling restores them.
    """
    perms = await check_permissions(session, permissions) if permissions is not None else None
    device = await get(session, device_id=device_id, for_update=True)
    changes: list[str] = []
    if description is not None and description != device.description:
        device.description = description
        changes.append("description changed")
    return await principals_service.save_update(
        session, ctx, device, changes=changes, disabled=disabled, permissions=perms,
        event="device.updated", actor=actor, ip=ip,
    )  # fmt: skip


async def delete(
    session: AsyncSession, ctx: AppContext, *, device_id: str, actor: str | None, ip: str | None
) -> None:
    """Delete a device softly and revoke all its keys; its tokens die within seconds."""
    device = await get(session, device_id=device_id, for_update=True)
    now = utcnow()
    device.deleted_at = now
    # "principal-disabled" first: a replica of an older version, which knows no
    # "principal-deleted", refuses the device's tokens all the same.
    messages = [f"principal-disabled:{device.id}", f"principal-deleted:{device.id}"]
    keys = (
        await session.scalars(
            select(ApiKey).where(ApiKey.principal_id == device.id, ApiKey.revoked_at.is_(None))
        )
    ).all()
    for key in keys:
        key.revoked_at = now
        messages.append(f"client:{key.client_id}")
        audit.record(
            session,
            type="api_key.deleted",
            actor=actor,
            principal_id=device.id,
            key_id=key.id,
            ip=ip,
            reason="device deleted",
        )
    audit.record(
        session,
        type="device.deleted",
        actor=actor,
        principal_id=device.id,
        ip=ip,
        reason=f"device {device.name}; {len(keys)} key(s) revoked",
    )
    for message in messages:
        await publish(session, ctx.revocation, message)
    await session.commit()


async def create_key(
    ctx: AppContext,
    session: AsyncSession,
    *,
    device_id: str,
    data: ApiKeyCreate,
    actor: str,
    ip: str | None,
) -> ApiKeyCreated:
    """Create a key for a device (404 if the id is not a live device's)."""
    device = await get(session, device_id=device_id, for_update=True)
    return await keys_service.create(ctx, session, owner=device, data=data, actor=actor, ip=ip)


async def rotate_key(
    ctx: AppContext,
    session: AsyncSession,
    *,
    device_id: str,
    key_id: str,
    grace_seconds: int,
    actor: str,
    ip: str | None,
) -> ApiKeyCreated:
    """Rotate one of a device's keys; the old one expires after the grace period."""
    device = await get(session, device_id=device_id, for_update=True)
    key = await keys_service.get_owned(session, key_id=key_id, owner_id=device.id)
    return await keys_service.rotate(
        ctx,
        session,
        key=key,
        owner=device,
        grace_seconds=grace_seconds,
        actor=actor,
        ip=ip,
    )


async def update_key(
    ctx: AppContext,
    session: AsyncSession,
    *,
    device_id: str,
    key_id: str,
    data: ApiKeyUpdate,
    actor: str,
    ip: str | None,
) -> ApiKeyRead:
    """Edit one of a device's keys (api_keys.service.update); 404 unless both ids match."""
    device = await get(session, device_id=device_id, for_update=True)
    return await keys_service.update(
        ctx, session, owner=device, key_id=key_id, data=data, actor=actor, ip=ip
    )
