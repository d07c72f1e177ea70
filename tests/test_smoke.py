from __future__ import annotations

import pytest

from tests.conftest import client_for
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


@pytest.mark.sqlite_only  # PostgreSQL: the server's synchronous_commit (KEYSERVICE_TOKEN_COMMIT)
async def test_embedded_commits_are_flushed_to_disk_before_they_are_answered(context):
    # synchronous=NORMAL in WAL mode survives a crash of the process but not of the host:
    # a power cut could bring back a revoked key or a spent refresh token.
    from sqlalchemy import text

    async with context.database.sessionmaker() as session:
        modes = [
            (await session.execute(text(f"PRAGMA {name}"))).scalar_one()
            for name in ("journal_mode", "synchronous")
        ]
    assert modes == ["wal", 2]  # 2 = FULL


async def test_startup_heap_is_left_out_of_gc_scans_while_serving_and_released_after(context):
    # A full collection walked every module, model and route object: ~70 ms stalls of the
    # worker under load (the token endpoint's whole p99). Frozen at startup, unfrozen at
    # shutdown so that an app stopped in-process (tests, embedding) leaves nothing pinned.
    import gc

    from keyservice.main import create_app

    assert gc.get_freeze_count() == 0
    application = create_app(context=context)
    async with application.router.lifespan_context(application):
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, frozen  # the imported app, not a handful of objects
        async with client_for(application) as http:
            assert (await http.get("/healthz")).status_code == 200
    assert gc.get_freeze_count() == 0
