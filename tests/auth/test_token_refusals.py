"""POST /token's refusals at the edges: cache headers from every layer, an audit event for
every refusal of a known grant, no secret echoed, and the grant type checked first."""

from __future__ import annotations

import base64
import re

import pytest

from keyservice.audit.models import AuditEvent
from tests.auth.test_token_endpoint import PERMS, assert_error, basic
from tests.factories import audit_events, bearer, create_key, exchange, user_token

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CC = {"grant_type": "client_credentials"}


@pytest.fixture
async def key(client, context):
    token = await user_token(context, client, "alice", PERMS)
    return await create_key(client, token, name="ci", scopes=["projects:read"])


def basic_raw(raw: bytes | str) -> dict[str, str]:
    raw = raw.encode() if isinstance(raw, str) else raw
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def assert_no_store_once(response, name: str = ""):
    assert response.headers.get_list("cache-control") == ["no-store"], name
    assert response.headers.get_list("pragma") == ["no-cache"], name


async def last_event(context, type: str):
    return (await audit_events(context, type))[-1]


def assert_no_secret(key, *texts):
    """Neither the secret nor any 8 characters of it (a truncated leak is a leak too)."""
    secret = key["client_secret"]
    for text in texts:
        text = str(text)
        assert not any(secret[i : i + 8] in text for i in range(len(secret) - 7)), text


# 1. Cache-Control: no-store and Pragma: no-cache on every answer, whatever layer gives it.


async def test_every_answer_of_the_oauth_endpoints_is_no_store(client, context, key):
    chunks = [b"grant_type=client_credentials&scope=", b"a" * (1024 * 1024)]

    async def chunked():  # no Content-Length: refused while the body streams in
        for chunk in chunks:
            yield chunk

    exchanged = await exchange(client, key["api_key"])
    answers = {
        "exchange": exchanged,
        "error": await client.post("/token", data={"grant_type": "nope"}),
        "NUL in the body": await client.post(
            "/token", content=b"grant_type=client_credentials&api_key=%00", headers=FORM
        ),
        "NUL in the query": await client.post("/token?x=%00", data=CC),
        "too large": await client.post("/token", content=b"a" * (1024 * 1024 + 1), headers=FORM),
        "too large, streamed": await client.post("/token", content=chunked(), headers=FORM),
        "headers too large": await client.post(
            "/token", data=CC, headers={f"x-pad-{i}": "p" * 400 for i in range(90)}
        ),
        "GET /token": await client.get("/token"),
        "revoke": await client.post("/revoke", data={"token": exchanged.json()["refresh_token"]}),
        "GET /revoke": await client.get("/revoke"),
        "introspect": await client.post("/introspect", data={"token": "x"}),
        "GET /introspect": await client.get("/introspect"),
    }
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "exchange": 200,
        "error": 400,
        "NUL in the body": 400,
        "NUL in the query": 400,
        "too large": 413,
        "too large, streamed": 413,
        "headers too large": 431,
        "GET /token": 405,
        "revoke": 200,
        "GET /revoke": 405,
        "introspect": 401,
        "GET /introspect": 405,
    }
    for name, response in answers.items():
        assert_no_store_once(response, name)
        assert response.headers["x-content-type-options"] == "nosniff", name
    # Other paths are left to their routes.
    assert "cache-control" not in (await client.get("/healthz")).headers


# 2. Every refusal of a known grant is an event with its precise reason.


async def test_malformed_basic_is_audited(client, context, key):
    # A known client id without its ':secret' still names its key in the event.
    for header, key_id in (
        ({"Authorization": "Basic %%%"}, None),
        (basic_raw(key["client_id"]), key["id"]),
    ):
        response = await client.post("/token", data=CC, headers=header)
        assert_error(response, 401, "invalid_client")
        event = await last_event(context, "token.exchange")
        assert (event.outcome, event.reason, event.key_id) == (
            "failure",
            "malformed basic credentials",
            key_id,
        )


