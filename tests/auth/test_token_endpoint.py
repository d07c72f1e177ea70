"""POST /token: the three client authentication methods and every row of API.md's error table."""

from __future__ import annotations

import base64
from datetime import timedelta
from urllib.parse import quote_plus, urlencode

import pytest

from keyservice.database import utcnow
from tests.factories import (
    PASSWORD,
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    set_key,
    set_principal,
    user_token,
)

PERMS = ["api_keys:manage", "projects:read", "projects:write"]


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def assert_no_store(response):
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def assert_error(response, status: int, error: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    assert_no_store(response)


@pytest.fixture
async def key(client, context):
    token = await user_token(context, client, "alice", PERMS)
    return await create_key(client, token, name="ci", scopes=["projects:read", "projects:write"])


async def test_exchange_with_each_auth_method(client, key):
    by_api_key = await exchange(client, key["api_key"])
    by_post = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": key["client_id"],
            "client_secret": key["client_secret"],
        },
    )
    by_basic = await client.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers=basic(key["client_id"], key["client_secret"]),
    )
    for response in (by_api_key, by_post, by_basic):
        assert response.status_code == 200, response.text
        assert_no_store(response)
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 7200
        assert body["refresh_token_expires_in"] == 10800
        assert body["scope"] == "projects:read projects:write"
        assert body["refresh_token"].startswith("ksr_")


async def test_scope_narrowing_and_unheld_scope(client, context, key):
    narrowed = await exchange(client, key["api_key"], scope="projects:read")
    assert narrowed.status_code == 200
    assert narrowed.json()["scope"] == "projects:read"

    refused = await exchange(client, key["api_key"], scope="projects:read billing:write")
    assert_error(refused, 400, "invalid_scope")
    assert "billing:write" in refused.json()["error_description"]
    events = await audit_events(context, "token.exchange")
    assert events[-1].outcome == "failure"
    assert events[-1].reason == "scope not held"
    assert events[-1].key_id == key["id"]
    assert events[-1].actor == f"key:{key['client_id']}"


async def test_a_key_scoped_admin_may_ask_for_the_built_ins_admin_implies(client, context):
    # API.md: `admin` implies the other built-ins, "which then count as held". A key scoped
    # ["admin"] asking for `introspect` alone (least privilege) was refused invalid_scope,
    # while an inheriting key of the same admin could ask for it.
    token = await user_token(context, client, "ada", ["admin"])
    key = await create_key(client, token, name="admin-only", scopes=["admin"])
    whole = (await exchange(client, key["api_key"])).json()
    assert whole["scope"] == "admin"  # unrequested, the token carries the key's scopes
    narrowed = await exchange(client, key["api_key"], scope="introspect")
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scope"] == "introspect"
    # The narrowed token is what it says: /introspect yes, /admin no.
    access = narrowed.json()["access_token"]
    response = await client.post("/introspect", data={"token": access}, headers=bearer(access))
    assert response.status_code == 200 and response.json()["active"] is True
    assert (await client.get("/admin/users", headers=bearer(access))).status_code == 403
    # A refresh of the whole grant may narrow the same way, never past `admin`'s reach.
    again = await client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": whole["refresh_token"],
            "scope": "api_keys:manage",
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["scope"] == "api_keys:manage"
    assert_error(
        await exchange(client, key["api_key"], scope="projects:read"), 400, "invalid_scope"
    )
    # Without `admin` held by the owner any more, nothing it implied is held either.
    me = (await client.get("/me", headers=bearer(token))).json()
    await set_principal(context, me["id"], permissions=["introspect"])
    assert_error(await exchange(client, key["api_key"], scope="introspect"), 400, "invalid_scope")


