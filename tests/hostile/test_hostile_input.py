"""Oversized, deep, badly encoded and header-stuffed requests: a 4xx JSON answer, never 5xx."""

from __future__ import annotations

import json
import re

import pytest
from fastapi import params
from fastapi.routing import APIRoute

from keyservice.main import MAX_BODY_BYTES
from tests.factories import PASSWORD, audit_events, bearer, user_token

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# Every body-taking endpoint, with the content type it expects.
ENDPOINTS = [
    ("POST", "/token", FORM),
    ("POST", "/revoke", FORM),
    ("POST", "/introspect", FORM),
    ("POST", "/api-keys", JSON),
    ("POST", "/admin/users", JSON),
    ("POST", "/admin/devices", JSON),
    ("POST", "/admin/scopes", JSON),
    ("PATCH", "/admin/users/00000000-0000-0000-0000-000000000000", JSON),
]


@pytest.fixture
async def admin_headers(client, context):
    token = await user_token(context, client, "root", ["admin"])
    return bearer(token)


def assert_json_error(response, statuses):
    assert response.status_code in statuses, (response.request.url, response.text[:200])
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str)


async def test_oversized_bodies_with_content_length(client, admin_headers):
    body = b"a" * (MAX_BODY_BYTES + 1)
    for method, path, content_type in ENDPOINTS:
        response = await client.request(
            method, path, content=body, headers={**content_type, **admin_headers}
        )
        assert_json_error(response, {413})
        assert response.json()["error"] == "request_too_large"


async def test_oversized_chunked_bodies_without_content_length(client, admin_headers):
    async def chunks():
        for _ in range(40):
            yield b"[" * 64 * 1024  # 2.5 MiB in all, never announced

    for method, path, content_type in ENDPOINTS:
        response = await client.request(
            method, path, content=chunks(), headers={**content_type, **admin_headers}
        )
        assert "content-length" not in response.request.headers
        # The token endpoints stop reading at 16 KiB of form (invalid_request); the rest
        # at the 1 MiB edge limit (413).
        assert_json_error(response, {400, 413})


@pytest.mark.parametrize("depth", [33, 1_000, 100_000])
async def test_deeply_nested_json(client, admin_headers, depth):
    nested = "[" * depth + "]" * depth
    bodies = [
        nested,
        '{"name": ' + nested + "}",
        '{"name": "k", "scopes": ' + nested + "}",
        '{"a":' * depth + "1" + "}" * depth,
    ]
    for method, path, content_type in ENDPOINTS:
        if content_type is not JSON:
            continue
        for body in bodies:
            response = await client.request(
                method, path, content=body.encode(), headers={**JSON, **admin_headers}
            )
            assert_json_error(response, {400, 404, 422})


async def test_unreadable_json_is_400_in_words_without_the_body(client, admin_headers):
    secret = "s3cr3t-" + "q" * 30
    deep = "[" * 100_000 + "]" * 100_000
    cases = [
        (b"{", "Expecting property name enclosed in double quotes at line 1 column 2"),
        (b'{"name": "k",\n "scopes": [1,]}', "Expecting value at line 2 column 15"),
        (f'{{"password": "{secret}" "x"}}'.encode(), "Expecting ',' delimiter at line 1 column"),
        (f'{{"name": {deep}}}'.encode(), None),
        (f'{{"name": "k", "a": "{secret}", "scopes": {deep}}}'.encode(), None),
        (b'{"name": "\xff"}', None),
        # json's own message ends in "at": said once.
        (b'{"name": "k", "description": "\x01"}', "Invalid control character at line 1 column 31"),
        (b'{"name": "k', "Unterminated string starting at line 1 column 10"),
        # More digits than Python converts (sys.get_int_max_str_digits): a plain ValueError.
        (b'{"name": "k", "grace_seconds": ' + b"1" * 5000 + b"}", None),
    ]
    for method, path, content_type in ENDPOINTS:
        if content_type is not JSON:
            continue
        for body, position in cases:
            response = await client.request(
                method, path, content=body, headers={**JSON, **admin_headers}
            )
            assert response.status_code == 400, (path, body[:40], response.text[:200])
            answer = response.json()
            assert answer["error"] == "invalid_request" and set(answer) == {
                "error",
                "error_description",
            }
            description = answer["error_description"]
            if position is not None:
                assert description == f"The body is not valid JSON: {position}." or (
                    description.startswith(f"The body is not valid JSON: {position} ")
                ), description
            elif b"[[[" in body:
                assert description == "The body is nested too deeply."
            elif b"1" * 5000 in body:
                assert description == (
                    "The body has a number too long to read: more than 4300 digits."
                )
            else:
                assert description == "The body is not valid JSON: it is not UTF-8 text."
            assert secret not in response.text


