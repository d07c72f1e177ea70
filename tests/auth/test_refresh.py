"""grant_type=refresh_token: rotation, reuse detection, races, binding, narrowing."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import quote_plus

import pytest

from keyservice.security.tokens import new_refresh_token
from tests.auth.test_token_endpoint import basic
from tests.factories import (
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    set_key,
    user_token,
)

PERMS = ["api_keys:manage", "projects:read", "projects:write"]


async def refresh(
    client, token: str, *, data: dict[str, str] | None = None, headers=None, **extra: str
):
    form = {"grant_type": "refresh_token", "refresh_token": token, **(data or {}), **extra}
    return await client.post("/token", data=form, headers=headers)


@pytest.fixture
async def key(client, context):
    token = await user_token(context, client, "alice", PERMS)
    return await create_key(client, token, name="ci", scopes=["projects:read", "projects:write"])


async def test_refresh_rotates_and_is_single_use(client, context, key):
    first = (await exchange(client, key["api_key"])).json()
    second = await refresh(client, first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["scope"] == first["scope"]
    third = await refresh(client, body["refresh_token"])
    assert third.status_code == 200
    events = await audit_events(context, "token.refresh")
    assert [e.outcome for e in events] == ["success", "success"]
    assert all(e.key_id == key["id"] for e in events)


async def test_reuse_revokes_the_whole_family(client, context, key):
    first = (await exchange(client, key["api_key"])).json()
    second = (await refresh(client, first["refresh_token"])).json()
    # The old token comes back (stolen and replayed, say): refused, and the family dies.
    reused = await refresh(client, first["refresh_token"])
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert (await refresh(client, second["refresh_token"])).json()["error"] == "invalid_grant"
    me = await client.get("/me", headers=bearer(second["access_token"]))
    assert me.status_code == 401
    assert me.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    reuse = await audit_events(context, "token.refresh_reuse")
    assert len(reuse) == 1 and reuse[0].key_id == key["id"]
    assert reuse[0].actor == f"key:{key['client_id']}"  # as the refreshes it follows
    assert (reuse[0].outcome, reuse[0].principal_id) == ("failure", key["owner_id"])
    # Another family of the same key is untouched.
    other = (await exchange(client, key["api_key"])).json()
    assert (await client.get("/me", headers=bearer(other["access_token"]))).status_code == 200


async def test_reuse_of_a_password_sign_ins_token_names_its_user(client, context):
    bob = await create_principal(context, "bob", permissions=PERMS)
    first = await login(client, "bob")
    assert (await refresh(client, first["refresh_token"])).status_code == 200
    reused = await refresh(client, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    [event] = await audit_events(context, "token.refresh_reuse")
    assert (event.outcome, event.actor, event.principal_id, event.key_id, event.ip) == (
        "failure",
        "user:bob",
        bob.id,
        None,
        "127.0.0.1",
    )
    assert event.reason == "used refresh token presented again; family revoked"


async def test_concurrent_refreshes_have_exactly_one_winner(client, key):
    first = (await exchange(client, key["api_key"])).json()
    responses = await asyncio.gather(*(refresh(client, first["refresh_token"]) for _ in range(16)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(400) == 15, statuses
    assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code == 400)


async def test_scope_may_narrow_never_widen(client, context, key):
    first = (await exchange(client, key["api_key"], scope="projects:read")).json()
    wider = await refresh(client, first["refresh_token"], scope="projects:read projects:write")
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"
    [event] = await audit_events(context, "token.refresh")
    assert (event.outcome, event.reason, event.key_id, event.principal_id, event.actor) == (
        "failure",
        "scope not held",
        key["id"],
        key["owner_id"],
        f"key:{key['client_id']}",
    )
    # A refused request does not consume the token.
    narrowed = await refresh(client, first["refresh_token"], scope="projects:read")
    assert narrowed.status_code == 200
    assert narrowed.json()["scope"] == "projects:read"


async def test_a_narrowed_refresh_leaves_the_original_grant_to_later_refreshes(client, key):
    # RFC 6749 §6: the scope asked for at a refresh must not exceed "the scope originally
    # granted", and an omitted scope is equal to it; narrowing one access token does not
    # shrink the family's grant.
    first = (await exchange(client, key["api_key"])).json()
    assert first["scope"] == "projects:read projects:write"
    narrowed = (await refresh(client, first["refresh_token"], scope="projects:read")).json()
    assert narrowed["scope"] == "projects:read"
    again = (
        await refresh(client, narrowed["refresh_token"], scope="projects:read projects:write")
    ).json()
    assert again["scope"] == "projects:read projects:write"
    narrowed = (await refresh(client, again["refresh_token"], scope="projects:write")).json()
    omitted = await refresh(client, narrowed["refresh_token"])
    assert omitted.json()["scope"] == "projects:read projects:write"


async def test_refresh_is_bound_to_its_key(client, context, key):
    token = (await login(client, "alice"))["access_token"]
    other = await create_key(client, token, name="other")
    first = (await exchange(client, key["api_key"])).json()
    foreign = await refresh(client, first["refresh_token"], api_key=other["api_key"])
    assert foreign.status_code == 400 and foreign.json()["error"] == "invalid_grant"
    raw = f"{quote_plus(key['client_id'])}:{quote_plus(key['client_secret'])}".encode()
    own = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers={"Authorization": "Basic " + base64.b64encode(raw).decode()},
    )
    assert own.status_code == 200, own.text
    refusals = [e for e in await audit_events(context, "token.refresh") if e.outcome == "failure"]
    # The event is the token's key's; the key that presented it is its actor.
    assert [(e.reason, e.key_id, e.actor) for e in refusals] == [
        ("refresh token bound to another key", key["id"], f"key:{other['client_id']}")
    ]
    # The spent token replayed with the other key's credentials: the family is revoked, and
    # the reuse event names the key that replayed it, not the family's holder.
    replayed = await refresh(client, first["refresh_token"], api_key=other["api_key"])
    assert replayed.status_code == 400 and "already used" in replayed.json()["error_description"]
    [reuse] = await audit_events(context, "token.refresh_reuse")
    assert (reuse.key_id, reuse.actor) == (key["id"], f"key:{other['client_id']}")
    again = await refresh(client, own.json()["refresh_token"])
    assert again.status_code == 400  # the family is gone


async def test_a_refused_refresh_names_the_key_that_authenticated(client, context, key):
    # API.md: a refusal for a known client id carries that key's key_id; the token, unknown
    # or not even well-formed, names none, the credentials sent with it do.
    credentials = [
        {"data": {"api_key": key["api_key"]}},
        {"data": {"client_id": key["client_id"], "client_secret": key["client_secret"]}},
        {"headers": basic(key["client_id"], key["client_secret"])},
    ]
    for token, reason in ((new_refresh_token(), "unknown"), ("garbage", "malformed")):
        for sent in credentials:
            response = await refresh(client, token, **sent)
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "invalid_grant"
            event = (await audit_events(context, "token.refresh"))[-1]
            assert (event.outcome, event.reason, event.key_id, event.actor) == (
                "failure",
                f"{reason} refresh token",
                key["id"],
                f"key:{key['client_id']}",
            ), sent
    # Without credentials nothing names a key.
    await refresh(client, "garbage")
    event = (await audit_events(context, "token.refresh"))[-1]
    assert (event.reason, event.key_id, event.actor) == ("malformed refresh token", None, None)


async def test_wrong_credentials_are_invalid_client_whatever_the_refresh_token(
    client, context, key
):
    # Client authentication comes before the token (RFC 6749 §6): a malformed token with a
    # wrong secret is answered as an unknown or a valid one is, and the failure counted.
    first = (await exchange(client, key["api_key"])).json()
    wrong = basic(key["client_id"], "x" * 43)
    for token in ("garbage", new_refresh_token(), first["refresh_token"]):
        response = await refresh(client, token, headers=wrong)
        assert response.status_code == 401, (token[:4], response.text)
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"] == 'Basic realm="keyservice"'
        event = (await audit_events(context, "token.refresh"))[-1]
        assert (event.reason, event.key_id) == ("wrong secret", key["id"])
    # None of that spent the real token.
    assert (await refresh(client, first["refresh_token"])).status_code == 200


async def test_refresh_rechecks_key_and_ip(client, context, key):
    first = (await exchange(client, key["api_key"])).json()
    await set_key(context, key["id"], allowed_ips=["192.0.2.0/24"])
    refused = await refresh(client, first["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # The refusal names the token's key, as its exchange did, not the key's owner.
    event = (await audit_events(context, "token.refresh"))[-1]
    assert (event.outcome, event.reason, event.key_id, event.actor) == (
        "failure",
        "ip not allowed",
        key["id"],
        f"key:{key['client_id']}",
    )
    await set_key(context, key["id"], allowed_ips=["127.0.0.1/32"])
    assert (await refresh(client, first["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    "settings_overrides", [{"access_token_ttl": 1, "refresh_token_extra_ttl": 1}]
)
async def test_expired_refresh_token(client, context, settings_overrides):
    # Access tokens live one second here, and `exp` is in whole seconds: the `key`
    # fixture's user token, from a password login (argon2), could expire before its
    # POST /api-keys (an ERROR at setup, twice on a slow machine). So the key is made
    # through the service, and no access token is used before the exchange.
    from keyservice.api_keys import service as api_keys
    from keyservice.api_keys.schemas import ApiKeyCreate

    owner = await create_principal(context, "alice", permissions=PERMS)
    async with context.database.sessionmaker() as session:
        key = await api_keys.create(
            context,
            session,
            owner=owner,
            data=ApiKeyCreate(name="ci", scopes=["projects:read", "projects:write"]),
            actor="test",
            ip=None,
        )
    first = (await exchange(client, key.api_key)).json()
    assert first["expires_in"] == 1 and first["refresh_token_expires_in"] == 2
    await asyncio.sleep(2.1)
    response = await refresh(client, first["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert (await audit_events(context, "token.refresh"))[-1].reason == "refresh token expired"
    expired_jwt = await client.get("/me", headers=bearer(first["access_token"]))
    assert expired_jwt.status_code == 401


async def test_password_login_refresh(client, context):
    await user_token(context, client, "bob", PERMS)
    first = await login(client, "bob")
    second = await refresh(client, first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["scope"] == first["scope"]


async def test_refresh_is_refused_once_its_key_or_owner_row_is_gone(client, context, key):
    # Refresh tokens carry no foreign keys (migration 0003): nothing in the service deletes
    # a key or a principal, but if an operator does, the refresh path's joins must refuse.
    from sqlalchemy import text

    first = (await exchange(client, key["api_key"])).json()
    await user_token(context, client, "bob", PERMS)
    signed_in = await login(client, "bob")
    async with context.database.sessionmaker() as session:
        await session.execute(text("DELETE FROM api_key WHERE id = :k"), {"k": key["id"]})
        await session.execute(text("DELETE FROM principal WHERE name = 'bob'"))
        await session.commit()
    for token in (first["refresh_token"], signed_in["refresh_token"]):
        response = await refresh(client, token)
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    reasons = [e.reason for e in await audit_events(context, "token.refresh")]
    assert reasons[-2:] == ["key deleted", "unknown refresh token"], reasons


async def test_a_refresh_token_is_no_client_secret_and_an_api_key_no_refresh_token(client, key):
    tokens = (await exchange(client, key["api_key"])).json()
    grant = {"grant_type": "client_credentials"}
    for credentials in (
        {"client_id": key["client_id"], "client_secret": tokens["refresh_token"]},
        {"api_key": tokens["refresh_token"]},
    ):
        refused = await client.post("/token", data={**grant, **credentials})
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    for value in (key["api_key"], key["client_secret"], tokens["access_token"]):
        refused = await refresh(client, value)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # None of that spent or revoked the real refresh token.
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


async def test_a_used_refresh_token_past_its_expiry_still_revokes_its_family(client, context, key):
    # The family lives on in its newest token; the old one's own expiry does not make its
    # replay harmless (a thief who refreshed first holds that newest token).
    from datetime import timedelta

    from sqlalchemy import update

    from keyservice.auth.models import RefreshToken
    from keyservice.database import utcnow

    first = (await exchange(client, key["api_key"])).json()
    second = (await refresh(client, first["refresh_token"])).json()
    async with context.database.sessionmaker() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == context.hasher.hash(first["refresh_token"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    replayed = await refresh(client, first["refresh_token"])
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"
    assert (await refresh(client, second["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await client.get("/me", headers=bearer(second["access_token"]))).status_code == 401
    assert len(await audit_events(context, "token.refresh_reuse")) == 1
