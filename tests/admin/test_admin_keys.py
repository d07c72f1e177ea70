"""Admin API: every principal's keys, filtered, and revoking any of them."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from sqlalchemy import text

from keyservice.api_keys import service as keys_service
from keyservice.database import utcnow
from keyservice.security.tokens import parse_api_key
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
from tests.auth.test_revocation_plans import Captured, _plans, _seed
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


async def test_expires_soon_warns_of_valid_and_suspended_keys_only(client, context):
    admin = await admin_token(context, client)
    ids = await _population(client, context, admin)
    # Within the warning window, each of them; the expired one ended a second ago.
    for name in ("valid", "suspended", "revoked"):
        await set_key_fields(context, ids[name], expires_at=utcnow() + timedelta(days=2))
    response = await admin_request(client, admin, "GET", "/admin/api-keys", 200)
    shown = {item["name"]: item["expires_soon"] for item in response.json()["items"]}
    # A suspended key comes back when its owner is enabled again: its expiry still matters.
    assert shown == {"valid": True, "suspended": True, "expired": False, "revoked": False}
    one = await admin_request(client, admin, "GET", f"/admin/api-keys/{ids['suspended']}", 200)
    assert one.json()["expires_soon"] is True


async def test_a_revoked_key_past_its_expiry_is_listed_as_revoked_only(client, context):
    admin = await admin_token(context, client)
    ids = await _population(client, context, admin)
    await set_key_fields(context, ids["revoked"], expires_at=utcnow() - timedelta(days=1))

    async def listed(status):
        response = await admin_request(
            client, admin, "GET", "/admin/api-keys", 200, params={"status": status}
        )
        return {item["name"]: item["status"] for item in response.json()["items"]}

    # The filters derive the status in the order API.md gives: revoked before expired.
    assert await listed("expired") == {"expired": "expired"}
    assert await listed("revoked") == {"revoked": "revoked"}


async def test_find_a_leaked_key_by_its_client_id(client, context, caplog):
    admin = await admin_token(context, client)
    ids = await _population(client, context, admin)
    token = await user_token(context, client, "pat", ["api_keys:manage"])
    leaked = await create_key(client, token, name="leaked")
    other = await create_key(client, token, name="other")
    # All the admin has is the key string that leaked: its client id is in it, public.
    client_id, _secret = parse_api_key(leaked["api_key"])
    assert client_id == leaked["client_id"]

    async def listed(**params):
        response = await admin_request(client, admin, "GET", "/admin/api-keys", 200, params=params)
        return [item["name"] for item in response.json()["items"]]

    assert await listed(client_id=client_id) == ["leaked"]
    assert await listed(client_id=other["client_id"]) == ["other"]
    # With the other filters and with paging, as any filter.
    assert await listed(client_id=client_id, status="valid", owner_type="user") == ["leaked"]
    assert await listed(client_id=client_id, owner_id=leaked["owner_id"]) == ["leaked"]
    assert await listed(client_id=client_id, status="revoked") == []
    assert await listed(client_id=client_id, owner_type="device") == []
    assert await listed(client_id=client_id, owner_id=ids["user"]) == []
    paged = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"client_id": client_id, "limit": 1}
    )
    assert [i["name"] for i in paged.json()["items"]] == ["leaked"]
    assert paged.json()["next_cursor"] is None
    first = await admin_request(client, admin, "GET", "/admin/api-keys", 200, params={"limit": 1})
    assert first.json()["items"][0]["name"] == "other"  # newest: "leaked" is on a later page
    after = {"client_id": client_id, "limit": 1, "cursor": first.json()["next_cursor"]}
    assert await listed(**after) == ["leaked"]
    # An unknown client id is no error: nothing matches. A revoked key is still found.
    assert await listed(client_id="kc_" + "0" * 16) == []
    revoked = await admin_request(client, admin, "GET", f"/admin/api-keys/{ids['revoked']}", 200)
    assert await listed(client_id=revoked.json()["client_id"]) == ["revoked"]

    malformed = "A client ID is kc_ followed by 16 letters and digits, as the key lists show it."
    for bad in ("", "kc_short", "kc_" + "0" * 17, "kc_" + "-" * 16, "KC_" + "0" * 16, ids["valid"]):
        refused = await admin_request(
            client, admin, "GET", "/admin/api-keys", 422, params={"client_id": bad}
        )
        assert refused.json()["error"] == "validation_error"
        assert refused.json()["error_description"] == malformed, bad
        assert refused.json()["details"] == [{"loc": ["query", "client_id"], "msg": malformed}]

    # The whole key string pasted instead is refused as that, never quoted nor logged.
    caplog.set_level(logging.DEBUG)
    secret = leaked["client_secret"]
    for pasted in (leaked["api_key"], f" {leaked['api_key']}", leaked["api_key"][:30]):
        refused = await admin_request(
            client, admin, "GET", "/admin/api-keys", 422, params={"client_id": pasted}
        )
        said = refused.json()["error_description"]
        assert said.startswith("That is an API key string (it starts with ksk_)"), said
        assert "give only its client ID" in said and "Treat the pasted key as leaked" in said
        assert secret[:16] not in refused.text and pasted.strip() not in refused.text
    access = [r.getMessage() for r in caplog.records if r.name == "keyservice.access"]
    assert access and all(line.startswith("GET /admin/api-keys ") for line in access), access
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("keyservice")]
    assert not [line for line in ours if secret[:9] in line or client_id[3:] in line], ours
    # Nothing was revoked or changed by looking.
    assert await listed(client_id=client_id, status="valid") == ["leaked"]


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

    [event] = await events(context, "api_key.deleted", outcome="success")
    assert event.key_id == key["id"] and event.principal_id == key["owner_id"]
    assert event.actor == "user:root" and event.ip == "127.0.0.1"


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
    [event] = await events(context, "api_key.deleted", outcome="success")
    assert event.key_id == key["id"]
    got = await admin_request(client, admin, "GET", f"/admin/api-keys/{key['id']}", 200)
    assert got.json()["status"] == "revoked"


@pytest.mark.postgresql_only
async def test_finding_a_key_by_client_id_reads_its_unique_index(context):
    await _seed(context)  # 20,000 keys, ANALYZEd
    async with context.database.engine.begin() as connection:
        await connection.execute(
            text("UPDATE api_key SET client_id = :cid WHERE id = md5('k77')::uuid::text"),
            {"cid": "kc_" + "7" * 16},
        )
    async with context.database.sessionmaker() as session:
        with Captured(context) as captured:
            found, cursor = await keys_service.list_all(
                context, session, client_id="kc_" + "7" * 16, limit=50
            )
    assert [key.name for key in found] == ["key 77"] and cursor is None
    [(statement, scans)] = await _plans(context, captured)
    assert ("Index Scan", "api_key", "uq_api_key_client_id") in scans, (statement, scans)
    assert ("Seq Scan", "api_key", None) not in scans, (statement, scans)
