"""Ids: random UUIDv4 for things people name, UUIDv7 for rows inserted all day."""

from __future__ import annotations

import os
import time
import uuid

from sqlalchemy import select

from keyservice.auth.models import RefreshToken
from keyservice.database import _uuid_text, new_id, new_ordered_id
from tests.admin.support import admin_request, admin_token, create_device
from tests.console.test_http import signed_in
from tests.factories import (
    PASSWORD,
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    service_key,
    user_token,
)


def test_ordered_ids_are_uuidv7_in_time_order():
    first = new_ordered_id()
    time.sleep(0.002)
    second = new_ordered_id()
    for value in (first, second):
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # canonical, lowercase, 36 characters
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        # The leading 48 bits are the creation time in milliseconds.
        assert abs((parsed.int >> 80) - time.time() * 1000) < 5_000
    assert first < second  # strings sort as the ids were made, ms apart
    assert len({new_ordered_id() for _ in range(10_000)}) == 10_000
    assert uuid.UUID(new_id()).version == 4


def test_uuid_text_is_what_uuid_prints():
    values = [0, 1, 2**128 - 1, 0x0193A1B2C3D47E5F8A9B0C1D2E3F4A5B]
    values += [int.from_bytes(os.urandom(16), "big") for _ in range(5_000)]
    for value in values:
        assert _uuid_text(value) == str(uuid.UUID(int=value))


async def test_an_exchange_inserts_its_rows_with_ordered_ids(client, context):
    token = await user_token(context, client, "ida", ["api_keys:manage"])
    created = await create_key(client, token, name="ids")
    response = await exchange(client, created["api_key"])
    assert response.status_code == 200, response.text
    async with context.database.sessionmaker() as session:
        rows = (await session.scalars(select(RefreshToken))).all()
    assert rows and all(uuid.UUID(row.id).version == 7 for row in rows)
    assert all(uuid.UUID(row.family_id).version == 7 for row in rows)
    events = await audit_events(context, "token.exchange")
    assert events and all(uuid.UUID(event.id).version == 7 for event in events)


# RFC 9562 §4: a UUID is read in any letter case. Ids are stored and answered in lowercase;
# the same id in uppercase names the same row on every route and filter that takes one.


async def test_uppercase_ids_name_the_same_rows(client, context):
    admin = await admin_token(context, client)
    user = (
        await admin_request(
            client,
            admin,
            "POST",
            "/admin/users",
            201,
            json={"username": "uma", "password": PASSWORD, "permissions": ["api_keys:manage"]},
        )
    ).json()
    upper = user["id"].upper()
    assert upper != user["id"]
    got = await admin_request(client, admin, "GET", f"/admin/users/{upper}", 200)
    assert got.json()["id"] == user["id"]
    patched = await admin_request(
        client, admin, "PATCH", f"/admin/users/{upper}", 200, json={"permissions": []}
    )
    assert (patched.json()["id"], patched.json()["permissions"]) == (user["id"], [])
    await admin_request(
        client,
        admin,
        "PATCH",
        f"/admin/users/{upper}",
        200,
        json={"permissions": ["api_keys:manage"]},
    )

    device = await create_device(client, admin, "meter")
    device_path = f"/admin/devices/{device['id'].upper()}"
    assert (await admin_request(client, admin, "GET", device_path, 200)).json()["id"] == (
        device["id"]
    )
    await admin_request(client, admin, "PATCH", device_path, 200, json={"description": "d"})
    made = await admin_request(
        client, admin, "POST", f"{device_path}/api-keys", 201, json={"name": "meter key"}
    )
    device_key = made.json()
    assert device_key["owner_id"] == device["id"]
    key_path = f"{device_path}/api-keys/{device_key['id'].upper()}"
    edited = await admin_request(client, admin, "PATCH", key_path, 200, json={"name": "renamed"})
    assert edited.json()["id"] == device_key["id"]
    rotated = await admin_request(client, admin, "POST", f"{key_path}/rotate", 201, json={})
    assert rotated.json()["owner_id"] == device["id"]
    by_owner = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"owner_id": device["id"].upper()}
    )
    assert {item["id"] for item in by_owner.json()["items"]} == {
        device_key["id"],
        rotated.json()["id"],
    }

    # Self-service keys, and the admin's view of any key.
    token = (await login(client, "uma"))["access_token"]
    own = await create_key(client, token, name="own")
    own_path = f"/api-keys/{own['id'].upper()}"
    assert (await client.get(own_path, headers=bearer(token))).json()["id"] == own["id"]
    edited = await client.patch(own_path, json={"name": "own2"}, headers=bearer(token))
    assert (edited.status_code, edited.json()["id"]) == (200, own["id"]), edited.text
    renewed = await client.post(f"{own_path}/rotate", json={}, headers=bearer(token))
    assert renewed.status_code == 201, renewed.text
    assert (await client.delete(own_path, headers=bearer(token))).status_code == 204
    renewed_path = f"/admin/api-keys/{renewed.json()['id'].upper()}"
    assert (await admin_request(client, admin, "GET", renewed_path, 200)).json()["id"] == (
        renewed.json()["id"]
    )
    await admin_request(client, admin, "DELETE", renewed_path, 204)

    # The audit log's filters, and a refusal on an uppercase path names the lowercase id.
    await admin_request(client, admin, "PATCH", device_path, 422, json={"permissions": ["no:such"]})
    refused = await audit_events(context, "device.updated", outcome="failure")
    assert [event.principal_id for event in refused] == [device["id"]]
    by_principal = await admin_request(
        client,
        admin,
        "GET",
        "/admin/audit-events",
        200,
        params={"principal_id": user["id"].upper()},
    )
    types = {item["type"] for item in by_principal.json()["items"]}
    assert {"user.created", "user.updated", "api_key.deleted"} <= types
    assert {item["principal_id"] for item in by_principal.json()["items"]} == {user["id"]}
    by_key = await admin_request(
        client, admin, "GET", "/admin/audit-events", 200, params={"key_id": own["id"].upper()}
    )
    assert {item["key_id"] for item in by_key.json()["items"]} == {own["id"]}
    assert "api_key.updated" in {item["type"] for item in by_key.json()["items"]}

    await admin_request(client, admin, "DELETE", device_path, 204)
    assert await admin_request(client, admin, "GET", device_path, 404)


