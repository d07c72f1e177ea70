"""Self-service keys: validation, listing without secrets, ownership, deletion."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyservice.database import utcnow
from tests.factories import (
    add_scope,
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    user_token,
)

PERMS = ["api_keys:manage", "projects:read"]
SOON = utcnow() + timedelta(days=30)
SOON_UNIX = int(SOON.timestamp())
# Words, not one long run of a letter: that is refused as secret-like before its length.
NAME_100 = ("billing exporter " * 6)[:100]


async def test_created_key_shows_its_secret_once(client, context):
    token = await user_token(context, client, "alice", PERMS)
    created = await create_key(
        client,
        token,
        name="deploy",
        description="CI deploys",
        scopes=["projects:read"],
        # A repeat, written either way, is stored once: it allows nothing more.
        allowed_ips=["192.0.2.0/24", "2001:db8::/48", "192.0.2.0/24", "2001:DB8:0::/48"],
    )
    assert created["api_key"].startswith("ksk_") and created["client_secret"]
    assert created["scopes"] == ["projects:read"] and created["inherits_permissions"] is False
    assert created["status"] == "valid" and created["expires_soon"] is False
    expires = created["expires_at"]
    assert expires.endswith("Z") or "+00:00" in expires

    listed = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert [k["id"] for k in listed] == [created["id"]]
    one = (await client.get(f"/api-keys/{created['id']}", headers=bearer(token))).json()
    for shown in (listed[0], one):
        assert "client_secret" not in shown and "api_key" not in shown
        assert created["client_secret"] not in str(shown)
        assert shown["client_id"] == created["client_id"]
        assert shown["allowed_ips"] == ["192.0.2.0/24", "2001:db8::/48"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "   "}, "blank"),
        ({"name": NAME_100 + "s"}, "at most 100 characters"),
        ({"name": "k", "scopes": ["projects:read"] * 101}, "at most 100 items"),
        ({"name": "k", "allowed_ips": [f"10.0.{i}.0/24" for i in range(101)]}, "at most 100 items"),
        ({"name": "k", "scopes": []}, "at least one scope"),
        ({"name": "k", "scopes": ["billing:write"]}, "billing:write"),
        ({"name": "k", "allowed_ips": ["not-an-ip"]}, "not-an-ip"),
        ({"name": "k", "expires_at": "2020-01-01T00:00:00Z"}, "future"),
        ({"name": "k", "expires_at": "2099-01-01T00:00:00Z"}, "365 days"),
        ({"name": "k", "expires_at": "2027-01-01T00:00:00"}, "offset"),
        # Read leniently, these would be a moment within the allowed range.
        ({"name": "k", "expires_at": SOON_UNIX}, "RFC 3339"),
        ({"name": "k", "expires_at": str(SOON_UNIX)}, "RFC 3339"),
        ({"name": "k", "expires_at": SOON.date().isoformat()}, "RFC 3339"),
        ({"name": "k", "expires_at": SOON.isoformat().replace("+", " ")}, "%2B"),
        # pydantic said "unexpected extra characters at the end of the input" to these.
        (
            {"name": "k", "expires_at": "2027-06-30T23:59:60Z"},
            "expires_at: has second 60 (a leap second, not accepted): seconds must be 00-59",
        ),
        (
            {"name": "k", "expires_at": "2027-06-30T23:00:00+24:00"},
            "expires_at: has an offset out of range: it must be within ±23:59 (±HH:MM)",
        ),
        ({"name": "k", "expires_at": "2027-06-30T24:00:00Z"}, "hours must be 00-23"),
        ({"name": "k", "expires_at": "2027-06-30T23:60:00Z"}, "minutes must be 00-59"),
        ({"name": "k", "expires_at": "2027-06-30T23:00:00-05:60"}, "within ±23:59"),
        ({"name": "k", "owner_id": "someone-else"}, "owner_id"),
    ],
)
async def test_bad_input_is_422_with_a_clear_message(client, context, body, fragment):
    token = await user_token(context, client, "bob", PERMS)
    response = await client.post("/api-keys", json=body, headers=bearer(token))
    assert response.status_code == 422, response.text
    assert fragment in response.text
    assert (await client.get("/api-keys", headers=bearer(token))).json()["items"] == []


async def test_a_key_takes_settings_up_to_their_limits(client, context):
    token = await user_token(context, client, "erin", PERMS)
    ips = [f"10.0.{i}.0/24" for i in range(100)]
    scopes = ["projects:read", "api_keys:manage"] * 50
    key = await create_key(client, token, name=NAME_100, scopes=scopes, allowed_ips=ips)
    assert key["name"] == NAME_100.strip() and key["allowed_ips"] == ips
    # Stored once each, sorted, as an edit stores them.
    assert key["scopes"] == ["api_keys:manage", "projects:read"]


async def test_expiry_default_and_bounds(client, context):
    token = await user_token(context, client, "carol", PERMS)
    default = await create_key(client, token, name="default")
    from datetime import datetime

    expires = datetime.fromisoformat(default["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - utcnow()) - timedelta(days=90)) < timedelta(minutes=1)
    soon = await create_key(
        client, token, name="soon", expires_at=(utcnow() + timedelta(days=2)).isoformat()
    )
    assert soon["expires_soon"] is True


async def test_other_principals_keys_are_404(client, context):
    alice = await user_token(context, client, "alice", PERMS)
    bob = await user_token(context, client, "bob", PERMS)
    key = await create_key(client, alice, name="mine")
    for method, path in (
        ("GET", f"/api-keys/{key['id']}"),
        ("DELETE", f"/api-keys/{key['id']}"),
        ("POST", f"/api-keys/{key['id']}/rotate"),
    ):
        response = await client.request(method, path, headers=bearer(bob))
        assert response.status_code == 404, (method, response.text)
    assert (await exchange(client, key["api_key"])).status_code == 200


async def test_delete_is_irreversible(client, context):
    token = await user_token(context, client, "dan", PERMS)
    key = await create_key(client, token, name="gone")
    assert (await client.delete(f"/api-keys/{key['id']}", headers=bearer(token))).status_code == 204
    assert (await client.get(f"/api-keys/{key['id']}", headers=bearer(token))).status_code == 404
    assert (await client.get("/api-keys", headers=bearer(token))).json()["items"] == []
    assert (await exchange(client, key["api_key"])).status_code == 401
    again = await client.delete(f"/api-keys/{key['id']}", headers=bearer(token))
    assert again.status_code == 404


async def test_devices_and_unprivileged_users_cannot_manage_keys(client, context):
    await create_principal(context, "viewer", permissions=["projects:read"])
    viewer = (await login(client, "viewer"))["access_token"]
    response = await client.get("/api-keys", headers=bearer(viewer))
    assert response.status_code == 403

    device = await create_principal(
        context, "sensor-1", kind="device", permissions=["api_keys:manage"]
    )
    claims = {"sub": device.id, "scope": "api_keys:manage", "principal_type": "device", "sid": "x"}
    device_token, _ = context.keyring.issue(claims)
    refused = await client.post("/api-keys", json={"name": "k"}, headers=bearer(device_token))
    assert refused.status_code == 403


async def test_me_lists_warnings_for_expiring_and_expired_keys(client, context):
    from tests.factories import set_key

    token = await user_token(context, client, "erin", PERMS)
    soon = await create_key(
        client, token, name="soon", expires_at=(utcnow() + timedelta(days=3)).isoformat()
    )
    old = await create_key(client, token, name="old")
    await create_key(client, token, name="fine")
    await set_key(context, old["id"], expires_at=utcnow() - timedelta(days=1))
    me = (await client.get("/me", headers=bearer(token))).json()
    assert me["type"] == "user" and me["username"] == "erin"
    warned = {w["name"]: w for w in me["warnings"]}
    assert set(warned) == {"soon", "old"}
    assert warned["soon"]["client_id"] == soon["client_id"]
    assert {"key_id", "client_id", "name", "expires_at"} <= set(warned["old"])


async def test_answers_holding_a_secret_are_never_stored_by_caches(client, context):
    from tests.admin.support import admin_token, create_device

    token = await user_token(context, client, "fay", PERMS)
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "cam")
    for path, caller in (
        ("/api-keys", token),
        (f"/admin/devices/{device['id']}/api-keys", admin),
    ):
        response = await client.post(path, json={"name": "k"}, headers=bearer(caller))
        assert response.status_code == 201, response.text
        assert response.json()["client_secret"]
        assert response.headers["cache-control"] == "no-store", path
        assert response.headers["pragma"] == "no-cache", path


async def test_audit_names_the_key_whose_token_managed_keys(client, context):
    # A leaked key that creates, rotates and deletes keys must show as that key in the
    # audit log, as admin actions do, not as its owner having done it in person.
    from tests.factories import audit_events

    token = await user_token(context, client, "gil", PERMS)
    master = await create_key(client, token, name="automation")
    key_token = (await exchange(client, master["api_key"])).json()["access_token"]

    made = await create_key(client, key_token, name="made by a key")
    rotated = await client.post(f"/api-keys/{made['id']}/rotate", headers=bearer(key_token))
    assert rotated.status_code == 201, rotated.text
    deleted = await client.delete(f"/api-keys/{made['id']}", headers=bearer(key_token))
    assert deleted.status_code == 204
    by_person = await create_key(client, token, name="made in person")

    actors = {
        (event.type, event.key_id): event.actor
        for event in await audit_events(context)
        if event.type.startswith("api_key.")
    }
    by_key = f"key:{master['client_id']}"
    assert actors == {
        ("api_key.created", master["id"]): "user:gil",
        ("api_key.created", made["id"]): by_key,
        ("api_key.rotated", rotated.json()["id"]): by_key,
        ("api_key.updated", made["id"]): by_key,  # its end, under its own id
        ("api_key.deleted", made["id"]): by_key,
        ("api_key.created", by_person["id"]): "user:gil",
    }


async def test_a_refused_exchange_of_the_right_key_says_why(client, context):
    """Once the secret checks out, the refusal says what to do about it; a wrong secret or
    an unknown client id still gets the generic answer (nothing learned about client ids)."""
    from tests.factories import set_key

    token = await user_token(context, client, "fay", PERMS)
    office = await create_key(client, token, name="office", allowed_ips=["192.0.2.0/24"])
    refused = await exchange(client, office["api_key"])
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    said = refused.json()["error_description"]
    assert "may not be used from 127.0.0.1" in said and "allowed IPs" in said
    assert office["client_secret"] not in said and "192.0.2" not in said

    old = await create_key(client, token, name="old")
    await set_key(context, old["id"], expires_at=utcnow() - timedelta(days=1))
    expired = (await exchange(client, old["api_key"])).json()["error_description"]
    assert expired.startswith("This API key expired at ") and "Generate a new key" in expired

    gone = await create_key(client, token, name="gone")
    deleting = await client.delete(f"/api-keys/{gone['id']}", headers=bearer(token))
    assert deleting.status_code == 204
    deleted = (await exchange(client, gone["api_key"])).json()["error_description"]
    assert deleted == "This API key was deleted. Generate a new key and use it instead."

    wrong = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": office["client_id"],
            "client_secret": "x" * 43,
        },
    )
    assert wrong.json()["error_description"] == "Client authentication failed."


async def test_me_names_the_replacement_of_a_rotated_key(client, context):
    """A key in its rotation grace expires soon, and /me says which key replaces it: it
    cannot be rotated again, and the console's banner must not ask for that."""
    token = await user_token(context, client, "gil", PERMS)
    old = await create_key(client, token, name="rotated")
    soon = await create_key(
        client, token, name="soon", expires_at=(utcnow() + timedelta(days=3)).isoformat()
    )
    rotated = await client.post(
        f"/api-keys/{old['id']}/rotate", json={"grace_seconds": 3600}, headers=bearer(token)
    )
    assert rotated.status_code == 201
    me = (await client.get("/me", headers=bearer(token))).json()
    warned = {w["key_id"]: w for w in me["warnings"]}
    assert set(warned) == {old["id"], soon["id"]}
    assert warned[old["id"]]["status"] == "expires_soon"
    assert warned[old["id"]]["replaced_by"] == rotated.json()["client_id"]
    assert warned[soon["id"]]["replaced_by"] is None


