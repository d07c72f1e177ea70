"""Every operation's real answers, its success and its documented refusals, hold to
/openapi.json.

The fuzz (tests/hostile/test_fuzz_openapi.py) sends random requests, which seldom get past
validation to a success, and schemathesis checks only the answers whose status the
document lists. Here each operation gets a valid request built with the factories, then
the refusals an operation of its kind documents (no token, a token without the scope, an
unknown id, an unreadable, non-JSON or invalid body, an unknown query parameter, a NUL
in the query, two Authorization headers, a conflict, too many failed attempts). Each
answer's status must be documented for its operation, its media type the documented one
(no body where none is documented), and its body must match the documented schema
(schemathesis validates it, formats included). Every operation must have been answered
with a success, and every status it documents seen (but an outage's 503).
"""

from __future__ import annotations

import collections
import functools
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
import schemathesis

from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.main import create_app
from tests.conftest import client_for, make_settings, refused_port
from tests.factories import PASSWORD, bearer, create_principal, login, set_key

METHODS = {"get", "post", "put", "patch", "delete"}
JSON = "application/json"
# Documented, and not produced here: an outage takes a setup of its own (tests/reliability).
UNSEEN = {"503"}


# A valid body for each operation with an id and a body: an unknown id is then a 404.
EDITS: dict[tuple[str, str], dict[str, Any]] = {
    ("patch", "/api-keys/{key_id}"): {"description": "edited"},
    ("post", "/api-keys/{key_id}/rotate"): {},
    ("patch", "/admin/users/{user_id}"): {"disabled": True},
    ("patch", "/admin/devices/{device_id}"): {"disabled": True},
    ("post", "/admin/devices/{device_id}/api-keys"): {"name": "k"},
    ("patch", "/admin/devices/{device_id}/api-keys/{key_id}"): {"name": "k"},
    ("post", "/admin/devices/{device_id}/api-keys/{key_id}/rotate"): {},
    ("patch", "/admin/scopes/{name}"): {"description": "d"},
}


@functools.cache
def _loaded(document: str) -> Any:
    """schemathesis's view of a document, loaded once for the module (it takes seconds)."""
    return schemathesis.openapi.from_dict(json.loads(document))


