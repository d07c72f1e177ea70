"""Revocation reaching every endpoint and every replica; /revoke and /introspect."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import text

from keyservice.context import AppContext
from keyservice.main import create_app
from tests.conftest import client_for
from tests.factories import (
    audit_events,
    bearer,
    create_key,
    exchange,
    login,
    replica_signs,
    user_token,
)

PERMS = ["api_keys:manage", "projects:read"]


async def test_deleted_key_tokens_die_here_and_on_another_replica(client, context, backend):
    token = await user_token(context, client, "alice", PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()

    replica_context = AppContext(context.settings)
    replica = create_app(context=replica_context)
    async with replica.router.lifespan_context(replica), client_for(replica) as other:
        assert (await other.get("/me", headers=bearer(tokens["access_token"]))).status_code == 200
        deleted = await client.delete(f"/api-keys/{key['id']}", headers=bearer(token))
        assert deleted.status_code == 204
        # Same process: at once.
        refused = await client.get("/me", headers=bearer(tokens["access_token"]))
        assert refused.status_code == 401
        assert refused.json()["error_description"] == (
            "The access token is no longer valid: the API key behind this token was revoked."
        )
        # Another replica: within 5 seconds (NOTIFY on PostgreSQL, polling everywhere).
        for _ in range(50):
            response = await other.get("/me", headers=bearer(tokens["access_token"]))
            if response.status_code == 401:
                break
            await asyncio.sleep(0.1)
        assert response.status_code == 401
        refreshed = await other.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        )
        assert refreshed.json()["error"] == "invalid_grant"


async def test_a_deleted_devices_tokens_are_refused_as_deleted_here_and_elsewhere(
    client, context, backend
):
    """A deleted device's token is refused saying its account was deleted, not disabled:
    here at once, on another replica (NOTIFY, or its poll), and by a view read afresh;
    a device that is only disabled is still said to be disabled."""
    from keyservice.auth.revocation import RevocationView
    from tests.admin.support import (
        admin_request,
        admin_token,
        create_device,
        create_device_key,
        token_for,
    )

    def refusal(reason: str) -> str:
        return f"The access token is no longer valid: the account behind this token {reason}."

    admin = await admin_token(context, client)
    issued = {}
    for name in ("gone", "paused"):
        device = await create_device(client, admin, name)
        key = await create_device_key(client, admin, device["id"], name="k")
        issued[name] = (device["id"], (await token_for(client, key["api_key"]))["access_token"])
    replica_context = AppContext(context.settings)
    replica = create_app(context=replica_context)
    async with replica.router.lifespan_context(replica), client_for(replica) as other:
        gone, paused = issued["gone"], issued["paused"]
        for _, token in (gone, paused):
            assert (await other.get("/me", headers=bearer(token))).status_code == 200
        await admin_request(client, admin, "DELETE", f"/admin/devices/{gone[0]}", 204)
        await admin_request(
            client, admin, "PATCH", f"/admin/devices/{paused[0]}", 200, json={"disabled": True}
        )
        expected = {gone[1]: refusal("was deleted"), paused[1]: refusal("is disabled")}
        for token, description in expected.items():
            refused = await client.get("/me", headers=bearer(token))  # same process: at once
            assert (refused.status_code, refused.json()["error_description"]) == (
                401,
                description,
            )
            # Another replica's view: within 5 seconds (NOTIFY, or its poll). Its /me may
            # refuse sooner, having read the device itself (principals/service.py).
            claims = replica_context.keyring.verify(token)
            for _ in range(50):
                if (reason := replica_context.revocation.reason(claims)) is not None:
                    break
                await asyncio.sleep(0.1)
            assert f"The access token is no longer valid: {reason}." == description
    view = RevocationView(access_token_ttl=context.settings.access_token_ttl, poll_seconds=60)
    async with context.database.sessionmaker() as session:
        await view.reload(session)
    for token, description in expected.items():
        reason = view.reason(context.keyring.verify(token))
        assert f"The access token is no longer valid: {reason}." == description


async def test_revoke_endpoint_kills_the_family(client, context):
    token = await user_token(context, client, "bob", PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()
    response = await client.post("/revoke", data={"token": tokens["refresh_token"]})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 401
    again = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert again.json()["error"] == "invalid_grant"
    # Refused as revoked, with its key named: not taken for a replay of a spent token.
    [refused] = await audit_events(context, "token.refresh")
    assert (refused.outcome, refused.reason, refused.key_id, refused.actor) == (
        "failure",
        "refresh token family revoked",
        key["id"],
        f"key:{key['client_id']}",
    )
    assert await audit_events(context, "token.refresh_reuse") == []
    unknown = await client.post("/revoke", data={"token": "ksr_whatever"})
    assert unknown.status_code == 200
    # Without client authentication the event names the token's holder: its key, or the
    # user of a password sign-in.
    session = await login(client, "bob")
    assert (await client.post("/revoke", data={"token": session["refresh_token"]})).is_success
    by_key, by_user = await audit_events(context, "token.revoke")
    assert (by_key.actor, by_key.key_id) == (f"key:{key['client_id']}", key["id"])
    assert (by_user.actor, by_user.key_id) == ("user:bob", None)
    assert by_user.principal_id == key["owner_id"]


async def test_a_token_in_the_url_is_refused_and_nothing_is_revoked(client, context):
    # `POST /revoke?token=...` said "the request body is empty", or, with a token in the
    # body too, revoked that one: the URL's token, now in proxy logs, was taken silently.
    admin_token = await user_token(context, client, "root", ["admin"])
    token = await user_token(context, client, "ivy", PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()
    for path, headers in (("/revoke", {}), ("/introspect", bearer(admin_token))):
        for name in ("token", "access_token"):
            response = await client.post(
                f"{path}?{name}={tokens['refresh_token']}",
                data={"token": tokens["access_token"]},
                headers=headers,
            )
            assert response.status_code == 400, (path, response.text)
            body = response.json()
            assert body["error"] == "invalid_request"
            assert "never in the URL" in body["error_description"]
            assert tokens["refresh_token"] not in response.text
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 200
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_revoke_with_another_keys_credentials_changes_nothing(client, context):
    token = await user_token(context, client, "carl", PERMS)
    mine = await create_key(client, token, name="mine")
    theirs = await create_key(client, token, name="theirs")
    tokens = (await exchange(client, mine["api_key"])).json()
    response = await client.post(
        "/revoke", data={"token": tokens["refresh_token"], "api_key": theirs["api_key"]}
    )
    assert response.status_code == 200
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 200
    # The client learns nothing; the audit log has who tried, on which key's token.
    [event] = await audit_events(context, "token.revoke")
    assert (event.outcome, event.actor, event.key_id, event.principal_id) == (
        "failure",
        f"key:{theirs['client_id']}",
        mine["id"],
        mine["owner_id"],
    )
    assert event.reason == "token of another key; not revoked"
    assert event.ip == "127.0.0.1"


async def test_revoke_with_the_tokens_own_key_and_its_audit_events(client, context):
    token = await user_token(context, client, "cora", PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()
    owner_id = key["owner_id"]

    # Credentials that fail authentication are refused (RFC 7009 §2.2.1) and change nothing.
    wrong = base64.b64encode(f"{key['client_id']}:not-the-secret".encode()).decode()
    refused = await client.post(
        "/revoke",
        data={"token": tokens["refresh_token"]},
        headers={"Authorization": f"Basic {wrong}"},
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert refused.headers["www-authenticate"].startswith("Basic")
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 200

    right = base64.b64encode(f"{key['client_id']}:{key['client_secret']}".encode()).decode()
    revoked = await client.post(
        "/revoke",
        data={"token": tokens["refresh_token"]},
        headers={"Authorization": f"Basic {right}"},
    )
    assert revoked.status_code == 200
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 401

    failure, success = await audit_events(context, "token.revoke")
    assert (failure.outcome, failure.key_id, failure.principal_id) == (
        "failure",
        key["id"],
        owner_id,
    )
    assert failure.reason
    assert (success.outcome, success.key_id, success.principal_id) == (
        "success",
        key["id"],
        owner_id,
    )
    assert success.actor == f"key:{key['client_id']}"
    assert (failure.ip, success.ip) == ("127.0.0.1", "127.0.0.1")


async def test_revoking_an_access_token_with_its_own_key_revokes_its_family(client, context):
    # An access token is revoked by its `sid`; the key it was issued to is found by its
    # `client_id` claim, so its own key's credentials revoke it and the event names it.
    token = await user_token(context, client, "cleo", PERMS)
    mine = await create_key(client, token, name="mine")
    theirs = await create_key(client, token, name="theirs")
    tokens = (await exchange(client, mine["api_key"])).json()
    other = (await exchange(client, theirs["api_key"])).json()
    response = await client.post(
        "/revoke", data={"token": tokens["access_token"], "api_key": mine["api_key"]}
    )
    assert response.status_code == 200
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 401
    again = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert again.json()["error"] == "invalid_grant"
    assert (await client.get("/me", headers=bearer(other["access_token"]))).status_code == 200
    [event] = await audit_events(context, "token.revoke")
    assert (event.outcome, event.actor, event.key_id, event.principal_id) == (
        "success",
        f"key:{mine['client_id']}",
        mine["id"],
        mine["owner_id"],
    )


async def test_introspect(client, context):
    admin_token = await user_token(context, client, "root", ["admin"])
    token = await user_token(context, client, "dora", PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()

    forbidden = await client.post(
        "/introspect", data={"token": tokens["access_token"]}, headers=bearer(token)
    )
    assert forbidden.status_code == 403
    active = (
        await client.post(
            "/introspect", data={"token": tokens["access_token"]}, headers=bearer(admin_token)
        )
    ).json()
    assert active["active"] is True and active["client_id"] == key["client_id"]
    refresh_info = (
        await client.post(
            "/introspect", data={"token": tokens["refresh_token"]}, headers=bearer(admin_token)
        )
    ).json()
    assert refresh_info["active"] is True

    await client.delete(f"/api-keys/{key['id']}", headers=bearer(token))
    for value in (tokens["access_token"], tokens["refresh_token"], "garbage"):
        body = (
            await client.post("/introspect", data={"token": value}, headers=bearer(admin_token))
        ).json()
        assert body == {"active": False}


async def test_introspect_answers_the_access_tokens_claims_and_spent_refresh_tokens_are_inactive(
    client, context
):
    admin_token = await user_token(context, client, "root", ["admin"])
    token = await user_token(context, client, "dina", PERMS)
    key = await create_key(client, token, name="k", scopes=["projects:read"])
    tokens = (await exchange(client, key["api_key"])).json()

    async def introspect(value: str) -> dict:
        response = await client.post(
            "/introspect", data={"token": value}, headers=bearer(admin_token)
        )
        assert response.status_code == 200, response.text
        return response.json()

    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    names = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "sid")
    assert await introspect(tokens["access_token"]) == {
        "active": True,
        "token_type": "Bearer",
        **{name: claims[name] for name in names},
        "principal_type": claims["principal_type"],
    }
    # A refresh token already spent, then one whose family was revoked, is inactive.
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert await introspect(tokens["refresh_token"]) == {"active": False}
    newer = refreshed.json()["refresh_token"]
    described = await introspect(newer)
    assert described == {
        "active": True,
        "token_type": "refresh_token",
        "scope": "projects:read",
        "sub": key["owner_id"],
        "exp": described["iat"] + context.settings.refresh_token_ttl,
        "iat": described["iat"],
        "sid": claims["sid"],
        "client_id": key["client_id"],
    }
    assert abs(described["iat"] - claims["iat"]) < 60
    assert (await client.post("/revoke", data={"token": newer})).status_code == 200
    assert await introspect(newer) == {"active": False}


async def test_introspected_refresh_token_has_the_scope_a_refresh_would_get(client, context):
    from tests.factories import set_principal

    admin_token = await user_token(context, client, "root", ["admin"])
    token = await user_token(context, client, "fay", [*PERMS, "projects:write"])
    me = (await client.get("/me", headers=bearer(token))).json()
    key = await create_key(client, token, name="inherits")  # no scopes: the owner's
    tokens = (await exchange(client, key["api_key"])).json()
    assert tokens["scope"] == "api_keys:manage projects:read projects:write"

    async def described() -> dict:
        answer = await client.post(
            "/introspect", data={"token": tokens["refresh_token"]}, headers=bearer(admin_token)
        )
        return answer.json()

    assert (await described())["scope"] == "api_keys:manage projects:read projects:write"
    await set_principal(context, me["id"], permissions=["projects:read", "projects:write"])
    now = await described()
    assert now["active"] is True and now["scope"] == "projects:read projects:write"
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"] == now["scope"]


async def test_disabled_owner_tokens_are_refused(client, context):
    from tests.factories import set_principal

    token = await user_token(context, client, "eve", PERMS)
    me = (await client.get("/me", headers=bearer(token))).json()
    fresh = await login(client, "eve")
    await set_principal(context, me["id"], disabled=True)
    assert (await client.get("/me", headers=bearer(token))).status_code == 401
    refused = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]}
    )
    assert refused.json()["error"] == "invalid_grant"
    # Disabled in the database (no token revocation recorded): refused as disabled.
    [event] = await audit_events(context, "token.refresh")
    assert (event.outcome, event.reason, event.principal_id, event.key_id, event.actor) == (
        "failure",
        "owner disabled",
        me["id"],
        None,
        "user:eve",
    )


async def test_tokens_carrying_a_permission_taken_away_are_refused(client, context):
    from tests.admin.support import (
        admin_request,
        admin_token,
        create_device,
        create_device_key,
        status_within,
    )
    from tests.factories import add_scope

    await add_scope(context, "projects:read")
    await add_scope(context, "projects:write")
    root = await admin_token(context, client)
    demoted = await user_token(context, client, "dora", ["admin"])
    dora = (await client.get("/me", headers=bearer(demoted))).json()["id"]
    device = await create_device(client, root, "robot", ["projects:read", "projects:write"])
    key = await create_device_key(client, root, device["id"])
    both = (await exchange(client, key["api_key"])).json()
    narrow = (await exchange(client, key["api_key"], scope="projects:read")).json()

    replica_context = AppContext(context.settings)
    replica = create_app(context=replica_context)
    async with replica.router.lifespan_context(replica), client_for(replica) as other:
        assert (await other.get("/admin/users", headers=bearer(demoted))).status_code == 200
        await admin_request(
            client, root, "PATCH", f"/admin/users/{dora}", 200, json={"permissions": []}
        )
        await admin_request(
            client,
            root,
            "PATCH",
            f"/admin/devices/{device['id']}",
            200,
            json={"permissions": ["projects:read"]},
        )
        for app_client in (client, other):  # this process at once, a replica within 5 s
            refused = await status_within(app_client, "/admin/users", demoted, 401)
            assert refused.json()["error_description"] == (
                "The access token is no longer valid: "
                "a permission it carries has since been taken away; get a new token."
            )
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
            await status_within(app_client, "/me", both["access_token"], 401)
            # A token carrying only what is still held is untouched.
            kept = await app_client.get("/me", headers=bearer(narrow["access_token"]))
            assert kept.status_code == 200
        cannot = await client.post(
            "/admin/users",
            json={"username": "mallory", "password": "long enough", "permissions": ["admin"]},
            headers=bearer(demoted),
        )
        assert cannot.status_code == 401

    introspected = await client.post(
        "/introspect", data={"token": both["access_token"]}, headers=bearer(root)
    )
    assert introspected.json() == {"active": False}
    # A process started after the change reads it from the database.
    later = create_app(context=AppContext(context.settings))
    async with later.router.lifespan_context(later), client_for(later) as fresh:
        assert (await fresh.get("/me", headers=bearer(both["access_token"]))).status_code == 401
        assert (await fresh.get("/me", headers=bearer(narrow["access_token"]))).status_code == 200
    # New tokens carry what is held now; granting the permission back restores the old ones,
    # as re-enabling an account does.
    assert (await login(client, "dora"))["scope"] == ""
    await admin_request(
        client, root, "PATCH", f"/admin/users/{dora}", 200, json={"permissions": ["admin"]}
    )
    assert (await client.get("/admin/users", headers=bearer(demoted))).status_code == 200


async def test_tokens_carrying_a_scope_their_key_lost_are_refused_everywhere(client, context):
    from tests.admin.support import status_within
    from tests.factories import add_scope

    for scope in ("projects:read", "projects:write"):
        await add_scope(context, scope)
    token = await user_token(context, client, "fern", [*PERMS, "projects:write"])
    key = await create_key(client, token, name="k", scopes=["projects:read", "projects:write"])
    other = await create_key(client, token, name="other", scopes=["projects:read"])
    both = (await exchange(client, key["api_key"])).json()
    narrow = (await exchange(client, key["api_key"], scope="projects:read")).json()
    unrelated = (await exchange(client, other["api_key"])).json()

    replica = create_app(context=AppContext(context.settings))
    async with replica.router.lifespan_context(replica), client_for(replica) as peer:
        assert (await peer.get("/me", headers=bearer(both["access_token"]))).status_code == 200
        edited = await client.patch(
            f"/api-keys/{key['id']}", json={"scopes": ["projects:read"]}, headers=bearer(token)
        )
        assert edited.status_code == 200, edited.text
        for app_client in (client, peer):
            refused = await status_within(app_client, "/me", both["access_token"], 401)
            assert refused.json()["error_description"] == (
                "The access token is no longer valid: "
                "its API key no longer has a scope it carries; get a new token."
            )
            for kept in (narrow, unrelated):
                answer = await app_client.get("/me", headers=bearer(kept["access_token"]))
                assert answer.status_code == 200
    # A process started after the edit reads the key's scopes from the database.
    later = create_app(context=AppContext(context.settings))
    async with later.router.lifespan_context(later), client_for(later) as fresh:
        assert (await fresh.get("/me", headers=bearer(both["access_token"]))).status_code == 401
        assert (await fresh.get("/me", headers=bearer(narrow["access_token"]))).status_code == 200


async def test_the_view_reloads_edited_key_scopes_from_the_database(client, context):
    from keyservice.auth.revocation import RevocationView
    from keyservice.database import utcnow
    from tests.factories import add_scope, set_key

    await add_scope(context, "projects:read")
    token = await user_token(context, client, "gus", PERMS)
    narrowed = await create_key(client, token, name="narrowed")
    inheriting = await create_key(client, token, name="inheriting", scopes=["projects:read"])
    untouched = await create_key(client, token, name="untouched", scopes=["projects:read"])
    for key, scopes in ((narrowed, ["projects:read"]), (inheriting, None)):
        edited = await client.patch(
            f"/api-keys/{key['id']}", json={"scopes": scopes}, headers=bearer(token)
        )
        assert edited.status_code == 200, edited.text

    def view() -> RevocationView:
        return RevocationView(access_token_ttl=context.settings.access_token_ttl, poll_seconds=60)

    replica = view()
    async with context.database.sessionmaker() as session:
        await replica.reload(session)
    # An inheriting key has no scopes of its own to check; an untouched one is not listed.
    assert replica.key_scopes == {narrowed["client_id"]: frozenset({"projects:read"})}
    assert untouched["client_id"] not in replica.key_scopes
    claims = {"sub": narrowed["owner_id"], "client_id": narrowed["client_id"]}
    assert replica.reason({**claims, "scope": "projects:read"}) is None
    assert "no longer has a scope" in replica.reason({**claims, "scope": "api_keys:manage"})

    # An edit made just under one access-token lifetime ago still counts: a token issued
    # before it may still be unexpired.
    lately = utcnow() - timedelta(seconds=context.settings.access_token_ttl - 5)
    await set_key(context, narrowed["id"], scopes_changed_at=lately)
    recent = view()
    async with context.database.sessionmaker() as session:
        await recent.reload(session)
    assert recent.key_scopes == {narrowed["client_id"]: frozenset({"projects:read"})}

    # An edit older than one access-token lifetime is out of the horizon: its tokens expired.
    long_ago = utcnow() - timedelta(seconds=context.settings.access_token_ttl + 120)
    await set_key(context, narrowed["id"], scopes_changed_at=long_ago)
    older = view()
    async with context.database.sessionmaker() as session:
        await older.reload(session)
    assert older.key_scopes == {}


async def test_re_enabling_does_not_bring_old_tokens_back(client, context, backend):
    from keyservice.auth.revocation import RevocationView
    from tests.admin.support import (
        admin_request,
        admin_token,
        past_revoked_second,
        refresh,
        status_within,
        token_for,
    )

    root = await admin_token(context, client)
    token = await user_token(context, client, "fay", PERMS)
    fay = (await client.get("/me", headers=bearer(token))).json()["id"]
    signed_in = await login(client, "fay")
    key = await create_key(client, token, name="ci")
    exchanged = (await exchange(client, key["api_key"])).json()
    old_access = [token, signed_in["access_token"], exchanged["access_token"]]
    old_refresh = [signed_in["refresh_token"], exchanged["refresh_token"]]

    async def introspect(app_client, value):
        response = await app_client.post("/introspect", data={"token": value}, headers=bearer(root))
        assert response.status_code == 200, response.text
        return response.json()

    replica_context = AppContext(context.settings)
    replica = create_app(context=replica_context)
    async with replica.router.lifespan_context(replica), client_for(replica) as other:
        for value in old_access:
            assert (await other.get("/me", headers=bearer(value))).status_code == 200
        for value in (True, False):
            await admin_request(
                client, root, "PATCH", f"/admin/users/{fay}", 200, json={"disabled": value}
            )
        await past_revoked_second(context, fay)
        fresh = await token_for(client, key["api_key"])
        fresh_login = await login(client, "fay")

        # This process at once, the replica within 5 s (NOTIFY on PostgreSQL, else polling).
        for app_client in (client, other):
            for value in old_access:
                refused = await status_within(app_client, "/me", value, 401)
                assert refused.json()["error_description"] == (
                    "The access token is no longer valid: "
                    "its account was disabled after it was issued; get a new token."
                )
                assert await introspect(app_client, value) == {"active": False}
            for value in old_refresh:
                assert await introspect(app_client, value) == {"active": False}
            for value in (fresh["access_token"], fresh_login["access_token"]):
                assert (await app_client.get("/me", headers=bearer(value))).status_code == 200
                assert (await introspect(app_client, value))["active"] is True
        for value in old_refresh:
            refused = await refresh(other, value)
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        assert (await refresh(other, fresh["refresh_token"])).status_code == 200
        assert (await refresh(client, fresh_login["refresh_token"])).status_code == 200
    # The key itself was never revoked: it still exchanges.
    assert (await exchange(client, key["api_key"])).status_code == 200

    # A process that only reads the database (its startup or periodic reload) refuses too.
    view = RevocationView(
        access_token_ttl=context.settings.access_token_ttl,
        poll_seconds=context.settings.revocation_poll_seconds,
    )
    async with context.database.sessionmaker() as session:
        await view.reload(session)
    for value in old_access:
        assert "disabled after" in (view.reason(context.keyring.verify(value)) or "")
    assert view.reason(context.keyring.verify(fresh["access_token"])) is None

    events = [e for e in await audit_events(context, "user.updated") if e.principal_id == fay]
    assert [e.reason for e in events] == ["disabled; 3 token session(s) ended", "enabled"]
    refusals = [e.reason for e in await audit_events(context, "token.refresh")]
    assert refusals.count("refresh token issued before the owner was disabled") == len(old_refresh)
    secrets = [*old_access, *old_refresh, key["api_key"], fresh["refresh_token"]]
    for event in await audit_events(context):
        assert not any(secret in f"{event.reason} {event.actor}" for secret in secrets)


async def test_an_owner_re_enabled_on_another_replica_works_here_again(client, context):
    """The disable was applied here at its commit, the re-enable elsewhere: this process's
    reloads must read the re-enable and not apply the disable again over it."""
    from tests.admin.support import admin_request, admin_token, status_within, token_for

    root = await admin_token(context, client)
    token = await user_token(context, client, "gil", PERMS)
    gil = (await client.get("/me", headers=bearer(token))).json()["id"]
    key = await create_key(client, token, name="ci")

    replica = create_app(context=AppContext(context.settings))
    async with replica.router.lifespan_context(replica), client_for(replica) as other:
        await admin_request(
            client, root, "PATCH", f"/admin/users/{gil}", 200, json={"disabled": True}
        )
        await admin_request(
            other, root, "PATCH", f"/admin/users/{gil}", 200, json={"disabled": False}
        )
        fresh = await token_for(other, key["api_key"])
        # Within 5 s here (NOTIFY on PostgreSQL, else the next reload), and it stays so.
        await status_within(client, "/me", fresh["access_token"], 200)
        await asyncio.sleep(3 * context.settings.revocation_poll_seconds)
        assert (await client.get("/me", headers=bearer(fresh["access_token"]))).status_code == 200


async def test_a_token_written_as_the_disable_commits_dies_at_re_enable(client, context):
    """An exchange that read its owner just before the disable committed writes a token
    the disable's family revocation did not see; re-enabling must not make it valid."""
    import time

    from keyservice.auth import service as auth_service
    from keyservice.principals.models import Principal
    from tests.admin.support import admin_request, admin_token, past_revoked_second, refresh

    root = await admin_token(context, client)
    token = await user_token(context, client, "gus", PERMS)
    gus = (await client.get("/me", headers=bearer(token))).json()["id"]
    await admin_request(client, root, "PATCH", f"/admin/users/{gus}", 200, json={"disabled": True})
    # Written late, in a second after the disable's (its family revocation ran long).
    await past_revoked_second(context, gus)
    async with context.database.sessionmaker() as session:
        owner = await session.get(Principal, gus)
    late = await auth_service.issue(
        context,
        owner=owner,
        key=None,
        scopes=frozenset(PERMS),
        caller=auth_service.Caller(ip=None),
        event="login",
    )
    assert late is not None
    assert (await client.get("/me", headers=bearer(late.access_token))).status_code == 401
    # Re-enabled in a later second than the late token's (a disable lasts longer than that).
    while time.time() < context.keyring.verify(late.access_token)["iat"] + 1:
        await asyncio.sleep(0.05)
    await admin_request(client, root, "PATCH", f"/admin/users/{gus}", 200, json={"disabled": False})
    await past_revoked_second(context, gus)

    refused = await client.get("/me", headers=bearer(late.access_token))
    assert refused.status_code == 401
    assert "disabled after it was issued" in refused.json()["error_description"]
    for value in (late.access_token, late.refresh_token):
        body = (
            await client.post("/introspect", data={"token": value}, headers=bearer(root))
        ).json()
        assert body == {"active": False}
    again = await refresh(client, late.refresh_token)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    reasons = [e.reason for e in await audit_events(context, "token.refresh")]
    assert reasons == ["refresh token issued before the owner was disabled"]
    assert (
        await client.get("/me", headers=bearer((await login(client, "gus"))["access_token"]))
    ).status_code == 200


