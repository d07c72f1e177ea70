"""Admin API: devices, their keys, and what disabling or deleting one does."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from tests.admin.support import (
    admin_request,
    admin_token,
    create_device,
    create_device_key,
    events,
    me_within,
    past_revoked_second,
    refresh,
    token_for,
)
from tests.factories import add_scope, bearer, create_key, create_principal, exchange, login


async def test_device_crud(client, context):
    admin = await admin_token(context, client)
    await add_scope(context, "metrics:write")
    created = await admin_request(
        client,
        admin,
        "POST",
        "/admin/devices",
        201,
        json={"name": "sensor-1", "description": "roof", "permissions": ["metrics:write"]},
    )
    device = created.json()
    assert device["name"] == "sensor-1"
    assert device["type"] == "device"
    assert device["description"] == "roof"
    assert device["permissions"] == ["metrics:write"]
    assert device["disabled"] is False

    await admin_request(
        client, admin, "POST", "/admin/devices", 409, json={"name": "sensor-1", "permissions": []}
    )
    await admin_request(
        client, admin, "POST", "/admin/devices", 422, json={"name": "x", "permissions": ["nope"]}
    )
    listed = (await admin_request(client, admin, "GET", "/admin/devices", 200)).json()["items"]
    assert [item["name"] for item in listed] == ["sensor-1"]
    got = await admin_request(client, admin, "GET", f"/admin/devices/{device['id']}", 200)
    assert got.json() == device

    patched = await admin_request(
        client,
        admin,
        "PATCH",
        f"/admin/devices/{device['id']}",
        200,
        json={"permissions": [], "description": "garage"},
    )
    assert patched.json()["permissions"] == []
    assert patched.json()["description"] == "garage"
    # An edit that changes nothing is refused, as a key's or a scope's is; null is not sent.
    for nothing in ({}, {"disabled": None, "permissions": None, "description": None}):
        empty = await admin_request(
            client, admin, "PATCH", f"/admin/devices/{device['id']}", 422, json=nothing
        )
        assert empty.json()["error_description"] == (
            "Nothing to change: give at least one of disabled, permissions, description."
        )

    await admin_request(client, admin, "DELETE", f"/admin/devices/{device['id']}", 204)
    await admin_request(client, admin, "GET", f"/admin/devices/{device['id']}", 404)
    await admin_request(client, admin, "DELETE", f"/admin/devices/{device['id']}", 404)
    assert (await admin_request(client, admin, "GET", "/admin/devices", 200)).json()["items"] == []
    # The name is free again once the device is deleted.
    await create_device(client, admin, "sensor-1")

    types = [(e.type, e.outcome) for e in await events(context) if e.type.startswith("device.")]
    assert types == [
        ("device.created", "success"),
        ("device.created", "failure"),  # 409, the name taken
        ("device.created", "failure"),  # 422, an unknown permission
        ("device.updated", "success"),
        ("device.updated", "failure"),  # 422, nothing to change
        ("device.updated", "failure"),  # 422, only nulls
        ("device.deleted", "success"),
        ("device.deleted", "failure"),  # the second DELETE, 404
        ("device.created", "success"),
    ]


async def test_device_keys_and_their_tokens(client, context):
    admin = await admin_token(context, client)
    await add_scope(context, "metrics:write")
    await add_scope(context, "metrics:read")
    device = await create_device(client, admin, "sensor-2", ["metrics:write", "metrics:read"])
    key = await create_device_key(
        client, admin, device["id"], name="uplink", scopes=["metrics:write"]
    )
    assert key["owner_id"] == device["id"]
    assert key["owner_type"] == "device"
    assert key["scopes"] == ["metrics:write"]
    assert key["api_key"].startswith("ksk_")
    assert key["client_secret"]

    issued = await token_for(client, key["api_key"])
    assert issued["scope"] == "metrics:write"
    me = await client.get("/me", headers=bearer(issued["access_token"]))
    assert me.status_code == 200
    assert me.json()["type"] == "device"
    assert me.json()["name"] == "sensor-2"

    # A scope the device does not hold is 422; a body naming an owner is refused.
    await create_device_key(client, admin, device["id"], 422, scopes=["admin"])
    await create_device_key(client, admin, device["id"], 422, owner_id="someone")

    inheriting = await create_device_key(client, admin, device["id"], name="all")
    assert inheriting["scopes"] is None and inheriting["inherits_permissions"] is True
    assert (await token_for(client, inheriting["api_key"]))["scope"] == "metrics:read metrics:write"


async def test_device_key_endpoint_404s(client, context):
    admin = await admin_token(context, client)
    user = await create_principal(context, "henry", permissions=["api_keys:manage"])
    # Nobody, admins included, creates a key for a user through the device endpoint.
    for owner_id in (user.id, "no-such-id"):
        await create_device_key(client, admin, owner_id, 404)
        await admin_request(
            client, admin, "POST", f"/admin/devices/{owner_id}/api-keys/x/rotate", 404
        )
    device = await create_device(client, admin, "box")
    await admin_request(
        client, admin, "POST", f"/admin/devices/{device['id']}/api-keys/no-such-key/rotate", 404
    )
    change = {"disabled": True}
    await admin_request(client, admin, "PATCH", "/admin/devices/no-such-id", 404, json=change)
    await admin_request(client, admin, "PATCH", f"/admin/devices/{user.id}", 404, json=change)
    await admin_request(client, admin, "DELETE", f"/admin/devices/{user.id}", 404)
    assert (await admin_request(client, admin, "GET", "/admin/api-keys", 200)).json() == {
        "items": [],
        "next_cursor": None,
    }


async def test_a_device_holding_admin_manages_keys_as_a_user_admin_does(client, context):
    # API.md: `admin` is everything under /admin, whoever holds it. A device holding it (a
    # provisioning job, a leak responder revoking a key a scanner found) creates, edits,
    # rotates and revokes device keys and revokes any key; it was refused with 403 while
    # the same token could create an admin user and sign in as it, so the rule kept no one out.
    admin = await admin_token(context, client)
    robot_device = await create_device(client, admin, "robot", ["admin"])
    robot_key = await create_device_key(client, admin, robot_device["id"])
    robot = (await token_for(client, robot_key["api_key"]))["access_token"]
    printer = await create_device(client, robot, "printer")
    made = await create_device_key(client, robot, printer["id"], name="ink")
    assert (await token_for(client, made["api_key"]))["access_token"]
    path = f"/admin/devices/{printer['id']}/api-keys/{made['id']}"
    await admin_request(client, robot, "PATCH", path, 200, json={"name": "toner"})
    rotated = (await admin_request(client, robot, "POST", f"{path}/rotate", 201)).json()
    await admin_request(client, robot, "DELETE", f"/admin/api-keys/{rotated['id']}", 204)
    assert (await exchange(client, rotated["api_key"])).status_code == 401
    # Each is audited under the device's key, as its exchanges are.
    actor = f"key:{robot_key['client_id']}"
    for kind in ("api_key.created", "api_key.updated", "api_key.rotated", "api_key.deleted"):
        found = await events(context, kind, outcome="success")
        # Two updates: the edit, and the rotation's end of the old key (on its own id).
        expected = [actor] * (2 if kind == "api_key.updated" else 1)
        assert [e.actor for e in found if e.principal_id == printer["id"]] == expected, kind
    # A device without `admin` is refused with the usual insufficient_scope.
    plain = await create_device(client, admin, "plain", ["api_keys:manage"])
    plain_key = await create_device_key(client, admin, plain["id"])
    token = (await token_for(client, plain_key["api_key"]))["access_token"]
    refused = await client.delete(f"/admin/api-keys/{made['id']}", headers=bearer(token))
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    # Self-service stays for users only (API.md), whatever a device holds.
    response = await client.post("/api-keys", json={"name": "mine"}, headers=bearer(robot))
    assert response.status_code == 403
    assert response.json()["error_description"].startswith("Only users manage API keys")


async def test_disabling_a_device_suspends_its_keys(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "cam")
    key = await create_device_key(client, admin, device["id"])
    issued = await token_for(client, key["api_key"])

    await admin_request(
        client, admin, "PATCH", f"/admin/devices/{device['id']}", 200, json={"disabled": True}
    )
    await me_within(client, issued["access_token"], 401)
    assert (await refresh(client, issued["refresh_token"])).status_code == 400
    assert (await exchange(client, key["api_key"])).status_code == 401
    listed = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"owner_id": device["id"]}
    )
    assert [item["status"] for item in listed.json()["items"]] == ["suspended"]

    await admin_request(
        client, admin, "PATCH", f"/admin/devices/{device['id']}", 200, json={"disabled": False}
    )
    listed = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"owner_id": device["id"]}
    )
    assert [item["status"] for item in listed.json()["items"]] == ["valid"]
    await past_revoked_second(context, device["id"])
    again = await token_for(client, key["api_key"])
    await me_within(client, again["access_token"], 200)


async def test_disabling_a_busy_device_is_one_change_however_many_sessions_it_has(client, context):
    # Every exchange starts a refresh-token family: a device exchanging once a second has
    # ~10,000 live ones. The disable ends them all by its cut-off, not one row and one
    # NOTIFY each (seconds in one transaction, and every replica's view holding them).
    admin = await admin_token(context, client)
    engine = context.database.engine.sync_engine

    async def disable(sessions: int) -> tuple[int, list[dict]]:
        device = await create_device(client, admin, f"busy-{sessions}")
        key = await create_device_key(client, admin, device["id"])
        issued = [await token_for(client, key["api_key"]) for _ in range(sessions)]
        statements: list[str] = []

        def capture(_conn, _cursor, statement, *_rest) -> None:
            # Its writes only: the app's background reads (the revocation view's poll, the
            # signing keys') run on the same engine meanwhile, more of them on a busy machine.
            words = statement.lstrip().split(None, 1)
            if (
                words
                and words[0].upper() in ("INSERT", "UPDATE", "DELETE")
                or ("notify" in statement.lower())
            ):
                statements.append(statement)

        event.listen(engine, "before_cursor_execute", capture)
        try:
            await admin_request(
                client, admin, "PATCH", f"/admin/devices/{device['id']}", 200,
                json={"disabled": True},
            )  # fmt: skip
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        [audited] = [
            e for e in await events(context, "device.updated") if e.principal_id == device["id"]
        ]
        assert audited.reason == f"disabled; {sessions} token session(s) ended"
        return len(statements), issued

    few, _ = await disable(2)
    families = len(context.revocation.revoked_families)
    many, issued = await disable(25)
    assert many == few > 0  # the principal's update and its event, whatever the sessions
    assert len(context.revocation.revoked_families) == families
    for tokens in issued:  # each session is over all the same, both halves of it
        await me_within(client, tokens["access_token"], 401)
        refused = await refresh(client, tokens["refresh_token"])
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


async def test_deleting_a_device_revokes_its_keys(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "gateway")
    keys = [await create_device_key(client, admin, device["id"], name=f"k{i}") for i in range(2)]
    issued = await token_for(client, keys[0]["api_key"])
    assert (await client.get("/me", headers=bearer(issued["access_token"]))).status_code == 200

    await admin_request(client, admin, "DELETE", f"/admin/devices/{device['id']}", 204)

    response = await me_within(client, issued["access_token"], 401)
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert (await refresh(client, issued["refresh_token"])).status_code == 400
    for key in keys:
        refused = await exchange(client, key["api_key"])
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"
    listed = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"owner_id": device["id"]}
    )
    assert sorted(item["status"] for item in listed.json()["items"]) == ["revoked", "revoked"]
    await create_device_key(client, admin, device["id"], 404)
    deleted = await events(context, "api_key.deleted", outcome="success")
    assert {event.key_id for event in deleted} == {key["id"] for key in keys}
    assert all(event.reason == "device deleted" for event in deleted)


@pytest.mark.parametrize("value", ["off", "false", "no", 1, 0])
async def test_device_disabled_must_be_a_json_boolean(client, context, value):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "meter")
    key = await create_device_key(client, admin, device["id"])
    response = await admin_request(
        client, admin, "PATCH", f"/admin/devices/{device['id']}", 422, json={"disabled": value}
    )
    assert response.json()["error_description"].startswith("disabled: Input should be a valid")
    listed = await admin_request(client, admin, "GET", "/admin/devices", 200)
    assert [item["disabled"] for item in listed.json()["items"]] == [False]
    assert (await token_for(client, key["api_key"]))["access_token"]


@pytest.mark.parametrize("grace", ["10", "0", 10.0, True])
async def test_device_key_grace_must_be_a_json_integer(client, context, grace):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "scale")
    key = await create_device_key(client, admin, device["id"])
    path = f"/admin/devices/{device['id']}/api-keys/{key['id']}/rotate"
    response = await admin_request(client, admin, "POST", path, 422, json={"grace_seconds": grace})
    assert response.json()["error_description"].startswith("grace_seconds: Input should be")
    assert (await exchange(client, key["api_key"])).status_code == 200


@pytest.mark.parametrize("grace", [None, 0])
async def test_rotate_a_device_key(client, context, grace):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "printer")
    old = await create_device_key(
        client, admin, device["id"], name="spool", allowed_ips=["127.0.0.0/8"]
    )
    body = {} if grace is None else {"grace_seconds": grace}
    rotated = await admin_request(
        client,
        admin,
        "POST",
        f"/admin/devices/{device['id']}/api-keys/{old['id']}/rotate",
        201,
        json=body,
    )
    new = rotated.json()
    assert new["id"] != old["id"] and new["client_id"] != old["client_id"]
    assert new["name"] == "spool" and new["allowed_ips"] == ["127.0.0.0/8"]
    assert rotated.headers["cache-control"] == "no-store"
    assert (await token_for(client, new["api_key"]))["access_token"]
    old_exchange = await exchange(client, old["api_key"])
    assert old_exchange.status_code == (200 if grace is None else 401)
    [event] = await events(context, "api_key.rotated", outcome="success")
    assert event.key_id == new["id"] and old["id"] in (event.reason or "")


async def test_admin_password_login_is_not_a_device_key(client, context):
    """A user key cannot be made for another user by anyone: there is no such endpoint."""
    admin = await admin_token(context, client)
    user = await create_principal(context, "ivy", permissions=["api_keys:manage"])
    response = await client.post(
        "/api-keys", json={"name": "for ivy", "owner_id": user.id}, headers=bearer(admin)
    )
    assert response.status_code == 422
    assert (await login(client, "ivy"))["access_token"]
    listed = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"owner_id": user.id}
    )
    assert listed.json()["items"] == []


async def test_edit_a_device_key(client, context):
    admin = await admin_token(context, client)
    await add_scope(context, "metrics:write")
    await add_scope(context, "metrics:read")
    device = await create_device(client, admin, "sensor-3", ["metrics:write", "metrics:read"])
    key = await create_device_key(client, admin, device["id"], name="uplink")
    both = await token_for(client, key["api_key"])
    assert both["scope"] == "metrics:read metrics:write"
    path = f"/admin/devices/{device['id']}/api-keys/{key['id']}"

    edited = await admin_request(
        client,
        admin,
        "PATCH",
        path,
        200,
        json={"name": "uplink-2", "scopes": ["metrics:write"], "allowed_ips": ["127.0.0.1"]},
    )
    body = edited.json()
    assert (
        body == (await admin_request(client, admin, "GET", f"/admin/api-keys/{key['id']}")).json()
    )
    assert (body["name"], body["scopes"], body["allowed_ips"]) == (
        "uplink-2",
        ["metrics:write"],
        ["127.0.0.1/32"],
    )
    assert "client_secret" not in body and "api_key" not in body
    # The same key string, narrower tokens; one carrying the removed scope is refused.
    assert (await token_for(client, key["api_key"]))["scope"] == "metrics:write"
    await me_within(client, both["access_token"], 401)
    assert (await refresh(client, both["refresh_token"])).json()["scope"] == "metrics:write"

    # Checked as at creation: the device's permissions, not the admin's.
    refused = await admin_request(client, admin, "PATCH", path, 422, json={"scopes": ["admin"]})
    assert "admin" in refused.json()["error_description"]
    await admin_request(client, admin, "PATCH", path, 422, json={})
    await admin_request(client, admin, "PATCH", path, 422, json={"owner_id": "other"})
    [event] = await events(context, "api_key.updated", outcome="success")
    assert (event.actor, event.principal_id, event.key_id, event.reason) == (
        "user:root",
        device["id"],
        key["id"],
        "changed: name, scopes (metrics:write), allowed_ips (127.0.0.1/32)",
    )


async def test_device_key_edit_404s_and_403s(client, context):
    admin = await admin_token(context, client)
    user = await create_principal(context, "henry", permissions=["api_keys:manage", "admin"])
    device = await create_device(client, admin, "box", ["admin"])
    other = await create_device(client, admin, "crate")
    key = await create_device_key(client, admin, device["id"], name="k")
    user_key = await create_key(client, (await login(client, "henry"))["access_token"], name="u")
    for device_id, key_id in (
        ("no-such-id", key["id"]),  # not a device
        (user.id, user_key["id"]),  # a user is not a device, even for its own key
        (other["id"], key["id"]),  # a key of another device
        (device["id"], "no-such-key"),
        (device["id"], user_key["id"]),
    ):
        await admin_request(
            client,
            admin,
            "PATCH",
            f"/admin/devices/{device_id}/api-keys/{key_id}",
            404,
            json={"name": "taken"},
        )
    await admin_request(client, admin, "DELETE", f"/admin/api-keys/{key['id']}", 204)
    path = f"/admin/devices/{device['id']}/api-keys/{key['id']}"
    await admin_request(client, admin, "PATCH", path, 404, json={"name": "back"})

    live = await create_device_key(client, admin, device["id"], name="live")
    path = f"/admin/devices/{device['id']}/api-keys/{live['id']}"
    await create_principal(context, "ursula", permissions=["api_keys:manage"])
    ursula = (await login(client, "ursula"))["access_token"]
    assert (await client.patch(path, json={"name": "x"}, headers=bearer(ursula))).status_code == 403
    assert await events(context, "api_key.updated", outcome="success") == []


async def test_a_device_is_found_by_its_name(client, context):
    # A fleet script whose POST /admin/devices lost its answer sends it again and gets 409:
    # it finds the device's id by name, not by reading every device. The filter was
    # ignored, as unknown parameters are, and answered every device instead.
    admin = await admin_token(context, client)
    for name in ("dev-1", "dev-10", "adev-1"):
        await create_device(client, admin, name)
    gone = await create_device(client, admin, "dev-2")
    await admin_request(client, admin, "DELETE", f"/admin/devices/{gone['id']}", 204)
    again = await create_device(client, admin, "dev-2")
    await admin_request(
        client, admin, "POST", "/admin/devices", 409, json={"name": "dev-1", "permissions": []}
    )

    async def named(name, **params):
        body = (
            await admin_request(
                client, admin, "GET", "/admin/devices", 200, params={"name": name, **params}
            )
        ).json()
        return [item["name"] for item in body["items"]], body["next_cursor"]

    assert await named("dev-1") == (["dev-1"], None)  # the name: not dev-10, adev-1
    assert await named("DEV-1") == (["dev-1"], None)  # in any case, as names are one
    assert await named("dev-1", limit=1) == (["dev-1"], None)
    assert await named("nothing") == ([], None)
    found = (
        await admin_request(client, admin, "GET", "/admin/devices", 200, params={"name": "dev-2"})
    ).json()["items"]
    assert [item["id"] for item in found] == [again["id"]]  # the live one, not the deleted
    too_long = await admin_request(
        client, admin, "GET", "/admin/devices", 422, params={"name": "d" * 101}
    )
    assert "name" in too_long.json()["error_description"]