async def test_a_malformed_scope_is_invalid_scope_at_every_grant(client, context, key):
    # RFC 6749 §5.2: invalid_scope is for a scope "invalid, unknown, malformed, or exceeds
    # the scope granted"; characters §3.3 forbids make it malformed.
    refresh_token = (await exchange(client, key["api_key"])).json()["refresh_token"]
    grants = {
        "token.exchange": {"grant_type": "client_credentials", "api_key": key["api_key"]},
        "token.refresh": {"grant_type": "refresh_token", "refresh_token": refresh_token},
        "login": {"grant_type": "password", "username": "alice", "password": PASSWORD},
    }
    for event_type, form in grants.items():
        for scope in ('projects:read "x', "projects:read\\x", "proj\u00e9cts"):
            response = await client.post("/token", data={**form, "scope": scope})
            assert_error(response, 400, "invalid_scope")
            assert "RFC 6749 section 3.3" in response.json()["error_description"]
            event = (await audit_events(context, event_type))[-1]
            assert (event.outcome, event.reason) == ("failure", "malformed scope"), event_type
        # A scope sent twice is a duplicated parameter, whatever its value.
        twice = await client.post(
            "/token",
            content=urlencode([*form.items(), ("scope", "projects:read"), ("scope", '"x')]),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_error(twice, 400, "invalid_request")
        assert "more than once" in twice.json()["error_description"]
    # Nothing was spent: the refresh token still works.
    refreshed = await client.post("/token", data=grants["token.refresh"])
    assert refreshed.status_code == 200, refreshed.text


async def test_token_scope_follows_owner_permissions(client, context):
    token = await user_token(context, client, "bob", PERMS)
    inheriting = await create_key(client, token, name="inherits")
    assert inheriting["scopes"] is None and inheriting["inherits_permissions"] is True
    before = (await exchange(client, inheriting["api_key"])).json()
    assert before["scope"] == " ".join(sorted(PERMS))
    me = (await client.get("/me", headers=bearer(token))).json()
    await set_principal(context, me["id"], permissions=["api_keys:manage", "projects:read"])
    body = (await exchange(client, inheriting["api_key"])).json()
    assert body["scope"] == "api_keys:manage projects:read"
    # Asking for a permission the owner no longer holds is refused, with the reason audited.
    response = await exchange(client, inheriting["api_key"], scope="projects:write")
    assert_error(response, 400, "invalid_scope")
    event = (await audit_events(context, "token.exchange"))[-1]
    assert (event.outcome, event.reason) == ("failure", "scope not held")


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {
                "grant_type": "client_credentials",
                "client_id": "kc_0000000000000000",
                "client_secret": "x" * 43,
            },
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials", "api_key": "ksk_not_a_key"}, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, 400, "invalid_request"),
        ({"grant_type": "jwt-bearer"}, 400, "unsupported_grant_type"),
        ({"scope": "x"}, 400, "invalid_request"),
        ({"grant_type": "refresh_token"}, 400, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "ksr_nope"}, 400, "invalid_grant"),
        (
            {"grant_type": "password", "username": "ghost", "password": "whatever1"},
            400,
            "invalid_grant",
        ),
        ({"grant_type": "password", "username": "ghost"}, 400, "invalid_request"),
    ],
)
async def test_error_table_without_a_key(client, form, status, error):
    response = await client.post("/token", data=form)
    assert_error(response, status, error)


async def test_wrong_secret_and_unknown_client_look_the_same(client, context, key):
    wrong = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": key["client_id"],
            "client_secret": "A" * 43,
        },
    )
    unknown = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "kc_ZZZZZZZZZZZZZZZZ",
            "client_secret": "A" * 43,
        },
    )
    assert_error(wrong, 401, "invalid_client")
    assert_error(unknown, 401, "invalid_client")
    assert wrong.json() == unknown.json()
    events = await audit_events(context, "token.exchange")
    # The wrong secret's event names the key tried, its owner and its (public) client id.
    assert [(e.reason, e.key_id, e.principal_id, e.actor) for e in events[-2:]] == [
        ("wrong secret", key["id"], key["owner_id"], f"key:{key['client_id']}"),
        ("unknown client", None, None, None),
    ]


