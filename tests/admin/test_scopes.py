"""Admin API: the scope catalog."""

from __future__ import annotations

import asyncio

import pytest

from keyservice.context import AppContext
from keyservice.main import create_app
from tests.admin.support import admin_request, admin_token, events
from tests.conftest import client_for, make_settings


async def test_list_and_create_scopes(client, context):
    admin = await admin_token(context, client)
    listed = (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()["items"]
    builtins = {item["name"]: item for item in listed if item["builtin"]}
    assert set(builtins) == {"admin", "api_keys:manage", "introspect"}

    created = await admin_request(
        client,
        admin,
        "POST",
        "/admin/scopes",
        201,
        json={"name": "billing:write", "description": "Change invoices"},
    )
    assert created.json()["name"] == "billing:write"
    assert created.json()["description"] == "Change invoices"
    assert created.json()["builtin"] is False

    names = [
        item["name"]
        for item in (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()[
            "items"
        ]
    ]
    assert "billing:write" in names and names == sorted(names)
    [event] = await events(context, "scope.created")
    assert event.reason == "scope billing:write"

    # The new scope can be granted right away.
    await admin_request(
        client,
        admin,
        "POST",
        "/admin/users",
        201,
        json={
            "username": "jo",
            "password": "long enough password",
            "permissions": ["billing:write"],
        },
    )


async def test_scope_refusals(client, context):
    admin = await admin_token(context, client)
    for name in ("billing:read", "admin", "introspect"):
        if name == "billing:read":
            await admin_request(client, admin, "POST", "/admin/scopes", 201, json={"name": name})
        response = await admin_request(
            client, admin, "POST", "/admin/scopes", 409, json={"name": name}
        )
        assert name in response.json()["error_description"]
    for bad in ("", "has space", "a" * 101, 'quote"d'):
        await admin_request(client, admin, "POST", "/admin/scopes", 422, json={"name": bad})


METADATA = "/.well-known/oauth-authorization-server"


@pytest.mark.parametrize("settings_overrides", [{"revocation_poll_seconds": 5}])
async def test_a_new_scope_is_in_the_metadata_at_once_here_and_within_the_ttl_elsewhere(
    client, context, database_url, tmp_path
):
    """The metadata serves a per-process copy of the catalog: stale for at most the TTL."""
    other_context = AppContext(make_settings(database_url, tmp_path, revocation_poll_seconds=0.2))
    other_app = create_app(context=other_context)
    try:
        async with other_app.router.lifespan_context(other_app), client_for(other_app) as other:
            admin = await admin_token(context, client)
            await admin_request(
                client, admin, "POST", "/admin/scopes", 201, json={"name": "billing:write"}
            )
            # The process that created it: at once, though its copy is not 5 s old yet.
            assert "billing:write" in (await client.get(METADATA)).json()["scopes_supported"]
            await asyncio.sleep(0.3)  # another process: once its copy is older than 0.2 s
            assert "billing:write" in (await other.get(METADATA)).json()["scopes_supported"]
    finally:
        await other_context.database.dispose()