async def test_basic_is_strict_base64_with_a_client_id(client, context, key):
    # Valid credentials with a stray non-base64 character are refused, not decoded past it;
    # an empty client id is malformed too, not an unknown client.
    good = base64.b64encode(f"{key['client_id']}:{key['client_secret']}".encode()).decode()
    cases = {
        "Basic " + good[:8] + "*" + good[8:]: (
            "The Basic credentials are not valid base64 of client_id:client_secret."
        ),
        basic_raw(":" + key["client_secret"])["Authorization"]: (
            "The Basic credentials must have the form client_id:client_secret."
        ),
    }
    for header, description in cases.items():
        response = await client.post("/token", data=CC, headers={"Authorization": header})
        assert_error(response, 401, "invalid_client")
        assert response.json()["error_description"] == description
        assert response.headers["www-authenticate"] == 'Basic realm="keyservice"'
        event = await last_event(context, "token.exchange")
        assert (event.outcome, event.reason, event.key_id) == (
            "failure",
            "malformed basic credentials",
            None,
        )


async def test_an_authorization_header_of_another_scheme_is_not_client_authentication(
    client, context, key
):
    # Only a Basic header authenticates a client or names one; another scheme's value is
    # neither parsed as Basic credentials nor read for a client id, even when it happens
    # to be base64 of one.
    named = {"Authorization": "Bearer " + basic_raw(key["client_id"])["Authorization"][6:]}
    ok = await client.post("/token", data={**CC, "api_key": key["api_key"]}, headers=named)
    assert ok.status_code == 200, ok.text
    refused = await client.post("/token", data=CC, headers=named)
    assert_error(refused, 400, "invalid_request")
    event = await last_event(context, "token.exchange")
    assert (event.outcome, event.key_id, event.actor) == ("failure", None, None)


@pytest.mark.parametrize("settings_overrides", [{"throttle_ip_failures": 3}])
async def test_malformed_basic_counts_for_the_ip_throttle(client, context, key):
    for _ in range(3):
        response = await client.post("/token", data=CC, headers={"Authorization": "Basic %%%"})
        assert_error(response, 401, "invalid_client")
    assert_error(await exchange(client, key["api_key"]), 429, "slow_down")
    # Past the limit a malformed header is throttled like any other failed authentication.
    again = await client.post("/token", data=CC, headers={"Authorization": "Basic %%%"})
    assert_error(again, 429, "slow_down")
    event = await last_event(context, "token.exchange")
    assert (event.outcome, event.reason) == ("failure", "throttled")


async def test_refusals_of_the_request_form_are_audited(client, context, key):
    api_key, client_id = key["api_key"], key["client_id"]
    cases = [
        (
            "token.exchange",
            {"data": {**CC, "api_key": api_key, "client_id": client_id,
                      "client_secret": key["client_secret"]}},
            "two client authentication methods",
            key["id"],
        ),
        (
            "token.exchange",
            {"data": {**CC, "api_key": api_key},
             "headers": basic(client_id, key["client_secret"])},
            "two client authentication methods",
            key["id"],
        ),
        (
            "token.exchange",
            {"content": f"grant_type=client_credentials&api_key={api_key}&api_key=x",
             "headers": FORM},
            "parameter repeated",
            key["id"],
        ),
        ("token.exchange", {"data": {**CC, "client_id": client_id}}, "client secret missing",
         key["id"]),
        ("token.exchange", {"data": {**CC, "client_secret": key["client_secret"]}},
         "client id missing", None),
        ("token.exchange", {"data": CC, "params": {"api_key": api_key}},
         "credentials in the query", key["id"]),
        ("token.exchange", {"data": CC}, "no client credentials", None),
        ("token.exchange", {"data": {**CC, "api_key": api_key, "scope": "a\\b"}},
         "malformed scope", key["id"]),
        ("token.refresh", {"data": {"grant_type": "refresh_token"}}, "refresh token missing",
         None),
        ("login", {"data": {"grant_type": "password", "username": "alice"}},
         "username or password missing", None),
        ("login", {"data": {"grant_type": "password", "username": "alice", "password": "pw",
                            "api_key": api_key}},
         "client credentials sent", key["id"]),
    ]  # fmt: skip
    for event_type, request, reason, key_id in cases:
        response = await client.post("/token", **request)
        assert response.status_code == 400, (reason, response.text)
        event = await last_event(context, event_type)
        assert (event.outcome, event.reason, event.key_id) == ("failure", reason, key_id)
        assert event.actor == (f"key:{client_id}" if key_id else None)
        assert_no_secret(key, event.reason, event.actor)