async def test_tokens_issued_right_after_a_quick_re_enable_work(client, context):
    """Disabled and re-enabled within one second, an owner's exchange, refresh and sign-in
    answered 200 with tokens refused everywhere for good: the disable revokes its whole
    second (`iat` is whole seconds). Issuing waits for the next second instead."""
    import time

    from keyservice.principals.models import Principal, revoked_through
    from tests.admin.support import admin_request, admin_token, refresh

    root = await admin_token(context, client)
    token = await user_token(context, client, "ida", PERMS)
    ida = (await client.get("/me", headers=bearer(token))).json()["id"]
    key = await create_key(client, token, name="ci")
    before = (await exchange(client, key["api_key"])).json()
    while time.time() % 1 > 0.05:  # the start of a second: what follows stays in it
        await asyncio.sleep(0.01)
    for value in (True, False):
        path = f"/admin/users/{ida}"
        await admin_request(client, root, "PATCH", path, 200, json={"disabled": value})
    issued = [
        (await exchange(client, key["api_key"])).json(),
        await login(client, "ida"),
    ]
    async with context.database.sessionmaker() as session:
        through = revoked_through((await session.get(Principal, ida)).tokens_revoked_at)
    for tokens in issued:
        assert context.keyring.verify(tokens["access_token"])["iat"] > through
        me = await client.get("/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 200, me.text
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200
    # Those from before the disable stay refused, as ever.
    assert (await client.get("/me", headers=bearer(before["access_token"]))).status_code == 401


def test_the_cut_off_second_is_refused_whole():
    from keyservice.auth.revocation import RevocationView

    view = RevocationView(access_token_ttl=7200, poll_seconds=2)
    claims = {"sub": "p1", "iat": 1_000, "sid": "f1"}
    assert view.reason(claims) is None
    view.apply("principal-tokens:p1:1000")
    # Issued in the very second of the disable: it may predate it, so it is refused.
    assert view.reason(claims) is not None
    assert view.reason({**claims, "iat": 999}) is not None
    assert view.reason({**claims, "iat": 1_001}) is None
    assert view.reason({"sub": "p1", "sid": "f1"}) is not None  # no iat: not trusted
    assert view.reason({**claims, "sub": "p2"}) is None
    view.apply("principal-tokens:p1:990")  # an older message arriving late moves nothing
    assert view.reason(claims) is not None


async def test_a_change_arriving_while_the_view_reloads_is_kept(client, context):
    """A revocation applied while a reload's queries run (a commit here, a NOTIFY) is not
    lost when the reload replaces the sets with what it read before it committed."""
    from sqlalchemy import event

    from keyservice.auth.revocation import RevocationView

    view = RevocationView(access_token_ttl=context.settings.access_token_ttl, poll_seconds=60)
    engine = context.database.engine.sync_engine
    arrivals = iter(["client:c-during", "family:f-during"])

    def arrive(*_args) -> None:
        message = next(arrivals, None)
        if message is not None:
            view.apply(message)

    event.listen(engine, "before_cursor_execute", arrive)
    try:
        async with context.database.sessionmaker() as session:
            await view.reload(session)
    finally:
        event.remove(engine, "before_cursor_execute", arrive)
    assert view.reason({"sub": "p", "client_id": "c-during"}) is not None
    assert view.reason({"sub": "p", "sid": "f-during"}) is not None
    # Applied once more after that reload, then forgotten: the next reload reads the database.
    async with context.database.sessionmaker() as session:
        await view.reload(session)
    assert view.reason({"sub": "p", "client_id": "c-during"}) is None


async def _family_tokens(context: AppContext, client, name: str) -> tuple[dict, dict]:
    """An exchange's tokens and the claims another replica would sign for that family."""
    token = await user_token(context, client, name, PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    kept = ("sub", "scope", "principal_type", "sid", "client_id")
    return tokens, {name: claims[name] for name in kept}


# Right after `signing-keys rotate` on another replica, its tokens name a `kid` this process
# has not loaded yet: /introspect said inactive, and /revoke answered 200 having revoked
# nothing, until this process's next periodic reload of the keys.


async def test_introspect_knows_another_replicas_new_signing_key(client, context):
    admin_token = await user_token(context, client, "root", ["admin"])
    _tokens, claims = await _family_tokens(context, client, "gus")
    token = await replica_signs(context, claims)
    body = (
        await client.post("/introspect", data={"token": token}, headers=bearer(admin_token))
    ).json()
    assert body["active"] is True and body["sid"] == claims["sid"]


async def test_revoke_knows_another_replicas_new_signing_key(client, context):
    tokens, claims = await _family_tokens(context, client, "gus")
    token = await replica_signs(context, claims)
    assert (await client.post("/revoke", data={"token": token})).status_code == 200
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 401


async def test_the_view_keeps_itself_fresh_without_a_warning(client, context, caplog):
    """Polling on SQLite, LISTEN plus polling on PostgreSQL: neither warns while all is well
    (a LISTEN attempted against SQLite, or a listener opened again while one is up, would)."""
    import logging

    caplog.set_level(logging.WARNING, logger="keyservice.auth.revocation")
    token = await user_token(context, client, "hal", PERMS)
    await asyncio.sleep(5 * context.settings.revocation_poll_seconds)
    assert (await client.get("/me", headers=bearer(token))).status_code == 200
    assert [r.getMessage() for r in caplog.records if r.name.startswith("keyservice")] == []


@pytest.mark.postgresql_only  # the LISTEN connection
async def test_a_lost_listen_connection_is_opened_again(client, context):
    """A PostgreSQL restart or a proxy timeout drops the LISTEN connection; the view's loop
    opens another at its next tick rather than polling alone from then on."""

    async def listeners() -> list[int]:
        async with context.database.engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query LIKE 'LISTEN %'"
                )
            )
            return [row.pid for row in rows]

    for _ in range(100):
        first = await listeners()
        if first:
            break
        await asyncio.sleep(0.05)
    assert len(first) == 1
    async with context.database.engine.connect() as connection:
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first[0]})
    for _ in range(100):  # 5 s; the view ticks every 0.2 s here
        again = await listeners()
        if again and again != first:
            break
        await asyncio.sleep(0.05)
    assert len(again) == 1 and again != first
    # The view works on: a revocation still refuses its token here.
    token = await user_token(context, client, "ida", PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()
    assert (await client.delete(f"/api-keys/{key['id']}", headers=bearer(token))).status_code == 204
    assert (await client.get("/me", headers=bearer(tokens["access_token"]))).status_code == 401
