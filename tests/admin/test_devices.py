"""Admin API: devices, their keys, and what disabling or deleting one does."""

from __future__ import annotations

import pytest

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
from tests.factories import add_scope, bearer, create_principal, exchange, login


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

    await admin_request(client, admin, "DELETE", f"/admin/devices/{device['id']}", 204)
    await admin_request(client, admin, "GET", f"/admin/devices/{device['id']}", 404)
    await admin_request(client, admin, "DELETE", f"/admin/devices/{device['id']}", 404)
    assert (await admin_request(client, admin, "GET", "/admin/devices", 200)).json()["items"] == []
    # The name is free again once the device is deleted.
    await create_device(client, admin, "sensor-1")

    types = [event.type for event in await events(context) if event.type.startswith("device.")]
    assert types == ["device.created", "device.updated", "device.deleted", "device.created"]


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
    await admin_request(client, admin, "PATCH", "/admin/devices/no-such-id", 404, json={})
    await admin_request(client, admin, "PATCH", f"/admin/devices/{user.id}", 404, json={})
    await admin_request(client, admin, "DELETE", f"/admin/devices/{user.id}", 404)
    assert (await admin_request(client, admin, "GET", "/admin/api-keys", 200)).json() == {
        "items": [],
        "next_cursor": None,
    }


async def test_devices_cannot_manage_keys(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "robot", ["admin"])
    key = await create_device_key(client, admin, device["id"])
    robot = (await token_for(client, key["api_key"]))["access_token"]
    # Even holding `admin`, a device may not create, rotate or revoke keys.
    # The refusal says why: the token does carry the permission it needs.
    refusals = [
        await client.post(
            f"/admin/devices/{device['id']}/api-keys", json={"name": "more"}, headers=bearer(robot)
        ),
        await client.post(
            f"/admin/devices/{device['id']}/api-keys/{key['id']}/rotate", headers=bearer(robot)
        ),
        await client.delete(f"/admin/api-keys/{key['id']}", headers=bearer(robot)),
    ]
    for response in refusals:
        assert response.status_code == 403
        assert response.json()["error_description"].startswith("Only a user admin can create")
    response = await client.post("/api-keys", json={"name": "mine"}, headers=bearer(robot))
    assert response.status_code == 403
    assert response.json()["error_description"].startswith("Only users manage API keys")
    # The key is untouched.
    assert (await token_for(client, key["api_key"]))["access_token"]
    # What it may do (other admin actions) is audited under its key, as its exchanges are.
    other = await create_device(client, robot, "printer")
    [event] = [e for e in await events(context, "device.created") if e.principal_id == other["id"]]
    assert event.actor == f"key:{key['client_id']}"


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
    deleted = await events(context, "api_key.deleted")
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
    [event] = await events(context, "api_key.rotated")
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
