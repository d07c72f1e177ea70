"""Admin API: the scope catalog."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select, text

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.schemas import ApiKeyCreate, ApiKeyUpdate
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import Conflict, ValidationFailed
from keyservice.main import create_app
from keyservice.principals import service as principals_service
from keyservice.principals.models import Principal
from keyservice.scopes import service as scopes_service
from keyservice.scopes.models import Scope
from keyservice.users import service as users_service
from tests.admin.support import (
    admin_request,
    admin_token,
    create_device,
    create_device_key,
    events,
    set_key_fields,
    until_waiting,
)
from tests.conftest import client_for, make_settings
from tests.factories import add_scope, create_principal, service_key, user_token


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
    [event] = await events(context, "scope.created", outcome="success")
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
        assert response.json()["error_description"] == f"The scope '{name}' already exists."
    for bad in ("", "has space", "a" * 101, 'quote"d'):
        await admin_request(client, admin, "POST", "/admin/scopes", 422, json={"name": bad})
    # A name differing from one in the catalog only in letter case reads alike: 409 naming it.
    for alike, existing in (("Admin", "admin"), ("BILLING:read", "billing:read")):
        response = await admin_request(
            client, admin, "POST", "/admin/scopes", 409, json={"name": alike}
        )
        assert (
            f"existing scope '{existing}' only in letter case"
            in response.json()["error_description"]
        )
    names = [
        s["name"]
        for s in (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()["items"]
    ]
    assert "Admin" not in names and "BILLING:read" not in names


async def test_a_name_a_url_would_rewrite_is_refused_in_words(client, context):
    # `a/..` or `a/./b` was created, but clients resolve dot parts out of a URL path (and
    # `a//b` or `a/` are other paths): PATCH and DELETE /admin/scopes/{name} never got there.
    admin = await admin_token(context, client)
    for bad in ("files/..", "files/.", "files/./read", "files/../admin", "files//read", "files/"):
        response = await admin_request(
            client, admin, "POST", "/admin/scopes", 422, json={"name": bad}
        )
        assert response.json()["error_description"] == (
            "name: may not end with /, nor have an empty, . or .. part between slashes: a URL "
            "would lose it, and the scope could not be edited or deleted"
        ), bad
    assert await events(context, "scope.created", outcome="success") == []
    # Dots inside a part are no path step: such a name is made, edited and deleted.
    for good in ("files/.hidden", "files/read..all", "v1.2/read"):
        await admin_request(client, admin, "POST", "/admin/scopes", 201, json={"name": good})
        edited = await admin_request(
            client, admin, "PATCH", f"/admin/scopes/{good}", 200, json={"description": "d"}
        )
        assert edited.json()["name"] == good
        await admin_request(client, admin, "DELETE", f"/admin/scopes/{good}", 204)


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


# Editing and deleting ------------------------------------------------------------------------


async def _names(client, admin) -> list[str]:
    listed = (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()["items"]
    return [item["name"] for item in listed]


async def test_patch_changes_the_description_only(client, context):
    admin = await admin_token(context, client)
    await admin_request(client, admin, "POST", "/admin/scopes", 201, json={"name": "billing:write"})
    patched = await admin_request(
        client,
        admin,
        "PATCH",
        "/admin/scopes/billing:write",
        200,
        json={"description": "Change invoices"},
    )
    assert patched.json()["name"] == "billing:write"
    assert patched.json()["description"] == "Change invoices"
    assert patched.json()["builtin"] is False
    listed = (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()["items"]
    assert {"name": "billing:write", "description": "Change invoices"}.items() <= next(
        item for item in listed if item["name"] == "billing:write"
    ).items()
    [event] = await events(context, "scope.updated", outcome="success")
    assert event.reason == "scope billing:write: description" and event.actor == "user:root"

    # The same description again changes nothing and records nothing.
    await admin_request(
        client,
        admin,
        "PATCH",
        "/admin/scopes/billing:write",
        200,
        json={"description": "Change invoices"},
    )
    assert len(await events(context, "scope.updated", outcome="success")) == 1
    # A built-in's description may be worded better too; "" clears it.
    cleared = await admin_request(
        client, admin, "PATCH", "/admin/scopes/introspect", 200, json={"description": ""}
    )
    assert cleared.json()["description"] == "" and cleared.json()["builtin"] is True


async def test_patch_refusals(client, context):
    admin = await admin_token(context, client)
    await admin_request(client, admin, "POST", "/admin/scopes", 201, json={"name": "files/read"})
    empty = await admin_request(client, admin, "PATCH", "/admin/scopes/files/read", 422, json={})
    assert "Nothing to change" in empty.json()["error_description"]
    for body in (
        {"description": None},
        {"description": "x" * 1001},
        {"name": "renamed"},
        {"description": "ok", "builtin": True},
    ):
        await admin_request(client, admin, "PATCH", "/admin/scopes/files/read", 422, json=body)
    # A name with '/' is one path parameter, as sent or percent-encoded.
    await admin_request(
        client, admin, "PATCH", "/admin/scopes/files%2Fread", 200, json={"description": "d"}
    )
    missing = await admin_request(
        client, admin, "PATCH", "/admin/scopes/nope:read", 404, json={"description": "d"}
    )
    assert missing.json()["error_description"] == "The scope 'nope:read' is not in the catalog."
    await admin_request(client, admin, "DELETE", "/admin/scopes/nope:read", 404)
    assert len(await events(context, "scope.updated", outcome="success")) == 1


async def test_editing_and_deleting_need_admin(client, context):
    await admin_token(context, client)  # the catalog's first admin
    await add_scope(context, "billing:read")
    user = await user_token(context, client, "jo", permissions=["api_keys:manage"])
    await admin_request(
        client, user, "PATCH", "/admin/scopes/billing:read", 403, json={"description": "x"}
    )
    await admin_request(client, user, "DELETE", "/admin/scopes/billing:read", 403)
    assert (await client.delete("/admin/scopes/billing:read")).status_code == 401
    assert not await events(context, "scope.deleted", outcome="success")


async def test_deleting_an_unused_scope(client, context):
    admin = await admin_token(context, client)
    await admin_request(client, admin, "POST", "/admin/scopes", 201, json={"name": "typo:raed"})
    assert "typo:raed" in (await client.get(METADATA)).json()["scopes_supported"]
    response = await admin_request(client, admin, "DELETE", "/admin/scopes/typo:raed", 204)
    assert response.content == b""
    assert "typo:raed" not in await _names(client, admin)
    # This process's copy for the metadata is renewed at once, as after a create.
    assert "typo:raed" not in (await client.get(METADATA)).json()["scopes_supported"]
    [event] = await events(context, "scope.deleted", outcome="success")
    assert event.reason == "scope typo:raed" and event.actor == "user:root"
    # Gone: a second delete is 404, and it can no longer be granted.
    await admin_request(client, admin, "DELETE", "/admin/scopes/typo:raed", 404)
    refused = await admin_request(
        client,
        admin,
        "POST",
        "/admin/devices",
        422,
        json={"name": "box", "permissions": ["typo:raed"]},
    )
    assert "typo:raed" in refused.json()["error_description"]
    # And it can be added again.
    await admin_request(client, admin, "POST", "/admin/scopes", 201, json={"name": "typo:raed"})


async def test_built_in_scopes_cannot_be_deleted(client, context):
    admin = await admin_token(context, client)
    # Created by `admin_token` with only `admin`: nothing else holds these two.
    for name in ("api_keys:manage", "introspect", "admin"):
        response = await admin_request(client, admin, "DELETE", f"/admin/scopes/{name}", 409)
        assert "built in" in response.json()["error_description"]
    assert {"admin", "api_keys:manage", "introspect"} <= set(await _names(client, admin))
    assert not await events(context, "scope.deleted", outcome="success")


async def _refusal(client, admin, name: str) -> str:
    response = await admin_request(client, admin, "DELETE", f"/admin/scopes/{name}", 409)
    assert name in await _names(client, admin)
    return str(response.json()["error_description"])


async def test_a_scope_a_user_holds_is_not_deleted_until_taken_away(client, context):
    admin = await admin_token(context, client)
    await add_scope(context, "bench:read")
    await add_scope(context, "bench:read:all")  # a longer name is not a holder of the short
    jo = await create_principal(
        context, "jo", permissions=["api_keys:manage", "bench:read"], disabled=True
    )
    await create_principal(context, "al", permissions=["bench:read:all"])
    message = await _refusal(client, admin, "bench:read")
    assert message == (
        "The scope 'bench:read' is in use: held by 1 user, 0 devices and 0 API keys that are "
        "not revoked. Take it away first (edit those users' and devices' permissions, edit "
        "those keys' scopes or delete the keys), then delete it."
    )
    assert not await events(context, "scope.deleted", outcome="success")
    await admin_request(
        client,
        admin,
        "PATCH",
        f"/admin/users/{jo.id}",
        200,
        json={"permissions": ["api_keys:manage"]},
    )
    await admin_request(client, admin, "DELETE", "/admin/scopes/bench:read", 204)
    assert "1 user," in await _refusal(client, admin, "bench:read:all")


async def test_a_scope_a_device_holds_is_not_deleted_until_taken_away(client, context):
    admin = await admin_token(context, client)
    await add_scope(context, "meter:write")
    kept = await create_device(client, admin, "meter-1", ["meter:write"])
    await create_device(client, admin, "meter-2", ["meter:write"])
    gone = await create_device(client, admin, "meter-3", ["meter:write"])
    # A deleted device holds nothing (its keys are revoked with it).
    await admin_request(client, admin, "DELETE", f"/admin/devices/{gone['id']}", 204)
    assert "held by 0 users, 2 devices and 0 API keys" in await _refusal(
        client, admin, "meter:write"
    )
    for device in (kept, await _device(client, admin, "meter-2")):
        await admin_request(
            client, admin, "PATCH", f"/admin/devices/{device['id']}", 200, json={"permissions": []}
        )
    await admin_request(client, admin, "DELETE", "/admin/scopes/meter:write", 204)


async def _device(client, admin, name: str) -> dict:
    listed = (await admin_request(client, admin, "GET", "/admin/devices", 200)).json()["items"]
    return next(item for item in listed if item["name"] == name)


async def test_a_scope_an_unrevoked_key_holds_is_not_deleted_until_the_key_is(client, context):
    admin = await admin_token(context, client)
    await add_scope(context, "meter:write")
    await add_scope(context, "meter:read")
    device = await create_device(client, admin, "meter", ["meter:write", "meter:read"])
    key = await create_device_key(client, admin, device["id"], scopes=["meter:write"])
    expired = await create_device_key(client, admin, device["id"], scopes=["meter:write"])
    await set_key_fields(context, expired["id"], expires_at=utcnow() - timedelta(days=1))
    # The owner loses it; its keys keep it until they are revoked (or edited).
    await admin_request(
        client,
        admin,
        "PATCH",
        f"/admin/devices/{device['id']}",
        200,
        json={"permissions": ["meter:read"]},
    )
    assert "held by 0 users, 0 devices and 2 API keys that are not revoked" in await _refusal(
        client, admin, "meter:write"
    )
    await admin_request(client, admin, "DELETE", f"/admin/api-keys/{key['id']}", 204)
    assert "and 1 API key that is not revoked" in await _refusal(client, admin, "meter:write")
    await admin_request(client, admin, "DELETE", f"/admin/api-keys/{expired['id']}", 204)
    await admin_request(client, admin, "DELETE", "/admin/scopes/meter:write", 204)
    # A key that inherits its owner's permissions holds no scope of its own.
    await create_device_key(client, admin, device["id"])
    assert "0 API keys" in await _refusal(client, admin, "meter:read")


async def test_granting_a_deleted_scope_is_refused(client, context):
    """What the hold in each writing transaction refuses: a name the catalog lost after it
    was checked (here: deleted under the writer's feet, between check and write)."""
    admin = await admin_token(context, client)
    await add_scope(context, "billing:read")
    jo = await create_principal(context, "jo", permissions=["billing:read"])
    inheriting = await service_key(context, jo, "inherits")
    async with context.database.sessionmaker() as session:
        await session.execute(delete(Scope).where(Scope.name == "billing:read"))
        await session.commit()
    # A key edit that gives the key the scope of its own.
    async with context.database.sessionmaker() as session:
        owner = await session.get(Principal, jo.id)
        with pytest.raises(ValidationFailed, match="Unknown scope\\(s\\): billing:read"):
            await api_keys.update(
                context,
                session,
                owner=owner,
                key_id=inheriting.id,
                data=ApiKeyUpdate(scopes=["billing:read"]),
                actor="test",
                ip=None,
            )
    # The key create checks the owner's permissions (still listing it), then the catalog.
    async with context.database.sessionmaker() as session:
        owner = await session.get(Principal, jo.id)
        with pytest.raises(ValidationFailed, match="Unknown scope\\(s\\): billing:read"):
            await api_keys.create(
                context,
                session,
                owner=owner,
                data=ApiKeyCreate(name="k", scopes=["billing:read"]),
                actor="test",
                ip=None,
            )
    async with context.database.sessionmaker() as session:
        principal = Principal(kind="device", name="box", permissions=["billing:read"])
        with pytest.raises(ValidationFailed, match="Unknown permission\\(s\\): billing:read"):
            await principals_service.insert(
                session, principal, event="device.created", taken="taken", actor="t", ip=None
            )
    assert await _names(client, admin) == ["admin", "api_keys:manage", "introspect"]


# A deletion and a grant of the same scope at once (PostgreSQL: SQLite runs one writer) ----


@pytest.mark.postgresql_only
async def test_a_deletion_waits_for_a_grant_in_progress_and_counts_it(client, context):
    await admin_token(context, client)  # another admin, so `boss` may stop being one
    await add_scope(context, "billing:read")
    boss = await create_principal(context, "boss", permissions=["admin"])
    async with context.database.sessionmaker() as blocker, context.database.sessionmaker() as s:
        # The grant below drops boss's `admin`, so after holding its new permissions it
        # queues on the admin-change lock (principals/service.py), held here: it is paused
        # in the middle of its transaction, with `billing:read` held.
        await blocker.execute(
            text("SELECT pg_advisory_xact_lock(:key)"),
            {"key": principals_service._ADMIN_CHANGE_LOCK},
        )
        grant = asyncio.create_task(
            users_service.update(
                s, context, user_id=boss.id, permissions=["billing:read"], actor="t", ip=None
            )
        )
        await until_waiting(context, 1)
        async with context.database.sessionmaker() as deleting:
            deletion = asyncio.create_task(
                scopes_service.delete(
                    deleting, name="billing:read", actor="t", ip=None, names=context.scope_names
                )
            )
            await until_waiting(context, 2)  # the deletion waits for the grant's hold
            await blocker.commit()
            await grant
            with pytest.raises(Conflict, match="held by 1 user, 0 devices"):
                await deletion
    async with context.database.sessionmaker() as session:
        assert (await session.get(Principal, boss.id)).permissions == ["billing:read"]
        assert await session.get(Scope, "billing:read") is not None


@pytest.mark.postgresql_only
async def test_a_grant_waits_for_a_deletion_in_progress_and_is_refused(client, context):
    admin = await admin_token(context, client)
    await add_scope(context, "billing:read")
    device = await create_device(client, admin, "box", [])
    jo = await create_principal(context, "jo", permissions=["billing:read", "api_keys:manage"])
    async with context.database.sessionmaker() as keying:
        # A key create that read its owner while jo still held the scope (so its check
        # passes) and an admin who then took it away: the deletion finds no holder.
        owner = await keying.get(Principal, jo.id)
        await keying.commit()
        await admin_request(
            client, admin, "PATCH", f"/admin/users/{jo.id}", 200, json={"permissions": []}
        )
        async with context.database.sessionmaker() as deleting:
            # What `delete` does first: lock the scope's row, then count its holders.
            await scopes_service.get(deleting, name="billing:read", for_update=True)
            assert await scopes_service.usage(deleting, name="billing:read") == (0, 0, 0)
            permission = asyncio.create_task(
                admin_request(
                    client,
                    admin,
                    "PATCH",
                    f"/admin/devices/{device['id']}",
                    json={"permissions": ["billing:read"]},
                )
            )
            key = asyncio.create_task(
                api_keys.create(
                    context,
                    keying,
                    owner=owner,
                    data=ApiKeyCreate(name="k", scopes=["billing:read"]),
                    actor="t",
                    ip=None,
                )
            )
            await until_waiting(context, 2)  # both wait for the deletion's lock
            await deleting.execute(delete(Scope).where(Scope.name == "billing:read"))
            await deleting.commit()
            refused = await permission
            with pytest.raises(ValidationFailed, match=r"Unknown scope\(s\): billing:read"):
                await key
    assert refused.status_code == 422, refused.text
    assert "Unknown permission(s): billing:read" in refused.json()["error_description"]
    assert (await _device(client, admin, "box"))["permissions"] == []
    async with context.database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ApiKey)) == 0