async def test_basic_failure_carries_www_authenticate(client, key):
    response = await client.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers=basic(key["client_id"], "B" * 43),
    )
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")
    form = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": key["client_id"],
            "client_secret": "B" * 43,
        },
    )
    assert "www-authenticate" not in form.headers


async def test_mistyped_key_is_refused_by_checksum(client, key):
    api_key = key["api_key"]
    typo = api_key[:-8] + ("a" if api_key[-8] != "a" else "b") + api_key[-7:]
    response = await exchange(client, typo)
    assert_error(response, 401, "invalid_client")


@pytest.mark.parametrize("used_before", [False, True], ids=["unused", "used-before"])
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("revoked", "key revoked"),
        ("expired", "key expired"),
        ("suspended", "owner disabled"),
        ("ip", "ip not allowed"),
    ],
)
async def test_unusable_keys_are_invalid_client_with_precise_audit(
    client, context, key, change, reason, used_before
):
    # used_before: a key that has already been exchanged (its last-used time written, its
    # row read by this process) is refused as promptly as one never used.
    for _ in range(2 if used_before else 0):
        assert (await exchange(client, key["api_key"])).status_code == 200
    if change == "revoked":
        me = await client.delete(
            f"/api-keys/{key['id']}", headers=bearer((await login(client, "alice"))["access_token"])
        )
        assert me.status_code == 204
    elif change == "expired":
        await set_key(context, key["id"], expires_at=utcnow() - timedelta(seconds=1))
    elif change == "suspended":
        await set_principal(context, key["owner_id"], disabled=True)
    else:
        await set_key(context, key["id"], allowed_ips=["10.0.0.0/8"])
    response = await exchange(client, key["api_key"])
    assert_error(response, 401, "invalid_client")
    # A caller holding the right key is told what is wrong with the key or its address;
    # an owner's disable stays generic. The audit trail has the precise reason every time.
    told = {"revoked": "was deleted", "expired": "expired at", "ip": "not in its allowed IPs"}
    description = response.json()["error_description"]
    if change in told:
        assert told[change] in description
    else:
        assert description == "Client authentication failed."
    event = (await audit_events(context, "token.exchange"))[-1]
    assert (event.outcome, event.reason, event.key_id, event.actor) == (
        "failure",
        reason,
        key["id"],
        f"key:{key['client_id']}",
    )


@pytest.mark.parametrize("settings_overrides", [{"throttle_client_failures": 2}])
async def test_refusals_of_an_unusable_key_count_towards_its_lockout(client, context, key):
    # Whoever holds an expired key's secret gets its outcome, each time a failed attempt:
    # past the client's limit they are throttled like any other.
    await set_key(context, key["id"], expires_at=utcnow() - timedelta(seconds=1))
    for _ in range(2):
        assert_error(await exchange(client, key["api_key"]), 401, "invalid_client")
    assert_error(await exchange(client, key["api_key"]), 429, "slow_down")


