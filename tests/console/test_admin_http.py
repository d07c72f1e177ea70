"""The console's admin pages and key lists over plain HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from html import unescape
from typing import Any

import httpx

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.schemas import ApiKeyCreate
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from tests.conftest import client_for
from tests.console.test_http import field_error, signed_in
from tests.factories import audit_events, create_principal, set_key


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


# Scope catalog ---------------------------------------------------------------------------


async def test_admin_adds_a_scope_and_refusals_keep_the_input(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")
    page = await client.get("/console/admin/scopes")
    assert page.status_code == 200
    assert '<span class="mono">api_keys:manage</span> <span class="tag">built-in</span>' in (
        page.text
    )
    assert "Create, list, rotate and delete one&#39;s own API keys." in page.text
    assert 'href="/console/admin/scopes" aria-current="page"' in page.text

    added = await client.post(
        "/console/admin/scopes",
        data={"csrf_token": token, "name": "projects:read", "description": "Read projects"},
    )
    assert added.status_code == 303, added.text
    shown = await client.get(added.headers["location"])
    assert "Scope projects:read added to the catalog." in shown.text
    assert '<span class="mono">projects:read</span>' in shown.text and "Read projects" in shown.text
    # As POST /admin/scopes: in the catalog, in this process's metadata at once, audited.
    listed = await client.get("/.well-known/oauth-authorization-server")
    assert "projects:read" in listed.json()["scopes_supported"]
    events = await audit_events(context, "scope.created")
    assert [(e.actor, e.reason) for e in events] == [("user:root", "scope projects:read")]

    # The API's words, next to the field, with what was typed kept.
    cases = [
        ("projects:read", "The scope 'projects:read' already exists."),
        ("projects read", "May hold only letters, digits and _ . : / -, and must start"),
        ("-projects", "May hold only letters, digits and _ . : / -, and must start"),
        ("", "This field is required."),
        ("p" * 101, "Use at most 100 characters."),
    ]
    for name, message in cases:
        refused = await client.post(
            "/console/admin/scopes",
            data={"csrf_token": token, "name": name, "description": "kept <b>"},
        )
        assert refused.status_code == 422, name
        error = field_error(refused.text, "name")
        assert error is not None and error.startswith(message), (name, error)
        assert f'value="{name}"' in unescape(refused.text)
        assert ">kept &lt;b&gt;</textarea>" in refused.text
        assert "^[" not in refused.text and "String should" not in refused.text
    too_long = await client.post(
        "/console/admin/scopes",
        data={"csrf_token": token, "name": "projects:write", "description": "d" * 1001},
    )
    assert field_error(too_long.text, "description") == "Use at most 1000 characters."
    assert len(await audit_events(context, "scope.created")) == 1

    # A crafted link cannot put a stranger's words into the banner: only a catalog name.
    crafted = await client.get(
        "/console/admin/scopes",
        params={"done": "scope-created", "name": "https://evil.example/login"},
    )
    assert "The scope was added." in crafted.text and "evil.example" not in crafted.text


async def test_a_scope_form_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    await signed_in(client, "root")
    for sent in ({}, {"csrf_token": "forged"}):
        refused = await client.post("/console/admin/scopes", data={**sent, "name": "x:y"})
        assert refused.status_code == 403 and "Form refused" in refused.text
    assert await audit_events(context, "scope.created") == []
    assert "x:y" not in (await client.get("/console/admin/scopes")).text


async def test_non_admins_get_neither_the_scopes_page_nor_its_link(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    assert "/console/admin/" not in (await client.get("/console/keys")).text
    refused = await client.get("/console/admin/scopes")
    assert refused.status_code == 403 and "This page is for administrators." in refused.text
    posted = await client.post(
        "/console/admin/scopes", data={"name": "mine:all", "csrf_token": token}
    )
    assert posted.status_code == 403 and "This page is for administrators." in posted.text
    assert await audit_events(context, "scope.created") == []

    await create_principal(context, "root", permissions=["admin"])
    async with client_for(app) as admin:
        await signed_in(admin, "root")
        assert 'href="/console/admin/scopes"' in (await admin.get("/console/keys")).text


# Rotation in progress, the expiry banner -------------------------------------------------


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