class Walk:
    """Calls the API and holds each answer to the document."""

    def __init__(self, client: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.schema = _loaded(json.dumps(document, sort_keys=True))
        self.seen: collections.defaultdict[tuple[str, str], set[str]] = collections.defaultdict(set)

    async def call(
        self, method: str, template: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        path = template.format(**kwargs.pop("ids", {}))
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers.update(bearer(token))
        response = await self.client.request(method, path, headers=headers, **kwargs)
        self.check(method.lower(), template, response)
        return response

    def check(self, method: str, template: str, response: httpx.Response) -> None:
        where = f"{method.upper()} {template} -> {response.status_code}"
        documented = self.document["paths"][template][method]["responses"]
        status = str(response.status_code)
        assert status in documented, f"{where} is not documented: {response.text}"
        content = documented[status].get("content")
        if content is None:
            assert response.content == b"", f"{where}: a body where none is documented"
        else:
            media_type = response.headers.get("content-type", "").split(";")[0]
            assert media_type in content, f"{where}: {media_type} is not documented"
            # `{}` (FastAPI's default for a handler that returns a Response) takes anything.
            assert content[media_type].get("schema"), f"{where}: the body has no schema"
        # Raises (a FailureGroup naming the mismatch) when the body does not match.
        self.schema[template][method.upper()].validate_response(response)
        self.seen[(method, template)].add(status)

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (method, path, operation)
            for path, item in self.document["paths"].items()
            for method, operation in item.items()
            if method in METHODS
        ]


@pytest.fixture
async def walk(app: Any, client: httpx.AsyncClient) -> Walk:
    return Walk(client, app.openapi())


async def successes(walk: Walk, context: Any) -> dict[str, str]:
    """A valid request to every operation; returns tokens for the refusals."""
    call = walk.call
    await create_principal(context, "conf-admin", permissions=["admin"])
    await create_principal(context, "conf-user", permissions=["api_keys:manage", "projects:read"])
    await create_principal(context, "conf-nobody", permissions=[])
    admin = (await login(walk.client, "conf-admin"))["access_token"]
    nobody = (await login(walk.client, "conf-nobody"))["access_token"]

    assert (await call("GET", "/healthz")).status_code == 200
    assert (await call("GET", "/readyz")).status_code == 200
    assert (await call("GET", "/.well-known/jwks.json")).status_code == 200
    assert (await call("GET", "/.well-known/oauth-authorization-server")).status_code == 200

    form = {"grant_type": "password", "username": "conf-user", "password": PASSWORD}
    signed_in = (await call("POST", "/token", data=form)).json()
    user = signed_in["access_token"]
    assert (await call("GET", "/me", token=user)).status_code == 200
    assert (await call("GET", "/me/token", token=user)).status_code == 200

    # The caller's own keys.
    created = await call(
        "POST", "/api-keys", token=user, json={"name": "conf key", "scopes": ["projects:read"]}
    )
    assert created.status_code == 201
    key = created.json()
    own = {"key_id": key["id"]}
    assert (await call("GET", "/api-keys", token=user)).status_code == 200
    assert (await call("GET", "/api-keys/{key_id}", token=user, ids=own)).status_code == 200
    edit = {"description": "edited"}
    assert (
        await call("PATCH", "/api-keys/{key_id}", token=user, ids=own, json=edit)
    ).status_code == 200
    exchanged = await call(
        "POST", "/token", data={"grant_type": "client_credentials", "api_key": key["api_key"]}
    )
    assert exchanged.status_code == 200
    keyed = exchanged.json()
    # Introspection: an active access token, an active refresh token, and junk.
    for value in (keyed["access_token"], keyed["refresh_token"], "junk"):
        answer = await call("POST", "/introspect", token=admin, data={"token": value})
        assert answer.status_code == 200
    refreshed = await call(
        "POST",
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": keyed["refresh_token"]},
    )
    assert refreshed.status_code == 200
    revoked = await call("POST", "/revoke", data={"token": refreshed.json()["refresh_token"]})
    assert revoked.status_code == 200
    rotated = await call(
        "POST", "/api-keys/{key_id}/rotate", token=user, ids=own, json={"grace_seconds": 0}
    )
    assert rotated.status_code == 201
    own = {"key_id": rotated.json()["id"]}
    assert (await call("DELETE", "/api-keys/{key_id}", token=user, ids=own)).status_code == 204

    # Admin: scopes, users, devices and their keys, all keys, the audit.
    scope = {"name": "conf:read", "description": "conformance"}
    assert (await call("POST", "/admin/scopes", token=admin, json=scope)).status_code == 201
    assert (await call("GET", "/admin/scopes", token=admin)).status_code == 200
    named = {"name": "conf:read"}
    assert (
        await call(
            "PATCH", "/admin/scopes/{name}", token=admin, ids=named, json={"description": "d"}
        )
    ).status_code == 200
    new_user = {"username": "conf-new", "password": PASSWORD, "permissions": ["conf:read"]}
    made = await call("POST", "/admin/users", token=admin, json=new_user)
    assert made.status_code == 201
    person = {"user_id": made.json()["id"]}
    assert (await call("GET", "/admin/users", token=admin)).status_code == 200
    assert (await call("GET", "/admin/users/{user_id}", token=admin, ids=person)).status_code == 200
    assert (
        await call(
            "PATCH", "/admin/users/{user_id}", token=admin, ids=person, json={"permissions": []}
        )
    ).status_code == 200
    device = {"name": "conf-device", "permissions": ["conf:read"]}
    made = await call("POST", "/admin/devices", token=admin, json=device)
    assert made.status_code == 201
    machine = {"device_id": made.json()["id"]}
    assert (await call("GET", "/admin/devices", token=admin)).status_code == 200
    assert (
        await call("GET", "/admin/devices/{device_id}", token=admin, ids=machine)
    ).status_code == 200
    assert (
        await call(
            "PATCH", "/admin/devices/{device_id}", token=admin, ids=machine, json={"disabled": True}
        )
    ).status_code == 200
    made = await call(
        "POST",
        "/admin/devices/{device_id}/api-keys",
        token=admin,
        ids=machine,
        json={"name": "conf device key"},
    )
    assert made.status_code == 201
    device_key = {**machine, "key_id": made.json()["id"]}
    assert (
        await call(
            "PATCH",
            "/admin/devices/{device_id}/api-keys/{key_id}",
            token=admin,
            ids=device_key,
            json={"name": "renamed"},
        )
    ).status_code == 200
    made = await call(
        "POST",
        "/admin/devices/{device_id}/api-keys/{key_id}/rotate",
        token=admin,
        ids=device_key,
        json={},
    )
    assert made.status_code == 201
    any_key = {"key_id": made.json()["id"]}
    assert (await call("GET", "/admin/api-keys", token=admin)).status_code == 200
    assert (
        await call("GET", "/admin/api-keys/{key_id}", token=admin, ids=any_key)
    ).status_code == 200
    assert (
        await call("DELETE", "/admin/api-keys/{key_id}", token=admin, ids=any_key)
    ).status_code == 204
    assert (
        await call("DELETE", "/admin/devices/{device_id}", token=admin, ids=machine)
    ).status_code == 204
    assert (await call("GET", "/admin/audit-events", token=admin)).status_code == 200
    # Last: the scope is in use until its holders are gone, and the password ends sessions.
    assert (
        await call("PATCH", "/admin/users/{user_id}", token=admin, ids=person, json={})
    ).status_code == 422
    assert (await call("DELETE", "/admin/scopes/{name}", token=admin, ids=named)).status_code in (
        204,
        409,
    )
    change = {"current_password": PASSWORD, "new_password": PASSWORD + " again"}
    assert (await call("POST", "/me/password", token=user, json=change)).status_code == 204
    user = (await login(walk.client, "conf-user", PASSWORD + " again"))["access_token"]
    return {"admin": admin, "nobody": nobody, "user": user}


async def refusals(walk: Walk, tokens: dict[str, str]) -> None:
    """The refusals every operation of its kind documents, for each operation."""
    admin = (await login(walk.client, "conf-admin"))["access_token"]
    for method, path, operation in walk.operations():
        responses = operation["responses"]
        unknown = {name: str(uuid.uuid4()) for name in ("key_id", "user_id", "device_id")}
        ids = {**unknown, "name": "conf:unknown"}
        if "security" in operation:
            await walk.call(method, path, ids=ids)
            await walk.call(method, path, ids=ids, token="not-a-jwt")
            if "403" in responses:
                await walk.call(method, path, ids=ids, token=tokens["nobody"], json={})
        if "{" in path:
            await walk.call(method, path, ids=ids, token=admin, json=EDITS.get((method, path)))
        if "requestBody" in operation and JSON in operation["requestBody"]["content"]:
            ugly = {"content-type": JSON}
            await walk.call(method, path, ids=ids, token=admin, content=b"{", headers=ugly)
            await walk.call(method, path, ids=ids, token=admin, content=b"{}", headers={})
            await walk.call(method, path, ids=ids, token=admin, json=[])
        if "security" in operation:  # refused at the edge, before any route
            twice = [("authorization", f"Bearer {admin}"), ("authorization", "Bearer x")]
            answer = await walk.client.request(method, path.format(**ids), headers=twice)
            walk.check(method, path, answer)
        if operation.get("parameters"):
            await walk.call(method, path, ids=ids, token=admin, params={"q": "\x00"})
        if "422" in responses and (operation.get("parameters") or "security" in operation):
            # A Bearer route refuses a query parameter it does not take, parameters or none.
            await walk.call(method, path, ids=ids, token=admin, params={"unexpected": "1"})
        if method == "post" and path in ("/token", "/revoke", "/introspect"):
            await walk.call(method, path, token=admin, data={"token_type_hint": "x"})
            await walk.call(method, path, token=admin, data={"unused": "x"}, params={"token": "x"})
    # The OAuth refusals of their own.
    bad_client = {"grant_type": "client_credentials", "client_id": "kc_x", "client_secret": "s"}
    await walk.call("POST", "/token", data=bad_client)
    await walk.call(
        "POST", "/revoke", data={"token": "r", "client_id": "kc_x", "client_secret": "s"}
    )
    await walk.call("POST", "/introspect", token=tokens["nobody"], data={"token": "x"})


async def conflicts(walk: Walk, context: Any, tokens: dict[str, str]) -> str:
    """A 409 from each operation that documents one, and the 403 of /me/password; returns
    the user's key's client id."""
    call, admin, user = walk.call, tokens["admin"], tokens["user"]

    async def status(*args: Any, **kwargs: Any) -> int:
        return (await call(*args, **kwargs)).status_code

    assert await status("POST", "/admin/scopes", token=admin, json={"name": "introspect"}) == 409
    builtin = {"name": "admin"}
    assert await status("DELETE", "/admin/scopes/{name}", token=admin, ids=builtin) == 409
    taken = {"username": "conf-admin", "password": PASSWORD, "permissions": []}
    assert await status("POST", "/admin/users", token=admin, json=taken) == 409
    me = {"user_id": (await call("GET", "/me", token=admin)).json()["id"]}
    disable = {"disabled": True}
    assert await status("PATCH", "/admin/users/{user_id}", token=admin, ids=me, json=disable) == 409
    made = await call("POST", "/admin/devices", token=admin, json={"name": "conf-twice"})
    assert await status("POST", "/admin/devices", token=admin, json={"name": "conf-twice"}) == 409
    device = {"device_id": made.json()["id"]}
    api_key = client_id = ""
    for owner, token, create in (
        ({}, user, "/api-keys"),
        (device, admin, "/admin/devices/{device_id}/api-keys"),
    ):
        keys = []
        for _ in range(context.settings.max_keys_per_principal):
            made = await call("POST", create, token=token, ids=owner, json={"name": "k"})
            keys.append({**owner, "key_id": made.json()["id"]})
        # One key too many; a key rotated twice; an edit of an expired key.
        assert await status("POST", create, token=token, ids=owner, json={"name": "k"}) == 409
        rotate, edit = create + "/{key_id}/rotate", create + "/{key_id}"
        rotated = await call("POST", rotate, token=token, ids=keys[0], json={})
        assert rotated.status_code == 201
        api_key = api_key or rotated.json()["api_key"]
        client_id = client_id or rotated.json()["client_id"]
        assert await status("POST", rotate, token=token, ids=keys[0], json={}) == 409
        await set_key(context, keys[1]["key_id"], expires_at=utcnow() - timedelta(seconds=1))
        late = {"name": "too late"}
        assert await status("PATCH", edit, token=token, ids=keys[1], json=late) == 409
    # An API key's token may not change the password.
    form = {"grant_type": "client_credentials", "api_key": api_key}
    keyed = (await call("POST", "/token", data=form)).json()["access_token"]
    change = {"current_password": PASSWORD, "new_password": PASSWORD + " again"}
    assert await status("POST", "/me/password", token=keyed, json=change) == 403
    return client_id


async def throttles(walk: Walk, tokens: dict[str, str], client_id: str) -> None:
    """429 from the operations that count failed attempts (API.md, throttling)."""
    wrong = {"current_password": "wrong", "new_password": PASSWORD + " again"}
    bad_client = {"client_id": client_id, "client_secret": "wrong"}
    for method, path, kwargs in (
        ("POST", "/token", {"data": {"grant_type": "client_credentials", **bad_client}}),
        ("POST", "/revoke", {"data": {"token": "r", **bad_client}}),
        ("POST", "/me/password", {"token": tokens["user"], "json": wrong}),
    ):
        statuses = [(await walk.call(method, path, **kwargs)).status_code for _ in range(12)]
        assert statuses[-1] == 429, (path, statuses)


async def test_every_answer_matches_the_document(walk: Walk, context: Any) -> None:
    tokens = await successes(walk, context)
    await refusals(walk, tokens)
    client_id = await conflicts(walk, context, tokens)
    await throttles(walk, tokens, client_id)
    missing = []
    for method, path, operation in walk.operations():
        seen = walk.seen[(method, path)]
        assert any(status.startswith("2") for status in seen), f"{method} {path}: no success"
        expected = set(operation["responses"]) - UNSEEN
        missing += [f"{method} {path} {status}" for status in sorted(expected - seen)]
    assert not missing, "documented answers never produced:\n" + "\n".join(missing)


async def test_an_outage_answers_as_documented(tmp_path: Any) -> None:
    # A database nobody listens on: /readyz's own 503 body, and the service's 503 error
    # body from an operation that reads the database (no lifespan: it would not start).
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{refused_port()}/keyservice"
    context = AppContext(make_settings(url, tmp_path))
    app = create_app(context=context)
    try:
        async with client_for(app) as http:
            walk = Walk(http, app.openapi())
            assert (await walk.call("GET", "/readyz")).status_code == 503
            metadata = await walk.call("GET", "/.well-known/oauth-authorization-server")
            assert metadata.status_code == 503
    finally:
        await context.database.dispose()