async def test_invalid_request_cases(client, key):
    api_key = key["api_key"]
    duplicated = await client.post(
        "/token",
        content=f"grant_type=client_credentials&api_key={api_key}&api_key={api_key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(duplicated, 400, "invalid_request")
    assert "more than once" in duplicated.json()["error_description"]

    two_methods = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "api_key": api_key,
            "client_id": key["client_id"],
            "client_secret": key["client_secret"],
        },
    )
    assert_error(two_methods, 400, "invalid_request")

    basic_and_form = await client.post(
        "/token",
        data={"grant_type": "client_credentials", "api_key": api_key},
        headers=basic(key["client_id"], key["client_secret"]),
    )
    assert_error(basic_and_form, 400, "invalid_request")

    in_query = await client.post(
        f"/token?api_key={api_key}", data={"grant_type": "client_credentials"}
    )
    assert_error(in_query, 400, "invalid_request")

    empty = await client.post(
        "/token", content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_error(empty, 400, "invalid_request")

    as_json = await client.post("/token", json={"grant_type": "client_credentials"})
    assert_error(as_json, 400, "invalid_request")

    bad_utf8 = await client.post(
        "/token",
        content=b"grant_type=client_credentials&api_key=%ff%fe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(bad_utf8, 400, "invalid_request")

    # A request without what its grant needs is told what to send.
    no_key = await client.post("/token", data={"grant_type": "client_credentials"})
    assert_error(no_key, 400, "invalid_request")
    assert no_key.json()["error_description"].startswith("client_credentials needs the key: ")
    no_token = await client.post("/token", data={"grant_type": "refresh_token"})
    assert_error(no_token, 400, "invalid_request")
    assert no_token.json()["error_description"] == "refresh_token is missing."


async def test_password_grant(client, context):
    carol = await create_principal(
        context, "carol", permissions=["api_keys:manage", "projects:read"]
    )
    body = await login(client, "carol", scope="projects:read")
    assert body["scope"] == "projects:read"
    wrong = await client.post(
        "/token", data={"grant_type": "password", "username": "carol", "password": "nope-nope"}
    )
    assert_error(wrong, 400, "invalid_grant")
    disabled = await create_principal(context, "dave", disabled=True)
    refused = await client.post(
        "/token",
        data={
            "grant_type": "password",
            "username": "dave",
            "password": "correct horse battery staple",
        },
    )
    assert_error(refused, 400, "invalid_grant")
    assert refused.json() == wrong.json()
    unknown = await client.post(
        "/token", data={"grant_type": "password", "username": "nobody", "password": "nope-nope"}
    )
    assert unknown.json() == wrong.json()
    # The same answer; the audit log says which, and on whose account a password was tried.
    reasons = [
        (e.reason, e.principal_id, e.actor)
        for e in await audit_events(context, "login", outcome="failure")
    ]
    assert reasons == [
        ("wrong password", carol.id, None),
        ("user disabled", disabled.id, "user:dave"),
        ("unknown username", None, None),
    ]


@pytest.mark.parametrize("settings_overrides", [{"password_grant_enabled": False}])
async def test_password_grant_can_be_switched_off(client, context, settings_overrides):
    await create_principal(context, "erin")
    response = await client.post(
        "/token",
        data={
            "grant_type": "password",
            "username": "erin",
            "password": "correct horse battery staple",
        },
    )
    assert_error(response, 400, "unsupported_grant_type")


async def test_sunset_header_for_keys_expiring_soon(client, context):
    token = await user_token(context, client, "frank", PERMS)
    soon = await create_key(
        client, token, name="soon", expires_at=(utcnow() + timedelta(days=3)).isoformat()
    )
    later = await create_key(client, token, name="later")
    response = await exchange(client, soon["api_key"])
    assert response.status_code == 200
    assert response.headers["sunset"].endswith("GMT")
    assert "sunset" not in (await exchange(client, later["api_key"])).headers


async def test_throttle_locks_one_client_not_others(client, context, key):
    other_token = await user_token(context, client, "gina", PERMS)
    other = await create_key(client, other_token, name="other")
    for _ in range(context.settings.throttle_client_failures):
        await client.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "client_id": key["client_id"],
                "client_secret": "C" * 43,
            },
        )
    locked = await exchange(client, key["api_key"])
    assert_error(locked, 429, "slow_down")
    assert int(locked.headers["retry-after"]) >= 1
    assert (await exchange(client, other["api_key"])).status_code == 200


async def test_client_hanging_up_mid_body_is_not_a_server_error(app, caplog):
    """A load generator stopping mid-request must not log tracebacks."""
    messages = iter(
        [
            {"type": "http.request", "body": b"grant_type=client_", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict] = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/token", "raw_path": b"/token", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("keyservice.test", 80),
        "headers": [(b"content-type", b"application/x-www-form-urlencoded"),
                    (b"host", b"keyservice.test")],
    }  # fmt: skip
    with caplog.at_level("DEBUG", logger="keyservice"):
        await app(scope, receive, send)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert sent[0]["status"] < 500
