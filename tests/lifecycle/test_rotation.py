"""Rotating one's own key: a new key with the same settings, the old one after a grace."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from keyservice.database import utcnow
from tests.admin.support import admin_request, admin_token, events, set_key_fields
from tests.factories import add_scope, bearer, create_key, exchange, login, user_token


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _rotate(client, token, key_id, expect=201, **body):
    response = await client.post(f"/api-keys/{key_id}/rotate", json=body, headers=bearer(token))
    assert response.status_code == expect, response.text
    return response


async def test_rotate_with_grace_keeps_both_keys_usable(client, context):
    await add_scope(context, "projects:read")
    token = await user_token(context, client, "uma", ["api_keys:manage", "projects:read"])
    old = await create_key(
        client,
        token,
        name="deploy",
        description="CI deploys",
        scopes=["projects:read"],
        allowed_ips=["127.0.0.0/8"],
    )
    response = await _rotate(client, token, old["id"])
    assert response.headers["cache-control"] == "no-store"
    new = response.json()
    assert new["id"] != old["id"] and new["api_key"] != old["api_key"]
    for field in ("name", "description", "scopes", "allowed_ips", "inherits_permissions"):
        assert new[field] == old[field], field
    assert new["client_secret"]

    old_now = (await client.get(f"/api-keys/{old['id']}", headers=bearer(token))).json()
    expected = utcnow() + timedelta(seconds=86400)
    assert abs(_at(old_now["expires_at"]) - expected) < timedelta(minutes=1)
    assert old_now["status"] == "valid"

    for key in (old, new):
        response = await exchange(client, key["api_key"])
        assert response.status_code == 200, response.text
        assert response.json()["scope"] == "projects:read"
    [event] = await events(context, "api_key.rotated", outcome="success")
    assert event.key_id == new["id"] and event.reason == f"rotated from {old['id']}"

    # When the grace period is over, only the new key works.
    await set_key_fields(context, old["id"], expires_at=utcnow() - timedelta(seconds=1))
    assert (await exchange(client, old["api_key"])).status_code == 401
    assert (await exchange(client, new["api_key"])).status_code == 200


async def test_the_replacement_lives_as_long_as_the_key_it_replaces(client, context):
    # "A new key with the same settings" (API.md): its lifetime is one. A key made to live
    # 300 days was replaced by one of the default 90, shortening it without a word.
    token = await user_token(context, client, "ulla", ["api_keys:manage"])
    for days in (300, 10, 90):
        made = utcnow()
        old = await create_key(
            client, token, name=f"d{days}", expires_at=(made + timedelta(days=days)).isoformat()
        )
        new = (await _rotate(client, token, old["id"], grace_seconds=0)).json()
        lifetime = _at(new["expires_at"]) - _at(new["created_at"])
        assert abs(lifetime - timedelta(days=days)) < timedelta(minutes=1), (days, lifetime)
    # No longer than keys may live now: a lower limit since the key was made caps it.
    long = await create_key(
        client, token, name="long", expires_at=(utcnow() + timedelta(days=200)).isoformat()
    )
    context.settings.key_max_ttl_days = 30
    new = (await _rotate(client, token, long["id"], grace_seconds=0)).json()
    lifetime = _at(new["expires_at"]) - _at(new["created_at"])
    assert abs(lifetime - timedelta(days=30)) < timedelta(minutes=1), lifetime


async def test_a_key_rotated_again_after_its_replacement_was_deleted_keeps_its_lifetime(
    client, context
):
    # The first rotation cut the key's expiry to its grace period's end; once that
    # replacement is deleted the key may be rotated again, and its new replacement lived
    # only what was left of the grace (a day), not the 300 days the key was made for.
    token = await user_token(context, client, "uli", ["api_keys:manage"])
    old = await create_key(
        client, token, name="long", expires_at=(utcnow() + timedelta(days=300)).isoformat()
    )
    first = (await _rotate(client, token, old["id"])).json()
    deleted = await client.delete(f"/api-keys/{first['id']}", headers=bearer(token))
    assert deleted.status_code == 204, deleted.text
    second = (await _rotate(client, token, old["id"])).json()
    lifetime = _at(second["expires_at"]) - _at(second["created_at"])
    assert abs(lifetime - timedelta(days=300)) < timedelta(minutes=1), lifetime


async def test_rotate_without_grace_refuses_the_old_key_at_once(client, context):
    token = await user_token(context, client, "vic")
    old = await create_key(client, token, name="now")
    new = (await _rotate(client, token, old["id"], grace_seconds=0)).json()
    refused = await exchange(client, old["api_key"])
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert (await exchange(client, new["api_key"])).status_code == 200
    listed = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert {item["id"]: item["status"] for item in listed} == {
        old["id"]: "expired",
        new["id"]: "valid",
    }
    # An expired key cannot be rotated again.
    await _rotate(client, token, old["id"], expect=409)


async def test_the_old_key_s_own_history_shows_its_rotation(client, context):
    """A rotation ends the old key (at once, or after the grace period): read by the old
    key's id, the audit log says so and names the replacement, not only the new key's
    `api_key.rotated` event (whose key_id is the new key's)."""
    admin = await admin_token(context, client)
    token = await user_token(context, client, "val")
    old = await create_key(client, token, name="now")
    new = (await _rotate(client, token, old["id"], grace_seconds=0)).json()
    assert (await exchange(client, old["api_key"])).status_code == 401

    history = await admin_request(
        client, admin, "GET", "/admin/audit-events", 200, params={"key_id": old["id"]}
    )
    items = history.json()["items"]
    assert [(e["type"], e["outcome"]) for e in items] == [
        ("token.exchange", "failure"),
        ("api_key.updated", "success"),
        ("api_key.created", "success"),
    ]
    ended = items[1]
    assert (ended["actor"], ended["principal_id"]) == ("user:val", old["owner_id"])
    expires = (await client.get(f"/api-keys/{old['id']}", headers=bearer(token))).json()
    until = f"{_at(expires['expires_at']):%Y-%m-%dT%H:%M:%SZ}"
    assert ended["reason"] == f"rotated to {new['id']}; expires {until}"
    [rotated] = await events(context, "api_key.rotated", outcome="success")
    assert (rotated.key_id, rotated.reason) == (new["id"], f"rotated from {old['id']}")


async def test_rotation_works_at_the_limit(client, context):
    token = await user_token(context, client, "wes")
    keys = [await create_key(client, token, name=f"k{n}") for n in range(5)]
    await _rotate(client, token, keys[0]["id"])
    await create_key(client, token, expect=409, name="sixth")


async def test_rotate_refusals(client, context):
    token = await user_token(context, client, "xena")
    other = await user_token(context, client, "yuri")
    key = await create_key(client, token, name="mine")
    await _rotate(client, other, key["id"], expect=404)
    await _rotate(client, token, "no-such-key", expect=404)
    await _rotate(client, token, key["id"], expect=422, grace_seconds=-1)
    await _rotate(client, token, key["id"], expect=422, grace_seconds=86400 * 31)
    for not_an_integer in ("10", "0", 10.5, 10.0, True, None):
        await _rotate(client, token, key["id"], expect=422, grace_seconds=not_an_integer)
    assert (await exchange(client, key["api_key"])).status_code == 200  # not rotated
    assert (await client.delete(f"/api-keys/{key['id']}", headers=bearer(token))).status_code == 204
    await _rotate(client, token, key["id"], expect=404)


async def test_a_chain_of_rotations_keeps_at_most_two_live_keys(client, context):
    # A replaced key does not count towards the limit during its grace period; rotating
    # the same key twice, or a replacement while the key it replaced is still valid, would
    # keep any number of keys alive past the limit.
    token = await user_token(context, client, "zoe")
    keys = [await create_key(client, token, name=f"k{n}") for n in range(5)]
    first = keys[0]
    second = (await _rotate(client, token, first["id"], grace_seconds=86400 * 30)).json()

    again = await _rotate(client, token, first["id"], expect=409)
    assert second["client_id"] in again.json()["error_description"]
    chained = await _rotate(client, token, second["id"], expect=409)
    assert first["client_id"] in chained.json()["error_description"]
    assert "delete it first" in chained.json()["error_description"]
    grace_end = (await client.get(f"/api-keys/{first['id']}", headers=bearer(token))).json()
    until = datetime.fromisoformat(grace_end["expires_at"]).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"still valid until {until}, its grace period" in chained.json()["error_description"]

    # Every other key can be rotated once: ten live keys, five of them on their way out.
    for key in keys[1:]:
        await _rotate(client, token, key["id"], grace_seconds=86400 * 30)
    listed = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert [item["status"] for item in listed] == ["valid"] * 10
    await create_key(client, token, expect=409, name="eleventh")
    for item in listed:
        await _rotate(client, token, item["id"], expect=409)

    # Once the replaced key is gone (deleted, or its grace over), its replacement rotates.
    deleted = await client.delete(f"/api-keys/{first['id']}", headers=bearer(token))
    assert deleted.status_code == 204
    third = (await _rotate(client, token, second["id"])).json()
    await set_key_fields(context, second["id"], expires_at=utcnow() - timedelta(seconds=1))
    await _rotate(client, token, third["id"])
    listed = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert sum(item["status"] == "valid" for item in listed) == 10


async def test_concurrent_rotations_of_one_key_make_one_replacement(client, context):
    token = await user_token(context, client, "yan")
    key = await create_key(client, token, name="busy")
    responses = await asyncio.gather(
        *(
            client.post(f"/api-keys/{key['id']}/rotate", json={}, headers=bearer(token))
            for _ in range(10)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 9, [response.text for response in responses]
    [winner] = [response.json() for response in responses if response.status_code == 201]
    assert all(
        winner["client_id"] in response.json()["error_description"]
        for response in responses
        if response.status_code == 409
    )
    listed = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert sorted(item["id"] for item in listed) == sorted([key["id"], winner["id"]])
    assert len(await events(context, "api_key.rotated", outcome="success")) == 1


async def test_a_key_with_a_scope_its_owner_lost_rotates_with_its_scopes(client, context):
    # A leaked key must be rotatable whatever its owner holds today: the replacement has the
    # key's settings, and its tokens carry key scopes ∩ the owner's current permissions.
    for scope in ("projects:read", "projects:write"):
        await add_scope(context, scope)
    perms = ["api_keys:manage", "projects:read", "projects:write"]
    token = await user_token(context, client, "ida", perms)
    old = await create_key(client, token, name="both", scopes=["projects:read", "projects:write"])
    admin = await admin_token(context, client)
    path = f"/admin/users/{old['owner_id']}"
    await admin_request(client, admin, "PATCH", path, 200, json={"permissions": perms[:2]})
    token = (await login(client, "ida"))["access_token"]

    new = (await _rotate(client, token, old["id"])).json()
    assert new["scopes"] == ["projects:read", "projects:write"]
    assert (await exchange(client, new["api_key"])).json()["scope"] == "projects:read"
    await admin_request(client, admin, "PATCH", path, 200, json={"permissions": perms})
    regained = (await exchange(client, new["api_key"])).json()["scope"]
    assert regained == "projects:read projects:write"
    [event] = await events(context, "api_key.rotated", outcome="success")
    assert event.key_id == new["id"]


async def test_an_expired_key_is_not_rotated_back_into_use(client, context):
    token = await user_token(context, client, "zoe")
    key = await create_key(client, token, name="old")
    await set_key_fields(context, key["id"], expires_at=utcnow() - timedelta(seconds=1))
    refused = await _rotate(client, token, key["id"], expect=409)
    assert "expired" in refused.json()["error_description"]
    listed = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert [(one["id"], one["status"]) for one in listed] == [(key["id"], "expired")]
    assert await events(context, "api_key.rotated", outcome="success") == []


async def test_a_grace_period_longer_than_the_old_key_s_life_does_not_extend_it(client, context):
    token = await user_token(context, client, "abe")
    ends = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    key = await create_key(client, token, name="short", expires_at=ends.isoformat())
    await _rotate(client, token, key["id"], grace_seconds=86400 * 30)
    old = (await client.get(f"/api-keys/{key['id']}", headers=bearer(token))).json()
    assert _at(old["expires_at"]) == ends
