"""Admin API: users (create, list, get, patch) and what disabling one does."""

from __future__ import annotations

import asyncio

import pytest
from passlib.hash import argon2

from keyservice.security.hashing import slow_hash_jobs
from keyservice.users import service as users_service
from tests.admin.support import (
    admin_request,
    admin_token,
    events,
    me_within,
    past_revoked_second,
    refresh,
    token_for,
)
from tests.factories import (
    PASSWORD,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    set_principal,
    user_token,
)


async def test_create_list_get_user(client, context):
    admin = await admin_token(context, client)
    await create_principal(context, "scope-holder", permissions=["projects:read"])
    created = await admin_request(
        client,
        admin,
        "POST",
        "/admin/users",
        201,
        json={
            "username": "carol",
            "password": "long enough password",
            "permissions": ["projects:read", "api_keys:manage"],
        },
    )
    user = created.json()
    assert user["username"] == "carol"
    assert user["type"] == "user"
    assert user["permissions"] == ["api_keys:manage", "projects:read"]
    assert user["disabled"] is False
    assert not any("password" in name or "hash" in name for name in user)
    assert "argon2" not in created.text

    listed = (await admin_request(client, admin, "GET", "/admin/users", 200)).json()["items"]
    assert {item["username"] for item in listed} == {"root", "scope-holder", "carol"}
    assert "argon2" not in str(listed)

    got = await admin_request(client, admin, "GET", f"/admin/users/{user['id']}", 200)
    assert got.json() == user

    # The new user can sign in with the password the admin set.
    assert (await login(client, "carol", "long enough password"))["access_token"]
    [event] = await events(context, "user.created", outcome="success")
    assert event.principal_id == user["id"]
    # Named as sign-ins, self-service and the console name the same admin.
    assert event.actor == "user:root"


async def test_user_create_refusals(client, context):
    admin = await admin_token(context, client)
    body = {"username": "dave", "password": "long enough password", "permissions": []}
    await admin_request(client, admin, "POST", "/admin/users", 201, json=body)
    duplicate = await admin_request(client, admin, "POST", "/admin/users", 409, json=body)
    assert "taken" in duplicate.json()["error_description"]

    unknown = {**body, "username": "erin", "permissions": ["nope:read"]}
    response = await admin_request(client, admin, "POST", "/admin/users", 422, json=unknown)
    assert "nope:read" in response.json()["error_description"]

    short = {**body, "username": "erin", "password": "short"}
    await admin_request(client, admin, "POST", "/admin/users", 422, json=short)
    await admin_request(
        client, admin, "POST", "/admin/users", 422, json={**body, "username": "bad name!"}
    )


async def test_names_with_characters_refused_are_explained_in_words(client, context):
    # Not pydantic's "String should match pattern '^[A-Za-z0-9][A-Za-z0-9._@+-]*$'".
    admin = await admin_token(context, client)
    for path, body, says in (
        (
            "/admin/users",
            {"username": "john doe", "password": "long enough password"},
            "username: may hold only letters, digits and . _ @ + -, and must start with a "
            "letter or digit",
        ),
        (
            "/admin/devices",
            {"name": "-sensor"},
            "name: may hold only letters, digits and . _ @ + -, and must start with a "
            "letter or digit",
        ),
        (
            "/admin/scopes",
            {"name": "projects read"},
            "name: may hold only letters, digits and _ . : / -, and must start with a "
            "letter or digit",
        ),
    ):
        response = await admin_request(client, admin, "POST", path, 422, json=body)
        assert response.json()["error_description"] == says
        assert "^" not in response.text and "pattern" not in response.text
    users = (await admin_request(client, admin, "GET", "/admin/users", 200)).json()["items"]
    assert [user["username"] for user in users] == ["root"]
    devices = (await admin_request(client, admin, "GET", "/admin/devices", 200)).json()
    assert devices["items"] == []


async def test_admin_endpoints_need_admin(client, context):
    token = await user_token(context, client, "mallory", ["api_keys:manage"])
    for method, path in [
        ("GET", "/admin/users"),
        ("POST", "/admin/users"),
        ("GET", "/admin/devices"),
        ("GET", "/admin/api-keys"),
        ("GET", "/admin/scopes"),
        ("GET", "/admin/audit-events"),
    ]:
        response = await client.request(method, path, headers=bearer(token), json={})
        assert response.status_code == 403, (method, path)
        assert "insufficient_scope" in response.headers["www-authenticate"]
        anonymous = await client.request(method, path, json={})
        assert anonymous.status_code == 401, (method, path)


