"""A shortened KEYSERVICE_ACCESS_TOKEN_TTL shortens the life of tokens already issued."""

from __future__ import annotations

import time
from datetime import timedelta

from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.main import create_app
from tests.admin.support import admin_token
from tests.conftest import client_for
from tests.factories import bearer, create_key, exchange, set_key, user_token

PERMS = ["api_keys:manage"]


def _issued_ago(context: AppContext, access_token: str, seconds: int) -> str:
    """The same token as if the service had issued it `seconds` ago (under its TTL then)."""
    claims = context.keyring.verify(access_token)
    kept = {k: claims[k] for k in ("sub", "scope", "principal_type", "sid", "client_id")}
    token, _exp = context.keyring.issue(kept, now=int(time.time()) - seconds)
    return token


async def test_a_revoked_token_stays_refused_after_the_ttl_is_shortened(client, context):
    # Issued under a 2-hour TTL; the operator then restarts with 5 minutes. The revocation
    # view keeps revocations for the current TTL (+60 s) only, so it no longer knows that
    # this token's key was revoked 15 minutes ago, while the token's `exp` is an hour away.
    assert context.settings.access_token_ttl == 7200
    user = await user_token(context, client, "tess", PERMS)
    revoked_key = await create_key(client, user, name="revoked")
    live_key = await create_key(client, user, name="live")
    revoked = (await exchange(client, revoked_key["api_key"])).json()["access_token"]
    live = (await exchange(client, live_key["api_key"])).json()["access_token"]
    old_revoked = _issued_ago(context, revoked, 1000)
    old_live = _issued_ago(context, live, 400)
    recent_live = _issued_ago(context, live, 100)
    assert (await client.get("/me", headers=bearer(old_revoked))).status_code == 200
    assert (
        await client.delete(f"/api-keys/{revoked_key['id']}", headers=bearer(user))
    ).status_code == 204
    assert (await client.get("/me", headers=bearer(old_revoked))).status_code == 401
    await set_key(context, revoked_key["id"], revoked_at=utcnow() - timedelta(seconds=900))

    shorter = context.settings.model_copy(update={"access_token_ttl": 300})
    restarted = AppContext(shorter)
    app = create_app(context=restarted)
    async with app.router.lifespan_context(app), client_for(app) as http:
        assert revoked_key["client_id"] not in restarted.revocation.revoked_clients
        admin = await admin_token(restarted, http)
        for token, status in ((old_revoked, 401), (old_live, 401), (recent_live, 200)):
            me = await http.get("/me", headers=bearer(token))
            assert me.status_code == status, me.text
            if status == 401:
                assert me.json()["error"] == "invalid_token"
                assert "expired" in me.json()["error_description"]
            found = await http.post("/introspect", data={"token": token}, headers=bearer(admin))
            assert found.json()["active"] is (status == 200), found.text


async def test_introspection_reports_when_a_shortened_ttl_ends_the_token(client, context):
    # RFC 7662 `exp`: a resource server may cache an active answer until then. Reported as
    # the token's own `exp` (2 hours), it outlived the service's refusal at iat + 5 minutes.
    user = await user_token(context, client, "ivy", PERMS)
    key = await create_key(client, user, name="k")
    token = _issued_ago(
        context, (await exchange(client, key["api_key"])).json()["access_token"], 100
    )
    iat = context.keyring.verify(token)["iat"]

    shorter = context.settings.model_copy(update={"access_token_ttl": 300})
    restarted = AppContext(shorter)
    app = create_app(context=restarted)
    async with app.router.lifespan_context(app), client_for(app) as http:
        admin = await admin_token(restarted, http)
        found = (
            await http.post("/introspect", data={"token": token}, headers=bearer(admin))
        ).json()
        assert found["active"] is True and found["iat"] == iat
        assert found["exp"] == iat + 300
        # A token issued under the current TTL reports its own `exp`, as before.
        own = (await http.post("/introspect", data={"token": admin}, headers=bearer(admin))).json()
        assert own["exp"] == restarted.keyring.verify(admin)["exp"]
