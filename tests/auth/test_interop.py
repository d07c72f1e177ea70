"""Stock OAuth 2.0 clients, last-used tracking, and NOTIFY-driven revocation."""

from __future__ import annotations

import asyncio
import time
import warnings

import authlib.deprecate  # noqa: F401, E402  (installs a global "always" filter on import)
import pytest
from httpx import ASGITransport

with warnings.catch_warnings():
    # authlib 1.9 steers users to its httpx2 integration and forces the notice on; its
    # httpx client is what stock users run and what we check interoperability with.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

from keyservice.context import AppContext
from keyservice.main import create_app
from tests.conftest import client_for
from tests.factories import bearer, create_key, exchange, user_token

PERMS = ["api_keys:manage", "projects:read"]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_client_gets_tokens_unchanged(app, client, context, method):
    token = await user_token(context, client, "alice", PERMS)
    key = await create_key(client, token, name="authlib", scopes=["projects:read"])
    async with AsyncOAuth2Client(
        client_id=key["client_id"],
        client_secret=key["client_secret"],
        token_endpoint_auth_method=method,
        transport=ASGITransport(app=app, client=("127.0.0.1", 50001)),
        base_url="http://keyservice.test",
    ) as oauth:
        tokens = await oauth.fetch_token(
            "http://keyservice.test/token", grant_type="client_credentials", scope="projects:read"
        )
        assert tokens["token_type"] == "Bearer" and tokens["scope"] == "projects:read"
        me = await oauth.get("http://keyservice.test/me/token")
        assert me.status_code == 200 and me.json()["client_id"] == key["client_id"]
        refreshed = await oauth.refresh_token(
            "http://keyservice.test/token", refresh_token=tokens["refresh_token"]
        )
        assert refreshed["refresh_token"] != tokens["refresh_token"]


async def test_last_used_is_recorded(client, context):
    token = await user_token(context, client, "bob", PERMS)
    key = await create_key(client, token, name="used")
    assert key["last_used_at"] is None
    before = time.time()
    assert (await exchange(client, key["api_key"])).status_code == 200
    listed = (await client.get(f"/api-keys/{key['id']}", headers=bearer(token))).json()
    assert listed["last_used_ip"] == "127.0.0.1"
    from datetime import datetime

    used = datetime.fromisoformat(listed["last_used_at"].replace("Z", "+00:00")).timestamp()
    assert before - 1 <= used <= time.time() + 1


@pytest.mark.postgresql_only  # LISTEN/NOTIFY; SQLite replicas rely on polling (tested)
async def test_revocation_reaches_a_replica_by_notify(client, context):
    token = await user_token(context, client, "carl", PERMS)
    key = await create_key(client, token, name="k")
    tokens = (await exchange(client, key["api_key"])).json()
    # The replica polls only every 5 s: a revocation seen within 1 s came by NOTIFY.
    settings = context.settings.model_copy(update={"revocation_poll_seconds": 5.0})
    replica_context = AppContext(settings)
    replica = create_app(context=replica_context)
    async with replica.router.lifespan_context(replica), client_for(replica) as other:
        await asyncio.sleep(0.5)  # let the LISTEN connection come up
        assert (
            await other.get("/me/token", headers=bearer(tokens["access_token"]))
        ).status_code == 200
        await client.delete(f"/api-keys/{key['id']}", headers=bearer(token))
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            response = await other.get("/me/token", headers=bearer(tokens["access_token"]))
            if response.status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert response.status_code == 401