async def test_unknown_ids_are_404(client, context):
    admin = await admin_token(context, client)
    device = await admin_request(
        client, admin, "POST", "/admin/devices", 201, json={"name": "box", "permissions": []}
    )
    for user_id in ("no-such-id", device.json()["id"]):
        await admin_request(client, admin, "GET", f"/admin/users/{user_id}", 404)
        await admin_request(
            client, admin, "PATCH", f"/admin/users/{user_id}", 404, json={"disabled": True}
        )


async def test_patch_permissions_and_password(client, context):
    admin = await admin_token(context, client)
    user = await create_principal(context, "frank", permissions=["api_keys:manage"])
    await create_principal(context, "other", permissions=["projects:read"])

    updated = await admin_request(
        client,
        admin,
        "PATCH",
        f"/admin/users/{user.id}",
        200,
        json={"permissions": ["projects:read", "api_keys:manage"]},
    )
    assert updated.json()["permissions"] == ["api_keys:manage", "projects:read"]
    assert (await login(client, "frank"))["scope"] == "api_keys:manage projects:read"

    new_password = "a completely new passphrase"
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{user.id}", 200, json={"password": new_password}
    )
    old = await client.post(
        "/token", data={"grant_type": "password", "username": "frank", "password": PASSWORD}
    )
    assert old.status_code == 400
    assert (await login(client, "frank", new_password))["access_token"]

    # An edit that changes nothing is refused, as a key's or a scope's is; null is not sent.
    for nothing in ({}, {"disabled": None}, {"permissions": None, "password": None}):
        empty = await admin_request(
            client, admin, "PATCH", f"/admin/users/{user.id}", 422, json=nothing
        )
        assert empty.json()["error_description"] == (
            "Nothing to change: give at least one of disabled, permissions, password."
        )
    got = await admin_request(client, admin, "GET", f"/admin/users/{user.id}", 200)
    assert got.json()["permissions"] == ["api_keys:manage", "projects:read"]
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{user.id}", 422, json={"password": "short"}
    )
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{user.id}", 422, json={"username": "renamed"}
    )

    updated = await events(context, "user.updated", outcome="success")
    reasons = [event.reason or "" for event in updated]
    # frank signed in once (the scope check above) before the change: that session ended.
    assert reasons == [
        "permissions: api_keys:manage projects:read",
        "password changed; 1 sign-in session(s) ended",
    ]
    everything = " ".join(str(vars(event)) for event in await events(context))
    assert new_password not in everything and PASSWORD not in everything


@pytest.mark.parametrize("value", ["yes", "true", "off", 1, 0])
async def test_disabled_must_be_a_json_boolean(client, context, value):
    admin = await admin_token(context, client)
    user = await create_principal(context, "hank", permissions=["api_keys:manage"])
    response = await admin_request(
        client, admin, "PATCH", f"/admin/users/{user.id}", 422, json={"disabled": value}
    )
    assert response.json()["error_description"].startswith("disabled: Input should be a valid")
    got = await admin_request(client, admin, "GET", f"/admin/users/{user.id}", 200)
    assert got.json()["disabled"] is False
    assert (await login(client, "hank"))["access_token"]


async def test_admin_cannot_lock_themself_out(client, context):
    admin = await admin_token(context, client)
    me = (await client.get("/me", headers=bearer(admin))).json()
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{me['id']}", 409, json={"disabled": True}
    )
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{me['id']}", 409, json={"permissions": []}
    )
    assert (await client.get("/admin/users", headers=bearer(admin))).status_code == 200


async def test_disabling_a_user_suspends_keys_and_refuses_tokens(client, context):
    admin = await admin_token(context, client)
    token = await user_token(context, client, "gina", ["api_keys:manage", "projects:read"])
    me = (await client.get("/me", headers=bearer(token))).json()
    session = await login(client, "gina")
    key = await create_key(client, token, name="ci")
    exchanged = await token_for(client, key["api_key"])

    disabled = await admin_request(
        client, admin, "PATCH", f"/admin/users/{me['id']}", 200, json={"disabled": True}
    )
    assert disabled.json()["disabled"] is True

    # Its access tokens (password login and key exchange) are refused at once.
    for access in (token, exchanged["access_token"]):
        response = await me_within(client, access, 401)
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # Its refresh tokens are refused.
    for refresh_token in (session["refresh_token"], exchanged["refresh_token"]):
        response = await refresh(client, refresh_token)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"
    # Its keys are suspended, not revoked, and cannot be exchanged.
    listed = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"owner_id": me["id"]}
    )
    assert [item["status"] for item in listed.json()["items"]] == ["suspended"]
    refused = await exchange(client, key["api_key"])
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    denied = await client.post(
        "/token", data={"grant_type": "password", "username": "gina", "password": PASSWORD}
    )
    assert denied.status_code == 400

    await admin_request(
        client, admin, "PATCH", f"/admin/users/{me['id']}", 200, json={"disabled": False}
    )
    listed = await admin_request(
        client, admin, "GET", "/admin/api-keys", 200, params={"owner_id": me["id"]}
    )
    assert [item["status"] for item in listed.json()["items"]] == ["valid"]
    await past_revoked_second(context, me["id"])
    again = await token_for(client, key["api_key"])
    await me_within(client, again["access_token"], 200)

    # The password sign-ins (user_token's and login's) and the key exchange's.
    reasons = [event.reason for event in await events(context, "user.updated", outcome="success")]
    assert reasons == ["disabled; 3 token session(s) ended", "enabled"]


