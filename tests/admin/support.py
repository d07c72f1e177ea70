"""Helpers for the admin, lifecycle and CLI tests (built on tests.factories)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from sqlalchemy import select, text, update

from keyservice.api_keys.models import ApiKey
from keyservice.audit.models import AuditEvent
from keyservice.context import AppContext
from keyservice.principals.models import Principal, revoked_through
from tests.factories import bearer, create_principal, login


async def admin_token(ctx: AppContext, client: httpx.AsyncClient, name: str = "root") -> str:
    """Create an admin user and return an access token from a password login."""
    await create_principal(ctx, name, permissions=["admin"])
    return str((await login(client, name))["access_token"])


async def admin_request(
    client: httpx.AsyncClient,
    token: str,
    method: str,
    path: str,
    expect: int | None = None,
    **kwargs: Any,
) -> httpx.Response:
    response = await client.request(method, path, headers=bearer(token), **kwargs)
    if expect is not None:
        assert response.status_code == expect, response.text
    return response


async def create_device(
    client: httpx.AsyncClient, admin: str, name: str, permissions: list[str] | None = None
) -> dict[str, Any]:
    body = {"name": name, "permissions": permissions or []}
    response = await admin_request(client, admin, "POST", "/admin/devices", 201, json=body)
    created: dict[str, Any] = response.json()
    return created


async def create_device_key(
    client: httpx.AsyncClient, admin: str, device_id: str, expect: int = 201, **body: Any
) -> dict[str, Any]:
    body.setdefault("name", "device key")
    response = await admin_request(
        client, admin, "POST", f"/admin/devices/{device_id}/api-keys", expect, json=body
    )
    created: dict[str, Any] = response.json()
    return created


async def token_for(client: httpx.AsyncClient, api_key: str) -> dict[str, Any]:
    response = await client.post(
        "/token", data={"grant_type": "client_credentials", "api_key": api_key}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


async def set_key_fields(ctx: AppContext, key_id: str, **values: Any) -> None:
    """Change a key row directly (e.g. move its expiry into the past)."""
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(**values))
        await session.commit()


async def events(
    ctx: AppContext, type: str | None = None, *, outcome: str | None = None
) -> list[AuditEvent]:
    """Audit rows straight from the database, oldest first; of one outcome if given."""
    async with ctx.database.sessionmaker() as session:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        if type is not None:
            query = query.where(AuditEvent.type == type)
        if outcome is not None:
            query = query.where(AuditEvent.outcome == outcome)
        return list((await session.scalars(query)).all())


async def me_within(
    client: httpx.AsyncClient, token: str, status: int, seconds: float = 5.0
) -> httpx.Response:
    """Poll GET /me until it answers `status`, for at most `seconds` (API.md: "within 5 s")."""
    return await status_within(client, "/me", token, status, seconds)


async def status_within(
    client: httpx.AsyncClient, path: str, token: str, status: int, seconds: float = 5.0
) -> httpx.Response:
    """Poll GET `path` until it answers `status`, for at most `seconds`.

    The change is applied to this process's revocation view at once, but a periodic reload
    whose query ran just before the commit can overwrite it with its older snapshot until
    the next reload; the contract is the 5 seconds, so that is what is asserted.
    """
    deadline = time.monotonic() + seconds
    while True:
        response = await client.get(path, headers=bearer(token))
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        await asyncio.sleep(0.05)


async def past_revoked_second(ctx: AppContext, principal_id: str) -> None:
    """Wait until the clock has left the last second whose tokens disabling the principal
    revoked: one issued in it is refused too (`iat` is whole seconds; principals/models.py).
    """
    async with ctx.database.sessionmaker() as session:
        revoked_at = await session.scalar(
            select(Principal.tokens_revoked_at).where(Principal.id == principal_id)
        )
    assert revoked_at is not None
    while time.time() < revoked_through(revoked_at) + 1:
        await asyncio.sleep(0.05)


async def until_waiting(context: AppContext, count: int) -> None:
    """Return once `count` sessions of this database wait for a lock (fail after ~10 s):
    PostgreSQL only, for tests that line up concurrent transactions."""
    for _ in range(500):
        async with context.database.engine.connect() as connection:  # a fresh stats snapshot
            waiting = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} session(s) waiting for a lock")