async def test_a_number_too_long_to_read_is_400_in_words_and_rotates_nothing(client, context):
    """Python refuses int() of more than 4,300 digits with a plain ValueError, which FastAPI
    answered with its generic "There was an error parsing the body"."""
    owner = bearer(await user_token(context, client, "rita"))
    key = (await client.post("/api-keys", json={"name": "ci"}, headers=owner)).json()
    body = b'{"grace_seconds": ' + b"1" * 5000 + b"}"
    response = await client.post(
        f"/api-keys/{key['id']}/rotate", content=body, headers={**JSON, **owner}
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "invalid_request",
        "error_description": "The body has a number too long to read: more than 4300 digits.",
    }
    listed = (await client.get("/api-keys", headers=owner)).json()["items"]
    assert [(item["id"], item["status"], item["expires_at"]) for item in listed] == [
        (key["id"], "valid", key["expires_at"])
    ]


async def test_invalid_utf8_json(client, admin_headers):
    bodies = [
        b'{"name": "\xff\xfe"}',
        b'{"name": "\xc3\x28"}',
        b'{"name": "\xed\xa0\x80"}',  # an encoded surrogate
        b'{"name": "\\ud800"}',  # a lone surrogate escape
        b"\xef\xbb\xbf" + b'{"name": "bom"}',
        '{"name": "x"}'.encode("utf-16"),
        b'{"name": "\\u0000"}',
        b'{"name": "a\x00b"}',
        b'{"name": 1e999999}',
        b'{"name": "' + b"9" * 5000 + b'"}',
        b"[" + b"1," * 100_000 + b"1]",
        b"",
        b"null",
        b"{",
    ]
    for method, path, content_type in ENDPOINTS:
        if content_type is not JSON:
            continue
        for body in bodies:
            response = await client.request(
                method, path, content=body, headers={**JSON, **admin_headers}
            )
            assert response.status_code < 500, (path, body[:40], response.text[:200])
            assert response.headers["content-type"].startswith("application/json")


async def test_invalid_utf8_forms(client):
    for path in ("/token", "/revoke"):
        for body in (b"token=\xff\xfe", b"grant_type=%FF", b"token=%C3%28", b"\xc3"):
            response = await client.post(path, content=body, headers=FORM)
            assert_json_error(response, {400})
            assert response.json()["error"] == "invalid_request"


async def test_a_form_with_too_many_fields_says_so(client, context):
    """parse_qsl's max_num_fields ValueError was caught with the decode errors: a valid
    form of 51 fields was 'not valid UTF-8 form encoding'."""
    introspector = bearer(await user_token(context, client, "ivan", ["introspect"]))
    fields = ["grant_type=client_credentials", "token=x"]
    too_many = "&".join(fields + [f"f{i}=1" for i in range(60)]).encode()
    at_limit = "&".join(fields + [f"f{i}=1" for i in range(48)]).encode()
    for path, headers in (("/token", {}), ("/revoke", {}), ("/introspect", introspector)):
        response = await client.post(path, content=too_many, headers={**FORM, **headers})
        assert response.status_code == 400, (path, response.text)
        assert response.json() == {
            "error": "invalid_request",
            "error_description": "The body has too many parameters: at most 50 are allowed.",
        }
        # 50 fields are read, and refused (or not) for what they say.
        response = await client.post(path, content=at_limit, headers={**FORM, **headers})
        assert "too many" not in response.text and "UTF-8" not in response.text, response.text
    # A bad %-escape is still an encoding error.
    response = await client.post("/token", content=b"grant_type=%FF", headers=FORM)
    assert response.json()["error_description"] == "The body is not valid UTF-8 form encoding."