async def test_password_change_ends_sign_in_sessions_but_not_keys(client, context):
    admin = await admin_token(context, client)
    await create_principal(context, "rotator", permissions=["api_keys:manage"])
    session = await login(client, "rotator")
    key = await create_key(client, session["access_token"], name="job")
    key_tokens = (await exchange(client, key["api_key"])).json()
    me = (await client.get("/me", headers=bearer(session["access_token"]))).json()
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{me['id']}", expect=200,
        json={"password": "a-brand-new-password"},
    )  # fmt: skip
    await me_within(client, session["access_token"], 401)
    refused = await refresh(client, session["refresh_token"])
    assert refused.json()["error"] == "invalid_grant"
    # The key is a separate credential: its tokens and new exchanges keep working.
    assert (await client.get("/me", headers=bearer(key_tokens["access_token"]))).status_code == 200
    assert (await exchange(client, key["api_key"])).status_code == 200
    assert (await login(client, "rotator", password="a-brand-new-password"))["access_token"]
    reasons = [e.reason for e in await events(context, "user.updated", outcome="success")]
    assert any("1 sign-in session(s) ended" in (r or "") for r in reasons)
    assert not any("a-brand-new-password" in (r or "") for r in reasons)


async def test_a_sign_in_checked_against_the_old_password_ends_with_the_change(client, context):
    # The change ends the sign-in sessions it finds; a sign-in that read the old hash before
    # it and writes its session after it must not outlive it either.
    admin = await admin_token(context, client)
    user = await create_principal(context, "slowpoke", permissions=["api_keys:manage"])
    # An old hash of higher cost: checking it outlasts the whole change (~10 x its hash).
    await set_principal(context, user.id, password_hash=argon2.using(rounds=40).hash(PASSWORD))
    jobs = slow_hash_jobs()
    signing_in = asyncio.create_task(
        client.post(
            "/token", data={"grant_type": "password", "username": "slowpoke", "password": PASSWORD}
        )
    )
    while slow_hash_jobs() == jobs:  # until the sign-in has read the old hash to check it
        await asyncio.sleep(0.001)
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{user.id}", 200,
        json={"password": "a-brand-new-password"},
    )  # fmt: skip
    body = (await signing_in).json()
    # Refused, or ended by the change's own sweep: nothing signed in with the old password
    # after the change keeps working.
    if "refresh_token" in body:
        assert (await refresh(client, body["refresh_token"])).json()["error"] == "invalid_grant"
        await me_within(client, body["access_token"], 401)
    else:
        assert body["error"] == "invalid_grant", body
        assert body["error_description"].startswith("Wrong username or password")
        refusals = [e.reason for e in await events(context, "login") if e.outcome == "failure"]
        assert refusals == ["password changed during sign-in"]


# The revocation view reloads every 5 s (0.2 in tests): the pool is this test's alone. The
# real cost: the hash must run long enough to be looked at while it runs.
@pytest.mark.real_argon2
@pytest.mark.parametrize("settings_overrides", [{"revocation_poll_seconds": 5}])
async def test_hashing_a_password_holds_no_database_connection(client, context):
    # argon2 takes ~100 ms; on SQLite a transaction is the write lock (BEGIN IMMEDIATE), so
    # a hash inside one stalled every exchange, refresh and sign-in meanwhile.
    admin = await admin_token(context, client)
    user = await create_principal(context, "patient", permissions=["api_keys:manage"])
    for method, path, body, status in (
        ("POST", "/admin/users", {"username": "newcomer", "password": "a-long-password"}, 201),
        ("PATCH", f"/admin/users/{user.id}", {"password": "another-long-password"}, 200),
    ):
        jobs = slow_hash_jobs()
        answer = asyncio.create_task(client.request(method, path, json=body, headers=bearer(admin)))
        while slow_hash_jobs() == jobs:  # until the new password is being hashed
            await asyncio.sleep(0.001)
        assert context.database.engine.pool.checkedout() == 0, path
        assert (await answer).status_code == status, path
    assert (await login(client, "newcomer", "a-long-password")).get("access_token")
    assert (await login(client, "patient", "another-long-password")).get("access_token")


