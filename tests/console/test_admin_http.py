"""The console's admin pages and key lists over plain HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.schemas import ApiKeyCreate
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from tests.console.test_http import signed_in
from tests.factories import create_principal, set_key


async def _key(context: AppContext, owner: Principal, name: str, **fields: Any) -> tuple[str, str]:
    """Create a key through the service; return its id and its key string."""
    async with context.database.sessionmaker() as session:
        created = await api_keys.create(
            context,
            session,
            owner=owner,
            data=ApiKeyCreate(name=name, **fields),
            actor="test",
            ip=None,
        )
    return created.id, created.api_key


async def _rotate(context: AppContext, owner: Principal, key_id: str, grace: int) -> str:
    async with context.database.sessionmaker() as session:
        key = await session.get(ApiKey, key_id)
        assert key is not None
        rotated = await api_keys.rotate(
            context, session, key=key, owner=owner, grace_seconds=grace, actor="test", ip=None
        )
    return rotated.id


async def test_a_key_being_replaced_is_not_offered_for_rotation(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    root = await create_principal(context, "root", permissions=["admin", "api_keys:manage"])
    sensor = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    for owner, page, base in (
        (root, "/console/keys", "/console/keys"),
        (sensor, f"/console/admin/devices/{sensor.id}", f"/console/admin/devices/{sensor.id}/keys"),
    ):
        old_id, _ = await _key(context, owner, "deploy")
        new_id = await _rotate(context, owner, old_id, 3600)
        async with context.database.sessionmaker() as session:
            old, new = await session.get(ApiKey, old_id), await session.get(ApiKey, new_id)
            assert old is not None and new is not None
        until = old.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        html = (await client.get(page)).text
        assert f'href="{base}/{old_id}/rotate"' not in html
        assert f'href="{base}/{new_id}/rotate"' not in html
        assert (
            f'Being replaced by <span class="mono">{new.client_id}</span>; works until {until}'
        ) in html
        assert (
            f'Replaces <span class="mono">{old.client_id}</span>, which works until {until}; '
            "rotate after that"
        ) in html
        # What the page no longer offers, the service refuses (409), for the same reasons.
        for key_id in (old_id, new_id):
            refused = await client.post(
                f"{base}/{key_id}/rotate", data={"csrf_token": token, "grace_seconds": "0"}
            )
            assert refused.status_code == 409, refused.text

        # Once the old key is gone, the new one may be rotated again.
        await set_key(context, old_id, revoked_at=utcnow())
        html = (await client.get(page)).text
        assert f'href="{base}/{new_id}/rotate"' in html
        assert "Being replaced" not in html and "Replaces" not in html


async def test_the_expiry_banner_is_a_status_not_an_alert(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    alice = await create_principal(context, "alice")
    await _key(context, alice, "nightly", expires_at=utcnow() + timedelta(days=3))
    await signed_in(client, "alice")
    for path in ("/console/keys", "/console/keys/new"):
        html = (await client.get(path)).text
        assert '<div class="banner warn" role="status" aria-labelledby="expiry-title">' in html
        assert 'role="alert"' not in html
