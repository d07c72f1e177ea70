"""Account rules pinned by mutation testing: the password length, the
sessions a disable counts and what a device's deletion revokes."""

from __future__ import annotations

from datetime import datetime

from keyservice.api_keys.models import ApiKey
from keyservice.context import AppContext
from tests.admin.support import (
    admin_request,
    admin_token,
    create_device,
    create_device_key,
    events,
)
from tests.factories import bearer, create_principal, login


async def revoked_at(ctx: AppContext, key_id: str) -> datetime | None:
    async with ctx.database.sessionmaker() as session:
        key = await session.get(ApiKey, key_id)
        assert key is not None
        return key.revoked_at


async def test_a_password_of_eight_characters_is_the_shortest_accepted(client, context):
    admin = await admin_token(context, client)
    body = {"username": "paula", "password": "seven77", "permissions": []}
    short = await admin_request(client, admin, "POST", "/admin/users", 422, json=body)
    assert "at least 8 characters" in short.json()["error_description"]
    body["password"] = "eight888"
    user = (await admin_request(client, admin, "POST", "/admin/users", 201, json=body)).json()
    path = f"/admin/users/{user['id']}"
    await admin_request(client, admin, "PATCH", path, 422, json={"password": "seven77"})
    assert (await login(client, "paula", "eight888"))["access_token"]


async def test_a_disable_counts_only_the_sessions_still_live(client, context):
    admin = await admin_token(context, client)
    await create_principal(context, "twice", permissions=["api_keys:manage"])
    first = await login(client, "twice")
    second = await login(client, "twice")
    revoked = await client.post("/revoke", data={"token": first["refresh_token"]})
    assert revoked.status_code == 200
    me = (await client.get("/me", headers=bearer(second["access_token"]))).json()
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{me['id']}", 200, json={"disabled": True}
    )
    reasons = [event.reason for event in await events(context, "user.updated", outcome="success")]
    assert reasons == ["disabled; 1 token session(s) ended"]


async def test_deleting_a_device_revokes_only_its_live_keys(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "gateway")
    live = await create_device_key(client, admin, device["id"], name="live")
    gone = await create_device_key(client, admin, device["id"], name="gone")
    await admin_request(client, admin, "DELETE", f"/admin/api-keys/{gone['id']}", 204)
    before = await revoked_at(context, gone["id"])
    assert before is not None

    await admin_request(client, admin, "DELETE", f"/admin/devices/{device['id']}", 204)

    deleted = await events(context, "api_key.deleted", outcome="success")
    assert [event.key_id for event in deleted if event.reason == "device deleted"] == [live["id"]]
    [event] = await events(context, "device.deleted", outcome="success")
    assert event.reason == "device gateway; 1 key(s) revoked"
    # The key revoked before keeps the time it was revoked at.
    assert await revoked_at(context, gone["id"]) == before
    assert await revoked_at(context, live["id"]) is not None


async def test_an_admin_cannot_lock_themself_out_even_with_another_admin(client, context):
    admin = await admin_token(context, client)
    await create_principal(context, "deputy", permissions=["admin"])
    me = (await client.get("/me", headers=bearer(admin))).json()
    for change in ({"disabled": True}, {"permissions": []}):
        answer = await admin_request(
            client, admin, "PATCH", f"/admin/users/{me['id']}", 409, json=change
        )
        assert "your own account" in answer.json()["error_description"]
    got = await admin_request(client, admin, "GET", f"/admin/users/{me['id']}", 200)
    assert got.json()["disabled"] is False
    assert got.json()["permissions"] == ["admin"]


async def test_an_edit_to_the_same_values_records_no_change(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "steady", ["api_keys:manage"])
    same = {"description": device["description"], "permissions": ["api_keys:manage"]}
    await admin_request(client, admin, "PATCH", f"/admin/devices/{device['id']}", 200, json=same)
    assert await events(context, "device.updated", outcome="success") == []
    await admin_request(
        client, admin, "PATCH", f"/admin/devices/{device['id']}", 200, json={"description": "new"}
    )
    [event] = await events(context, "device.updated", outcome="success")
    assert event.reason == "description changed"