async def test_malformed_client_authentication_at_revoke_is_audited(client, context, key):
    refresh_token = (await exchange(client, key["api_key"])).json()["refresh_token"]
    client_id = key["client_id"]
    cases = [
        ({"headers": {"Authorization": "Basic %%%"}}, 401, "malformed basic credentials", None),
        ({"headers": basic_raw(client_id)}, 401, "malformed basic credentials", key["id"]),
        ({"data": {"client_id": client_id}}, 400, "client secret missing", key["id"]),
        (
            {"data": {"api_key": key["api_key"]},
             "headers": basic(client_id, key["client_secret"])},
            400,
            "two client authentication methods",
            key["id"],
        ),
    ]  # fmt: skip
    for request, status, reason, key_id in cases:
        data = {"token": refresh_token, **request.pop("data", {})}
        response = await client.post("/revoke", data=data, **request)
        assert response.status_code == status, (reason, response.text)
        event = await last_event(context, "token.revoke")
        assert (event.outcome, event.reason, event.key_id) == ("failure", reason, key_id)
        assert_no_secret(key, event.reason, event.actor, response.text)
    # Refused before anything was revoked: the refresh token still works.
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )
    assert refreshed.status_code == 200, refreshed.text


async def refused_in_the_query(
    context, type_: str, key_id: str | None, params: object
) -> AuditEvent:
    """The last `type_` event, checked to be the refusal of credentials in the query that
    names `key_id`."""
    event = await last_event(context, type_)
    assert (event.outcome, event.reason, event.key_id) == (
        "failure",
        "credentials in the query",
        key_id,
    ), params
    return event


async def test_credentials_in_the_query_are_audited_with_the_key_they_name(client, context, key):
    # Refused whatever they are, but a known client named in the query is a refusal for
    # that key (API.md); an api_key's client id counts only if its checksum holds.
    client_id, secret, api_key = key["client_id"], key["client_secret"], key["api_key"]
    mistyped = api_key[:-1] + ("A" if api_key[-1] != "A" else "B")
    cases = [
        (CC, {"api_key": api_key}, key["id"]),
        (CC, {"client_id": client_id, "client_secret": secret}, key["id"]),
        (CC, {"client_id": client_id}, key["id"]),
        ({"grant_type": "refresh_token", "refresh_token": "x"}, {"client_id": client_id},
         key["id"]),
        ({"grant_type": "password", "username": "alice", "password": "pw"},
         {"api_key": api_key}, key["id"]),
        (CC, {"api_key": mistyped}, None),
        (CC, {"client_id": "kc_0000000000000000", "client_secret": secret}, None),
        (CC, {"client_secret": secret}, None),
    ]  # fmt: skip
    events = {"client_credentials": "token.exchange", "refresh_token": "token.refresh",
              "password": "login"}  # fmt: skip
    for data, params, key_id in cases:
        response = await client.post("/token", data=data, params=params)
        assert_error(response, 400, "invalid_request")
        event = await refused_in_the_query(context, events[data["grant_type"]], key_id, params)
        assert (event.principal_id is not None) == (key_id is not None)
        assert event.actor == (f"key:{client_id}" if key_id else None)
        assert_no_secret(key, event.reason, event.actor, response.text)