async def test_json_where_form_expected_and_form_where_json_expected(client, admin_headers):
    response = await client.post("/token", content=b'{"grant_type": "password"}', headers=JSON)
    assert_json_error(response, {400})
    assert response.json()["error"] == "invalid_request"
    response = await client.post("/api-keys", content=b"name=x", headers={**FORM, **admin_headers})
    assert_json_error(response, {415})


@pytest.mark.parametrize(
    "content_type",
    [
        FORM,  # what `curl -d '{...}'` sends
        {"Content-Type": "text/plain"},
        {},  # what `requests.post(url, data=json.dumps(...))` sends: no type at all
    ],
)
async def test_a_json_body_without_the_json_content_type_is_415_in_words(
    client, admin_headers, content_type
):
    body = {
        "/api-keys": {"name": "k"},
        "/admin/users": {"username": "u", "password": "long enough password"},
        "/admin/devices": {"name": "d"},
        "/admin/scopes": {"name": "s"},
    }
    for method, path, expected in ENDPOINTS:
        if expected is not JSON:
            continue
        response = await client.request(
            method,
            path,
            content=json.dumps(body.get(path, {"disabled": True})).encode(),
            headers={**content_type, **admin_headers},
        )
        assert_json_error(response, {415})
        assert response.json() == {
            "error": "unsupported_media_type",
            "error_description": "The body must be JSON, sent with Content-Type: "
            "application/json; this request declared another type or none.",
        }
    # Nothing was created.
    assert (await client.get("/api-keys", headers=admin_headers)).json()["items"] == []
    for path in ("/admin/users", "/admin/devices"):
        listed = (await client.get(path, headers=admin_headers)).json()["items"]
        assert [item.get("username", item.get("name")) for item in listed] in ([], ["root"])
    # Authentication is still checked first, and JSON variants are JSON.
    anonymous = await client.post("/api-keys", content=b"name=x", headers=FORM)
    assert anonymous.status_code == 401
    merge = {"Content-Type": "application/merge-patch+json; charset=utf-8"}
    created = await client.post(
        "/api-keys", content=b'{"name": "k"}', headers={**merge, **admin_headers}
    )
    assert created.status_code == 201, created.text


async def test_huge_and_numerous_headers_are_431(client):
    response = await client.get("/healthz", headers={"X-Big": "a" * 40_000})
    assert_json_error(response, {431})
    many = {f"X-H{i}": "v" for i in range(150)}
    response = await client.get("/healthz", headers=many)
    assert_json_error(response, {431})
    assert (await client.get("/healthz", headers={"X-Ok": "a" * 4000})).status_code == 200


async def test_nul_in_path_and_query_is_invalid_request(client, admin_headers):
    for url in ("/admin/users/%00", "/admin/api-keys?owner_id=%00", "/api-keys/a%00b"):
        response = await client.get(url, headers=admin_headers)
        assert_json_error(response, {400})


async def test_errors_never_echo_the_input(client, admin_headers):
    secret = "s3cr3t-" + "q" * 30
    response = await client.post(
        "/admin/users",
        content=json.dumps({"username": "x", "password": {"nested": secret}}).encode(),
        headers={**JSON, **admin_headers},
    )
    assert response.status_code == 422
    assert secret not in response.text


async def test_a_validators_refusal_reads_in_its_own_words(client, admin_headers):
    """Not pydantic's "Value error, ..." in front of the sentence the schema wrote."""
    response = await client.post(
        "/api-keys",
        json={"name": "k", "scopes": [], "allowed_ips": ["10.0.0.1/8"]},
        headers=admin_headers,
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_description"] == (
        "scopes: give at least one scope, or omit scopes to inherit permissions"
    )
    assert [detail["msg"] for detail in body["details"]] == [
        "give at least one scope, or omit scopes to inherit permissions",
        "10.0.0.1/8 has host bits set: write 10.0.0.0/8 for the network or 10.0.0.1/32 "
        "for the one address",
    ]


