"""Admin API: every principal's keys, filtered, and revoking any of them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from keyservice.database import utcnow
from tests.admin.support import (
    admin_request,
    admin_token,
    create_device,
    create_device_key,
    events,
    me_within,
    set_key_fields,
    token_for,
)
from tests.factories import bearer, create_key, exchange, user_token


async def _population(client, context, admin):
    """One user with a valid, an expired and a revoked key; a disabled device with one key."""
    token = await user_token(context, client, "kim", ["api_keys:manage"])
    valid = await create_key(client, token, name="valid")
    expired = await create_key(client, token, name="expired")
    await set_key_fields(context, expired["id"], expires_at=utcnow() - timedelta(seconds=1))
    revoked = await create_key(client, token, name="revoked")
    response = await client.delete(f"/api-keys/{revoked['id']}", headers=bearer(token))
    assert response.status_code == 204
    device = await create_device(client, admin, "meter")
    suspended = await create_device_key(client, admin, device["id"], name="suspended")
    await admin_request(
        client, admin, "PATCH", f"/admin/devices/{device['id']}", 200, json={"disabled": True}
    )
    return {
        "user": valid["owner_id"],
        "device": device["id"],
        "valid": valid["id"],
        "expired": expired["id"],
        "revoked": revoked["id"],
        "suspended": suspended["id"],
    }


async def test_list_all_keys_with_filters(client, context):
    admin = await admin_token(context, client)
    ids = await _population(client, context, admin)

    async def listed(**params):
        response = await admin_request(client, admin, "GET", "/admin/api-keys", 200, params=params)
        return {item["name"]: item for item in response.json()["items"]}

    everything = await listed()
    assert set(everything) == {"valid", "expired", "revoked", "suspended"}
    for name, item in everything.items():
        assert item["status"] == name
        assert item["id"] == ids[name]
        assert "client_secret" not in item and "api_key" not in item and "secret_hash" not in item
    assert everything["suspended"]["owner_type"] == "device"
    assert everything["valid"]["owner_type"] == "user"

    for status in ("valid", "expired", "revoked", "suspended"):
        assert set(await listed(status=status)) == {status}
    assert set(await listed(owner_type="device")) == {"suspended"}
    assert set(await listed(owner_type="user")) == {"valid", "expired", "revoked"}
    assert set(await listed(owner_id=ids["user"], status="valid")) == {"valid"}
    assert await listed(owner_id="nobody") == {}
    await admin_request(client, admin, "GET", "/admin/api-keys", 422, params={"status": "bogus"})
    await admin_request(client, admin, "GET", "/admin/api-keys", 422, params={"owner_type": "x"})

    got = await admin_request(client, admin, "GET", f"/admin/api-keys/{ids['revoked']}", 200)
    assert got.json()["status"] == "revoked"
    await admin_request(client, admin, "GET", "/admin/api-keys/no-such-key", 404)


async def test_admin_revokes_any_key(client, context):
    admin = await admin_token(context, client)
    token = await user_token(context, client, "lee", ["api_keys:manage"])
    key = await create_key(client, token, name="leaked")
    issued = await token_for(client, key["api_key"])

    await admin_request(client, admin, "DELETE", f"/admin/api-keys/{key['id']}", 204)
    refused = await exchange(client, key["api_key"])
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    await me_within(client, issued["access_token"], 401)
    got = await admin_request(client, admin, "GET", f"/admin/api-keys/{key['id']}", 200)
    assert got.json()["status"] == "revoked"
    # The owner no longer sees it; revoking again changes nothing; unknown ids are 404.
    own = await client.get("/api-keys", headers=bearer(token))
    assert own.json()["items"] == []
    await admin_request(client, admin, "DELETE", f"/admin/api-keys/{key['id']}", 204)
    await admin_request(client, admin, "DELETE", "/admin/api-keys/no-such-key", 404)

    [event] = await events(context, "api_key.deleted")
    assert event.key_id == key["id"]
    assert event.actor == "user:root"


async def test_concurrent_revocations_of_one_key_record_one(client, context):
    # Two admins (or a double click, or the owner at the same moment) revoking one key:
    # one revocation, one event, and the revocation time the first one set.
    admin = await admin_token(context, client)
    token = await user_token(context, client, "twice", ["api_keys:manage"])
    key = await create_key(client, token, name="leaked")
    responses = await asyncio.gather(
        *(client.delete(f"/admin/api-keys/{key['id']}", headers=bearer(admin)) for _ in range(6)),
        *(client.delete(f"/api-keys/{key['id']}", headers=bearer(token)) for _ in range(6)),
    )
    assert {r.status_code for r in responses} <= {204, 404}, [r.text for r in responses]
    [event] = await events(context, "api_key.deleted")
    assert event.key_id == key["id"]
    got = await admin_request(client, admin, "GET", f"/admin/api-keys/{key['id']}", 200)
    assert got.json()["status"] == "revoked"