@pytest.mark.postgresql_only
async def test_a_description_edit_does_not_wait_for_a_grant_holding_the_scope(client, context):
    # `hold` takes FOR KEY SHARE so that a grant in progress does not block an edit of the
    # description; the edit locked the row FOR UPDATE, which waits for every key-share lock.
    await add_scope(context, "billing:read")
    async with context.database.sessionmaker() as granting:
        assert await scopes_service.hold(granting, names=["billing:read"]) == []
        async with context.database.sessionmaker() as editing:
            await editing.execute(text("SET LOCAL lock_timeout = '5s'"))  # a wait fails, not hangs
            scope = await scopes_service.update(
                editing, name="billing:read", description="Read invoices", actor="t", ip=None
            )
            assert scope.description == "Read invoices"
        await granting.commit()


async def test_a_missing_scope_is_named_in_the_404_only_when_it_may_be_echoed(client, context):
    # A key string pasted where the scope's name goes is not sent back, nor is a name no
    # scope could have; a name that could be one is.
    admin = await admin_token(context, client)
    pasted = "ksk_" + "A1b2C3d4E5f6G7h8J9k0L1m2"
    for name in (pasted, "Sign in again at evil.example", "x" * 65 + ":read"):
        for method, body in (("PATCH", {"description": "d"}), ("DELETE", None)):
            missing = await admin_request(
                client, admin, method, f"/admin/scopes/{name}", 404, json=body
            )
            said = missing.json()["error_description"]
            assert said == "No scope with this name is in the catalog.", (name, said)
    named = await admin_request(client, admin, "DELETE", "/admin/scopes/typo:raed", 404)
    assert named.json()["error_description"] == "The scope 'typo:raed' is not in the catalog."
