from __future__ import annotations

from tests.factories import bearer, create_key, exchange, user_token


async def test_login_key_exchange_and_me(client, context, backend):
    token = await user_token(context, client, "alice", ["api_keys:manage", "projects:read"])
    created = await create_key(client, token, name="ci")
    response = await exchange(client, created["api_key"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "api_keys:manage projects:read"
    me = await client.get("/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["username"] == "alice"