async def test_an_empty_scope_name_is_refused_as_empty_not_as_an_unknown_scope(
    client, admin_headers
):
    """An empty string among permissions or scopes (a template left blank, a trailing comma
    split) was an unknown scope, quoted as "1 more not quoted, as it may be a secret" after
    nothing, and the admin was told to add it to the scope catalog."""
    device = await client.post(
        "/admin/devices", json={"name": "d-1", "permissions": []}, headers=admin_headers
    )
    refusals = [
        ("POST", "/admin/devices", {"name": "d-2", "permissions": ["admin", ""]}, "permissions.1"),
        ("PATCH", f"/admin/devices/{device.json()['id']}", {"permissions": [""]}, "permissions.0"),
        ("POST", "/admin/users", {"username": "u", "password": "x" * 12, "permissions": [""]},
         "permissions.0"),
        ("POST", "/api-keys", {"name": "k", "scopes": [""]}, "scopes.0"),
    ]  # fmt: skip
    for method, path, body, field in refusals:
        response = await client.request(method, path, json=body, headers=admin_headers)
        assert response.status_code == 422, response.text
        assert response.json()["error_description"] == (
            f"{field}: String should have at least 1 character"
        ), (path, response.text)


async def test_a_key_given_twice_in_a_json_object_is_422_naming_it(client, context, admin_headers):
    """JSON leaves a repeated key's meaning open and Python keeps the last value: the body
    `{"scopes": ["a"], "scopes": null}` made an inheriting key. Refused, at any depth."""
    owner = await user_token(context, client, "rita")
    key = (await client.post("/api-keys", json={"name": "ci"}, headers=bearer(owner))).json()
    device = (
        await client.post("/admin/devices", json={"name": "edge-1"}, headers=admin_headers)
    ).json()
    unknown = "00000000-0000-0000-0000-000000000000"
    # Every JSON body endpoint; the body is refused before the route looks at the id.
    endpoints = [
        *[(method, path) for method, path, content_type in ENDPOINTS if content_type is JSON],
        ("PATCH", f"/api-keys/{key['id']}"),
        ("POST", f"/api-keys/{key['id']}/rotate"),
        ("PATCH", f"/admin/devices/{device['id']}"),
        ("POST", f"/admin/devices/{device['id']}/api-keys"),
        ("PATCH", f"/admin/devices/{device['id']}/api-keys/{unknown}"),
        ("POST", f"/admin/devices/{device['id']}/api-keys/{unknown}/rotate"),
        ("PATCH", "/admin/scopes/api_keys:manage"),
        ("POST", "/me/password"),
    ]
    secret = "ksk_" + "Q" * 16 + "_" + "s" * 49
    cases = [
        ('{"name": "k", "scopes": ["a"], "scopes": null}', [["body", "scopes"]]),
        ('{"name": "k", "name": "k"}', [["body", "name"]]),
        (
            '{"name": "k", "x": {"a": 1, "b": [{"c": 1, "c": 2}], "a": 2}}',
            [["body", "x", "a"], ["body", "x", "b", 0, "c"]],
        ),
        (f'{{"{secret}": 1, "{secret}": 2}}', [["body", "(not quoted)"]]),
    ]
    for method, path in endpoints:
        for body, locations in cases:
            caller = bearer(owner) if path.startswith(("/api-keys", "/me")) else admin_headers
            response = await client.request(
                method, path, content=body.encode(), headers={**JSON, **caller}
            )
            assert response.status_code == 422, (method, path, body, response.text)
            answer = response.json()
            assert answer["error"] == "validation_error"
            assert [detail["loc"] for detail in answer["details"]] == locations
            assert {detail["type"] for detail in answer["details"]} == {"json_duplicate_key"}
            where = ".".join(str(part) for part in locations[0][1:])
            assert answer["error_description"] == (
                f"{where}: given more than once in the same object; send each key once "
                "(JSON does not say which of the values would count)"
            )
            assert secret not in response.text
    # Nothing was created or changed.
    listed = (await client.get("/api-keys", headers=bearer(owner))).json()["items"]
    assert [(item["name"], item["scopes"]) for item in listed] == [("ci", None)]
    devices = (await client.get("/admin/devices", headers=admin_headers)).json()["items"]
    assert [item["name"] for item in devices] == ["edge-1"]
    # The same keys once each are fine, and the form-encoded token endpoint is untouched:
    # a JSON body there is still its own invalid_request.
    created = await client.post(
        "/api-keys", content=b'{"name": "k", "scopes": ["api_keys:manage"]}',
        headers={**JSON, **bearer(owner)},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    token = await client.post(
        "/token", content=b'{"grant_type": "password", "grant_type": "x"}', headers=JSON
    )
    assert token.status_code == 400 and token.json()["error"] == "invalid_request"


# The routes with query parameters: the admin lists and their filters.
LISTS = {
    "/admin/users": ["cursor", "limit", "username"],
    "/admin/devices": ["cursor", "limit", "name"],
    "/admin/api-keys": ["client_id", "cursor", "limit", "owner_id", "owner_type", "status"],
    "/admin/audit-events": ["cursor", "key_id", "limit", "principal_id", "since", "type"],
}


async def test_a_query_parameter_given_twice_is_422_naming_it(app, client, admin_headers):
    """FastAPI keeps a repeated query parameter's last value: `?type=login&type=x` listed
    only the second type of audit event, where the caller may have meant both or the first."""
    # Every route with a query parameter is here: a new one is checked or this fails.
    declared = {
        route.path: sorted(field.alias for field in route.dependant.query_params)
        for route in app.routes
        if getattr(route, "dependant", None) is not None and route.dependant.query_params
    }
    assert declared == LISTS
    for path, names in LISTS.items():
        for name in names:
            response = await client.get(f"{path}?{name}=1&limit=5&{name}=2", headers=admin_headers)
            assert response.status_code == 422, (path, name, response.text)
            answer = response.json()
            assert answer["error"] == "validation_error"
            assert answer["details"] == [
                {
                    "loc": ["query", name],
                    "type": "query_repeated",
                    "msg": "given more than once in the query string; send each parameter "
                    "once (which of the values would count is a guess)",
                }
            ]
        # Once is as before (a parameter it does not take: the next test).
        fine = await client.get(f"{path}?limit=5", headers=admin_headers)
        assert fine.status_code == 200, (path, fine.text)
        assert all(
            detail["type"] != "query_repeated" for detail in fine.json().get("details", [])
        ), (path, fine.text)
    both = await client.get(
        "/admin/audit-events?type=a&limit=1&limit=2&type=b", headers=admin_headers
    )
    # Each named once, in the order the repeats came.
    assert [detail["loc"] for detail in both.json()["details"]] == [
        ["query", "limit"],
        ["query", "type"],
    ]


async def test_a_query_parameter_the_endpoint_does_not_take_is_422_naming_it(
    client, context, admin_headers
):
    """FastAPI ignored a query parameter the route does not read: a misspelt filter,
    `GET /admin/api-keys?ownerid=...`, listed every key of every owner, which a script
    revoking "that owner's keys" would then have revoked. It is refused, as a JSON body's
    unknown field is, after authentication."""
    owner = await user_token(context, client, "rita")
    await client.post("/api-keys", json={"name": "ci"}, headers=bearer(owner))
    owner_id = (await client.get("/me", headers=bearer(owner))).json()["id"]
    await client.post("/admin/devices", json={"name": "edge-1"}, headers=admin_headers)
    url = f"/admin/api-keys?ownerid={owner_id}&limit=5"
    refused = await client.get(url, headers=admin_headers)
    assert refused.status_code == 422, refused.text
    answer = refused.json()
    assert answer["details"] == [
        {
            "loc": ["query", "ownerid"],
            "type": "query_unknown",
            "msg": "not a query parameter of this endpoint, which takes client_id, cursor, "
            "limit, owner_id, owner_type, status",
        }
    ]
    assert answer["error_description"].startswith("query.ownerid: not a query parameter")
    # The filter spelt right filters.
    listed = await client.get(f"/admin/api-keys?owner_id={owner_id}", headers=admin_headers)
    assert listed.status_code == 200
    assert [item["name"] for item in listed.json()["items"]] == ["ci"]
    # Authentication first: no token is a 401, whatever the query.
    anonymous = await client.get(url)
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
    # A made-up name that is no field name is not quoted back (it may be anything).
    odd = await client.get("/admin/users?ksk_" + "A" * 40 + "=1", headers=admin_headers)
    assert odd.status_code == 422
    assert odd.json()["details"][0]["loc"] == ["query", "(not quoted)"]
    assert "ksk_" not in odd.text
    # Unknown and repeated together: each named once, in the order they came.
    both = await client.get(
        "/admin/audit-events?kind=a&type=a&kind=b&type=b", headers=admin_headers
    )
    assert [(d["loc"][1], d["type"]) for d in both.json()["details"]] == [
        ("kind", "query_unknown"),
        ("type", "query_repeated"),
    ]


async def test_a_query_on_a_bearer_route_that_takes_none_is_422_naming_it(
    app, client, context, admin_headers
):
    """Only the lists refused a query parameter they do not take; every other Bearer route
    ignored it: `GET /api-keys?status=revoked` listed every key of the caller's, and a
    script acting on "the filtered list" acted on all of them; and
    `POST /api-keys?name=x` made a key as if the query were not there."""
    from keyservice.dependencies import get_current_principal

    def calls(dependant):
        for sub in dependant.dependencies:
            yield sub.call
            yield from calls(sub)

    # Every route that needs a token, but the OAuth endpoint with rules of its own.
    protected = sorted(
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and get_current_principal in calls(route.dependant)
        for method in route.methods
    )
    assert ("POST", "/introspect") in protected and ("GET", "/me/token") in protected
    protected.remove(("POST", "/introspect"))
    assert len(protected) >= 25
    none = "00000000-0000-0000-0000-000000000000"
    for method, path in protected:
        url = re.sub(r"\{[^}]*\}", none, path) + "?stray=1&stray=2"
        response = await client.request(method, url, headers=admin_headers)
        assert response.status_code == 422, (method, path, response.text)
        [detail] = response.json()["details"]
        assert detail["loc"] == ["query", "stray"], (method, path)
        assert detail["type"] == "query_unknown", (method, path)
        if path not in LISTS:  # the lists name what they take (the test above)
            assert detail["msg"] == "not a query parameter of this endpoint, which takes none"
    # The caller's keys, "filtered": refused, not all listed; nothing made by a query.
    owner = await user_token(context, client, "quinn", ["api_keys:manage"])
    await client.post("/api-keys", json={"name": "live"}, headers=bearer(owner))
    listed = await client.get("/api-keys?status=revoked", headers=bearer(owner))
    assert listed.status_code == 422, listed.text
    assert listed.json()["error_description"].startswith("query.status: not a query parameter")
    made = await client.post("/api-keys?name=x", json={"name": "y"}, headers=bearer(owner))
    assert made.status_code == 422, made.text
    names = [
        key["name"]
        for key in (await client.get("/api-keys", headers=bearer(owner))).json()["items"]
    ]
    assert names == ["live"]
    # The direct route too, and HEAD as its GET.
    assert (await client.get("/me/token?x=1", headers=bearer(owner))).status_code == 422
    assert (await client.head("/me/token?x=1", headers=bearer(owner))).status_code == 422
    assert (await client.get("/me/token", headers=bearer(owner))).status_code == 200
    # Authentication and authorization first: 401 without a token, 403 without the right.
    anonymous = await client.get("/me?x=1")
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
    plain = await client.get("/admin/scopes?x=1", headers=bearer(owner))
    assert plain.status_code == 403, plain.text
    # Not the public endpoints, the OAuth ones (rules of their own), docs or the console.
    for method, url, status in [
        ("GET", "/healthz?probe=1", 200),
        ("GET", "/readyz?probe=1", 200),
        ("GET", "/.well-known/jwks.json?v=2", 200),
        ("GET", "/.well-known/oauth-authorization-server?v=2", 200),
        ("GET", "/openapi.json?v=2", 200),
        ("GET", "/docs?v=2", 200),
        ("GET", "/console/login?session=signed-out", 200),
        ("GET", "/console/static/console.css?v=2", 200),
    ]:
        response = await client.request(method, url)
        assert response.status_code == status, (url, response.text[:200])
    token = await client.post(
        "/token?v=2", data={"grant_type": "password", "username": "quinn", "password": PASSWORD}
    )
    assert token.status_code == 200, token.text
    revoked = await client.post("/revoke?v=2", data={"token": token.json()["refresh_token"]})
    assert revoked.status_code == 200, revoked.text
    inspector = await user_token(context, client, "ines", ["introspect"])
    described = await client.post(
        "/introspect?v=2", data={"token": token.json()["access_token"]}, headers=bearer(inspector)
    )
    assert described.status_code == 200, described.text


async def test_an_ambiguous_request_is_authenticated_and_authorized_first(
    client, context, admin_headers
):
    """A repeated JSON key or query parameter was refused before the route's authentication:
    a 422 without `WWW-Authenticate` to a caller with no token, where any other bad input
    gets the 401, and no audit event for an admin's refused change, as every other 422 of
    a caller with a valid token has."""
    body = b'{"username": "eve", "password": "correct horse", "password": "battery staple"}'
    requests = [
        ("POST", "/admin/users", body),
        ("POST", "/api-keys", b'{"name": "a", "name": "b"}'),
        ("GET", "/admin/audit-events?limit=1&limit=2", None),
        ("GET", "/admin/api-keys?status=valid&status=revoked", None),
    ]
    for method, path, content in requests:
        for headers in ({}, {"Authorization": "Bearer garbage"}):
            response = await client.request(
                method, path, content=content, headers={**JSON, **headers}
            )
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
    # A valid token without the permission: 403, as for the same request asked once.
    plain = await user_token(context, client, "pat", ["introspect"])
    for method, path, content in requests:
        response = await client.request(
            method, path, content=content, headers={**JSON, **bearer(plain)}
        )
        assert response.status_code == 403, (path, response.text)
    # The admin's ambiguous change is a 422, audited as a refused change; nothing is made.
    response = await client.post("/admin/users", content=body, headers={**JSON, **admin_headers})
    assert response.status_code == 422, response.text
    assert [d["type"] for d in response.json()["details"]] == ["json_duplicate_key"]
    refused = await audit_events(context, "user.created", outcome="failure")
    assert [event.actor for event in refused] == ["user:pat", "user:root"]  # the 403, the 422
    users = (await client.get("/admin/users", headers=admin_headers)).json()["items"]
    assert "eve" not in [user["username"] for user in users]


async def test_text_shown_to_others_holds_no_control_or_direction_characters(
    client, context, admin_headers
):
    """A key's name with a line break forged a line in a terminal's listing, ESC a terminal
    escape, U+202E showed "exe.jpg" as "gpj.exe": names and descriptions are shown to
    others (lists, the console, the CLI, audit readers), so such characters are refused (a
    NUL anywhere is the edge's 400)."""
    owner = await user_token(context, client, "olga", ["api_keys:manage"])
    for bad in ("two\nlines", "esc\x1b[31m", "del\x7f", "c1\x85", "ltr\u202eexe.jpg",
                "iso\u2066x", "line\u2028sep"):  # fmt: skip
        response = await client.post("/api-keys", json={"name": bad}, headers=bearer(owner))
        assert response.status_code == 422, (bad, response.text)
        code = next(c for c in bad if not c.isalnum() and c not in ".[")
        assert f"U+{ord(code):04X}" in response.json()["error_description"], bad
    # A description keeps tabs and line breaks, not the rest.
    made = await client.post(
        "/api-keys",
        json={"name": "ci", "description": "line one\r\nline two\ttabbed"},
        headers=bearer(owner),
    )
    assert made.status_code == 201, made.text
    assert made.json()["description"] == "line one\r\nline two\ttabbed"
    refused = [
        ("PATCH", f"/api-keys/{made.json()['id']}", bearer(owner), {"description": "a\x1bb"}),
        ("PATCH", f"/api-keys/{made.json()['id']}", bearer(owner), {"name": "a\u202db"}),
        ("POST", "/admin/devices", admin_headers, {"name": "box", "description": "\u2067x"}),
        ("POST", "/admin/scopes", admin_headers, {"name": "x:y", "description": "a\x08b"}),
    ]
    for method, path, headers, body in refused:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["details"][0]["type"] == "hidden_character"
    # Nothing was stored or changed.
    listed = (await client.get("/api-keys", headers=bearer(owner))).json()["items"]
    assert [(k["name"], k["description"]) for k in listed] == [
        ("ci", "line one\r\nline two\ttabbed")
    ]
    assert (await client.get("/admin/devices", headers=admin_headers)).json()["items"] == []


# A body FastAPI cannot read, with the refusal an authorized caller gets for it.
UNREADABLE = {
    "syntax": (
        b'{"name": "k",',
        JSON,
        400,
        "The body is not valid JSON: Expecting property name enclosed in double quotes at "
        "line 1 column 14.",
    ),
    "nested": (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "The body is nested too deeply."),
    "not utf-8": (
        b'{"name": "\xff"}',
        JSON,
        400,
        "The body is not valid JSON: it is not UTF-8 text.",
    ),
    "long number": (
        b'{"name": ' + b"1" * 5000 + b"}",
        JSON,
        400,
        "The body has a number too long to read: more than 4300 digits.",
    ),
    # FastAPI reads these two (no body, bytes) and refuses them after the dependencies:
    # in order already, and kept so.
    "empty": (b"", JSON, 422, "body: Field required"),
    "not json": (
        b'{"name": "k"}',
        {"Content-Type": "text/plain"},
        415,
        "The body must be JSON, sent with Content-Type: application/json; "
        "this request declared another type or none.",
    ),
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
async def test_an_unreadable_body_is_authenticated_and_authorized_first(
    client, context, admin_headers, kind
):
    """FastAPI parses a JSON body before it solves the route's dependencies: a body it
    could not read was a 400 to a caller with no token, a bad one or one without the
    permission, where any other request gets the 401 or 403, and an admin's refused change
    was not audited. Only an authorized caller learns what is wrong with the body."""
    content, content_type, status, description = UNREADABLE[kind]
    owner = bearer(await user_token(context, client, "rita"))
    key = (await client.post("/api-keys", json={"name": "ci"}, headers=owner)).json()
    user = (await client.get("/admin/users?username=rita", headers=admin_headers)).json()
    user_id = user["items"][0]["id"]
    plain = bearer(await user_token(context, client, "pat", ["introspect"]))
    # (method, path, the authorized caller, its name in the audit log, the event type)
    routes = [
        ("POST", "/api-keys", owner, "user:rita", "api_key.created"),
        ("PATCH", f"/api-keys/{key['id']}", owner, "user:rita", "api_key.updated"),
        ("POST", "/admin/users", admin_headers, "user:root", "user.created"),
        ("PATCH", f"/admin/users/{user_id}", admin_headers, "user:root", "user.updated"),
    ]
    for method, path, caller, actor, event in routes:
        for headers, error in (({}, "unauthorized"), (bearer("garbage"), "invalid_token")):
            response = await client.request(
                method, path, content=content, headers={**content_type, **headers}
            )
            assert response.status_code == 401, (method, path, headers, response.text[:200])
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"] == error
        response = await client.request(
            method, path, content=content, headers={**content_type, **plain}
        )
        assert response.status_code == 403, (method, path, response.text[:200])
        assert response.json()["error"] == "insufficient_scope"
        response = await client.request(
            method, path, content=content, headers={**content_type, **caller}
        )
        assert response.status_code == status, (method, path, response.text[:200])
        assert response.json()["error_description"] == description
        refused = await audit_events(context, event, outcome="failure")
        assert [(e.actor, e.reason.split(":")[0]) for e in refused][-2:] == [
            ("user:pat", "refused (403)"),
            (actor, f"refused ({status})"),
        ], (method, path)
        assert refused[-1].reason == f"refused ({status}): {description}"
    # Nothing was made or changed.
    listed = (await client.get("/api-keys", headers=owner)).json()["items"]
    assert [(item["name"], item["description"]) for item in listed] == [("ci", key["description"])]
    users = (await client.get("/admin/users", headers=admin_headers)).json()["items"]
    assert sorted(user["username"] for user in users) == ["pat", "rita", "root"]


async def test_every_json_route_authenticates_before_it_reads_the_body(app, client):
    """Each route with a JSON body, found in the app's table (a new one is checked too):
    a body that does not parse, sent without a valid token, is the 401 for the token."""
    routes = [
        (method, re.sub(r"\{[^}]*\}", "00000000-0000-0000-0000-000000000000", route.path))
        for route in app.routes
        if isinstance(route, APIRoute)
        and route.body_field is not None
        and not isinstance(route.body_field.field_info, params.Form)
        for method in route.methods
    ]
    assert ("POST", "/admin/users") in routes and len(routes) >= 13
    for method, path in routes:
        for headers in ({}, bearer("garbage")):
            response = await client.request(
                method, path, content=b'{"name": ', headers={**JSON, **headers}
            )
            assert response.status_code == 401, (method, path, response.text[:200])
            assert response.headers["www-authenticate"].startswith("Bearer")