async def test_credentials_in_the_query_of_revoke_and_introspect_are_audited(client, context, key):
    """/revoke and /introspect refused credentials in the URL without an event, where
    /token records one: the URL is in proxy logs by then, and the admin must learn which
    key leaked so. The event names the key the query names (else the Basic header's at
    /revoke), never a secret; at /introspect the caller is the verified Bearer token's."""
    client_id, secret, api_key = key["client_id"], key["client_secret"], key["api_key"]
    tokens = (await exchange(client, api_key)).json()
    inspector = await user_token(context, client, "ines", ["introspect"])
    cases = [
        ({"api_key": api_key}, {}, key["id"]),
        ({"client_id": client_id, "client_secret": secret}, {}, key["id"]),
        ({"token": tokens["refresh_token"]}, {}, None),
        ({"token": tokens["refresh_token"]}, basic(client_id, secret), key["id"]),
        ({"client_id": "kc_0000000000000000", "client_secret": secret}, {}, None),
    ]
    for params, headers, key_id in cases:
        data = {"token": tokens["refresh_token"]}
        response = await client.post("/revoke", data=data, params=params, headers=headers)
        assert_error(response, 400, "invalid_request")
        event = await refused_in_the_query(context, "token.revoke", key_id, params)
        assert (event.principal_id is not None) == (key_id is not None)
        assert event.actor == (f"key:{client_id}" if key_id else None)
        assert_no_secret(key, event.reason, event.actor, response.text)
        assert tokens["refresh_token"] not in f"{event.reason} {event.actor}"
    for params, _, key_id in cases[:3]:
        data = {"token": tokens["access_token"]}
        response = await client.post(
            "/introspect", data=data, params=params, headers=bearer(inspector)
        )
        assert_error(response, 400, "invalid_request")
        event = await refused_in_the_query(context, "token.introspect", key_id, params)
        assert event.actor == "user:ines"
        assert_no_secret(key, event.reason, event.actor, response.text)
    assert len(await audit_events(context, "token.introspect")) == 3
    # Nothing was revoked by the refused requests: the refresh token still works.
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    # Without the permission, /introspect is the 403 it was, and records no such event.
    plain = await user_token(context, client, "pat")
    forbidden = await client.post(
        "/introspect", data={"token": "x"}, params={"api_key": api_key}, headers=bearer(plain)
    )
    assert forbidden.status_code == 403
    assert len(await audit_events(context, "token.introspect")) == 3


@pytest.mark.parametrize("settings_overrides", [{"throttle_ip_failures": 3}])
async def test_malformed_basic_at_revoke_counts_for_the_ip_throttle(client, context, key):
    for _ in range(3):
        response = await client.post(
            "/revoke", data={"token": "x"}, headers={"Authorization": "Basic %%%"}
        )
        assert_error(response, 401, "invalid_client")
    assert_error(await exchange(client, key["api_key"]), 429, "slow_down")


async def test_no_event_and_no_lookup_for_an_unknown_grant_type(client, context, key):
    before = len(await audit_events(context))
    response = await client.post(
        "/token", data={"grant_type": "nope", "api_key": key["api_key"]}, params={"password": "x"}
    )
    assert_error(response, 400, "unsupported_grant_type")
    assert len(await audit_events(context)) == before


# 3. No secret, not even a part of one, in an error message.


async def test_a_key_pasted_into_scope_is_not_echoed(client, key):
    response = await exchange(client, key["api_key"], scope=key["api_key"])
    assert_error(response, 400, "invalid_scope")
    description = response.json()["error_description"]
    assert_no_secret(key, description)
    assert key["client_id"][3:] not in description
    assert "requested scope" in description
    # A scope name next to it is still named.
    mixed = await exchange(client, key["api_key"], scope=f"billing:write {key['client_secret']}")
    assert "billing:write" in mixed.json()["error_description"]
    assert_no_secret(key, mixed.json()["error_description"])


async def test_a_double_encoded_body_is_not_echoed(client, key):
    api_key = key["api_key"]
    as_grant_type = await client.post(
        "/token", content=f"grant_type=client_credentials%26api_key%3D{api_key}", headers=FORM
    )
    assert_error(as_grant_type, 400, "unsupported_grant_type")
    as_names = await client.post(
        "/token",
        content=f"grant_type=client_credentials&api_key%3D{api_key}&api_key%3D{api_key}",
        headers=FORM,
    )
    assert_error(as_names, 400, "invalid_request")
    for response in (as_grant_type, as_names):
        assert_no_secret(key, response.text)
        assert key["client_id"][3:] not in response.text
    # What looks like a name is still quoted.
    for grant_type in ("jwt-bearer", "urn:ietf:params:oauth:grant-type:jwt-bearer"):
        named = await client.post("/token", data={"grant_type": grant_type})
        assert f"'{grant_type}'" in named.json()["error_description"]
    repeated = await client.post(
        "/token", content="grant_type=client_credentials&scope=a&scope=b", headers=FORM
    )
    assert "'scope'" in repeated.json()["error_description"]