async def test_an_admin_may_scope_a_key_to_the_built_ins_admin_implies(client, context):
    token = await user_token(context, client, "root", ["admin"])
    key = await create_key(client, token, name="ops", scopes=["introspect", "api_keys:manage"])
    assert key["scopes"] == ["api_keys:manage", "introspect"]
    granted = (await exchange(client, key["api_key"])).json()
    assert granted["scope"] == "api_keys:manage introspect"
    # Only the built-ins: a scope of the catalog's is held only when granted.
    await add_scope(context, "billing:write")
    refused = await create_key(client, token, expect=422, name="k", scopes=["billing:write"])
    assert "billing:write" in refused["error_description"]


async def test_own_keys_are_listed_newest_first(client, context):
    token = await user_token(context, client, "fay", PERMS)
    made = [(await create_key(client, token, name=f"k{n}"))["id"] for n in range(3)]
    listed = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert [key["id"] for key in listed] == made[::-1]


async def test_each_key_event_carries_the_owner_and_the_caller_s_ip(client, context):
    token = await user_token(context, client, "gus", PERMS)
    key = await create_key(client, token, name="ci")
    rotated = await client.post(f"/api-keys/{key['id']}/rotate", headers=bearer(token))
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    deleted = await client.delete(f"/api-keys/{new['id']}", headers=bearer(token))
    assert deleted.status_code == 204
    events = await audit_events(context, outcome="success")
    shown = [(e.type, e.key_id, e.principal_id, e.ip) for e in events if e.key_id is not None]
    owner = key["owner_id"]
    assert shown == [
        ("api_key.created", key["id"], owner, "127.0.0.1"),
        ("api_key.rotated", new["id"], owner, "127.0.0.1"),
        ("api_key.updated", key["id"], owner, "127.0.0.1"),
        ("api_key.deleted", new["id"], owner, "127.0.0.1"),
    ]