async def test_an_id_that_is_no_uuid_is_refused_as_before(client, context):
    admin = await admin_token(context, client)
    for path in ("/admin/users/nobody", "/admin/devices/NOBODY", "/admin/api-keys/Kc_X"):
        await admin_request(client, admin, "GET", path, 404)
    await admin_request(client, admin, "PATCH", "/admin/users/NOBODY", 404, json={"disabled": True})
    unknown = str(uuid.uuid4()).upper()
    missing = await admin_request(client, admin, "GET", f"/admin/users/{unknown}", 404)
    assert missing.json()["error_description"] == "No user with this id."
    for name in ("owner_id", "principal_id", "key_id"):
        path = "/admin/api-keys" if name == "owner_id" else "/admin/audit-events"
        none = await admin_request(client, admin, "GET", path, 200, params={name: "NOT-AN-ID"})
        assert none.json()["items"] == []
        too_long = await admin_request(client, admin, "GET", path, 422, params={name: "x" * 37})
        assert "at most 36 characters" in too_long.text


async def test_the_console_takes_uppercase_ids(client, context):
    root = await create_principal(context, "root", permissions=["admin", "api_keys:manage"])
    device = await create_principal(context, "sensor", kind="device", permissions=[])
    device_key = await service_key(context, device, "sensor key")
    own = await service_key(context, root, "mine")
    csrf = await signed_in(client, "root")

    user_page = await client.get(f"/console/admin/users/{root.id.upper()}")
    assert user_page.status_code == 200 and "root" in user_page.text
    device_page = await client.get(f"/console/admin/devices/{device.id.upper()}")
    assert device_page.status_code == 200 and "sensor key" in device_page.text
    edit = await client.get(
        f"/console/admin/devices/{device.id.upper()}/keys/{device_key.id.upper()}/edit"
    )
    assert edit.status_code == 200 and "sensor key" in edit.text
    own_edit = await client.get(f"/console/keys/{own.id.upper()}/edit")
    assert own_edit.status_code == 200 and "mine" in own_edit.text
    listed = await client.get("/console/admin/keys", params={"owner_id": device.id.upper()})
    assert listed.status_code == 200
    assert "sensor key" in listed.text and "mine" not in listed.text
    revoked = await client.post(
        f"/console/admin/keys/{device_key.id.upper()}/revoke", data={"csrf_token": csrf}
    )
    assert revoked.status_code == 303, revoked.text
    log = await client.get("/console/admin/audit", params={"key_id": device_key.id.upper()})
    assert log.status_code == 200 and "api_key.deleted" in log.text
    assert (await client.get("/console/admin/users/NOBODY")).status_code == 404