# 4. The grant type is checked first.


async def test_unknown_grant_type_is_answered_before_anything_else(client, key):
    cases = [
        {"content": "grant_type=foo&x=1&x=2", "headers": FORM},
        {"data": {"grant_type": "foo"}, "params": {"api_key": key["api_key"]}},
        {"data": {"grant_type": "foo"}, "headers": {"Authorization": "Basic %%%"}},
        {"data": {"grant_type": "foo", "api_key": "a", "client_id": "b", "client_secret": "c"}},
    ]
    for request in cases:
        assert_error(await client.post("/token", **request), 400, "unsupported_grant_type")


@pytest.mark.parametrize("settings_overrides", [{"password_grant_enabled": False}])
async def test_switched_off_password_grant_is_answered_first(client):
    response = await client.post(
        "/token",
        data={"grant_type": "password", "username": "a", "password": "b"},
        headers={"Authorization": "Basic %%%"},
    )
    assert_error(response, 400, "unsupported_grant_type")
    assert "switched off" in response.json()["error_description"]


# 5. What an error says is in the characters RFC 6749 §5.2 allows.

# error and error_description: %x20-21 / %x23-5B / %x5D-7E, so no quote, backslash or
# non-ASCII character; clients may put them in a header or a log line verbatim.
OAUTH_ERROR_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


async def test_error_texts_use_only_the_characters_rfc_6749_allows(client, context, key):
    token = await user_token(context, client, "olga", PERMS + ["introspect"])
    spent = (await exchange(client, key["api_key"])).json()["refresh_token"]
    assert (await client.post("/revoke", data={"token": spent})).status_code == 200
    api_key = key["api_key"]
    answers = {
        "scope syntax": await exchange(client, api_key, scope='projects:read "x"'),
        "scope tab": await exchange(client, api_key, scope="projects:read\tx"),
        "scope non-ASCII": await exchange(client, api_key, scope="proj\u00e9ts"),
        "scope not held": await exchange(client, api_key, scope="billing:write a!#$%&'()*"),
        "grant type": await client.post("/token", data={"grant_type": "nope"}),
        "no grant type": await client.post("/token", data={"scope": "x"}),
        "repeated": await client.post(
            "/token", content="grant_type=client_credentials&scope=a&scope=b", headers=FORM
        ),
        "query": await client.post("/token", data=CC, params={"api_key": api_key}),
        "not a form": await client.post("/token", json=CC),
        "not UTF-8": await client.post("/token", content=b"grant_type=%ff", headers=FORM),
        "malformed basic": await client.post("/token", data=CC, headers=basic_raw(b"\xff:x")),
        "no credentials": await client.post("/token", data=CC),
        "wrong secret": await client.post(
            "/token", data=CC, headers=basic(key["client_id"], "x" * 43)
        ),
        "refresh unknown": await client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": "ksr_nope"}
        ),
        "refresh spent": await client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": spent}
        ),
        "password": await client.post(
            "/token", data={"grant_type": "password", "username": "olga", "password": "no"}
        ),
        "revoke without token": await client.post("/revoke", data={"x": "y"}),
        "introspect without token": await client.post(
            "/introspect", data={"x": "y"}, headers=bearer(token)
        ),
    }
    for name, response in answers.items():
        assert response.status_code in (400, 401), (name, response.text)
        body = response.json()
        assert OAUTH_ERROR_TEXT.fullmatch(body["error"]), name
        assert OAUTH_ERROR_TEXT.fullmatch(body["error_description"]), (name, body)
