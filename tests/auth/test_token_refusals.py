"""POST /token's refusals at the edges: cache headers from every layer."""

from __future__ import annotations

import pytest

from tests.auth.test_token_endpoint import PERMS
from tests.factories import create_key, exchange, user_token

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CC = {"grant_type": "client_credentials"}


@pytest.fixture
async def key(client, context):
    token = await user_token(context, client, "alice", PERMS)
    return await create_key(client, token, name="ci", scopes=["projects:read"])


def assert_no_store_once(response, name: str = ""):
    assert response.headers.get_list("cache-control") == ["no-store"], name
    assert response.headers.get_list("pragma") == ["no-cache"], name


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