async def test_two_admins_disabling_each_other_leave_one(client, context):
    # Each is authorized at the start of its request; whichever commits second would leave
    # no enabled admin, and nobody could sign in to the admin API or console again.
    tokens = [await admin_token(context, client, name) for name in ("ann", "bob")]
    ids = [(await client.get("/me", headers=bearer(t))).json()["id"] for t in tokens]
    for change in ({"disabled": True}, {"permissions": ["api_keys:manage"]}):
        answers = await asyncio.gather(
            client.patch(f"/admin/users/{ids[1]}", json=change, headers=bearer(tokens[0])),
            client.patch(f"/admin/users/{ids[0]}", json=change, headers=bearer(tokens[1])),
        )
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        refused = next(a for a in answers if a.status_code == 409).json()
        assert "last enabled admin" in refused["error_description"]
        async with context.database.sessionmaker() as session:
            left = [p for p in (await users_service.list_users(session)) if p.usable]
        assert [p.name for p in left if "admin" in p.permissions] in (["ann"], ["bob"])
        # Back to two admins for the next change (the admin left restores the other).
        winner = tokens[0] if answers[0].status_code == 200 else tokens[1]
        loser_id = ids[1] if answers[0].status_code == 200 else ids[0]
        await admin_request(
            client, winner, "PATCH", f"/admin/users/{loser_id}", 200,
            json={"disabled": False, "permissions": ["admin"]},
        )  # fmt: skip
        loser = ids.index(loser_id)
        if "disabled" in change:
            await past_revoked_second(context, loser_id)
        tokens[loser] = (await login(client, ("ann", "bob")[loser]))["access_token"]


async def test_a_device_cannot_disable_the_last_admin(client, context):
    # Self-lockout is refused already; a device holding `admin` is nobody who can sign in.
    admin = await admin_token(context, client, "solo")
    solo = (await client.get("/me", headers=bearer(admin))).json()["id"]
    device = await admin_request(
        client, admin, "POST", "/admin/devices", 201,
        json={"name": "robot", "permissions": ["admin"]},
    )  # fmt: skip
    key = await admin_request(
        client, admin, "POST", f"/admin/devices/{device.json()['id']}/api-keys", 201,
        json={"name": "ops"},
    )  # fmt: skip
    robot = (await exchange(client, key.json()["api_key"])).json()["access_token"]
    for change in ({"disabled": True}, {"permissions": []}):
        answer = await admin_request(
            client, robot, "PATCH", f"/admin/users/{solo}", 409, json=change
        )
        assert "last enabled admin" in answer.json()["error_description"]
    # Refused before anything changed: the admin's own session and token still work.
    assert "admin" in (await client.get("/me", headers=bearer(admin))).json()["permissions"]
    # With a second admin user it is allowed.
    await create_principal(context, "deputy", permissions=["admin"])
    await admin_request(
        client, robot, "PATCH", f"/admin/users/{solo}", 200, json={"permissions": []}
    )


async def test_a_user_is_found_by_their_username(client, context):
    # As devices are by name: a provisioning script whose POST /admin/users lost its answer
    # gets 409 on the retry and needs the id. `username` was ignored, as unknown parameters
    # are, and the answer listed every user, the first of them easily taken for the one.
    admin = await admin_token(context, client)
    for name in ("Dora", "dora.m", "adora"):
        await create_principal(context, name, permissions=[])

    async def found(username, **params):
        body = (
            await admin_request(
                client, admin, "GET", "/admin/users", 200, params={"username": username, **params}
            )
        ).json()
        return [item["username"] for item in body["items"]], body["next_cursor"]

    assert await found("Dora") == (["Dora"], None)  # the name: not dora.m, adora
    assert await found("DORA") == (["Dora"], None)  # in any case, as names are one
    assert await found("dora", limit=1) == (["Dora"], None)
    assert await found("nobody") == ([], None)
    too_long = await admin_request(
        client, admin, "GET", "/admin/users", 422, params={"username": "d" * 101}
    )
    assert "username" in too_long.json()["error_description"]
    repeated = await client.get("/admin/users?username=Dora&username=adora", headers=bearer(admin))
    assert repeated.status_code == 422, repeated.text
    assert repeated.json()["details"][0]["type"] == "query_repeated"
