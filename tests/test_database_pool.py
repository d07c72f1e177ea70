"""KEYSERVICE_DATABASE_POOL_SIZE bounds the PostgreSQL connections a process opens."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import _asyncpg_dsn
from tests.factories import bearer, create_key, exchange, user_token

POOL = 2
CEILING = 3 * POOL + 1  # SQLAlchemy's pool and its overflow, the token path's, one LISTEN


@pytest.mark.postgresql_only
@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": POOL}])
async def test_a_process_opens_no_more_connections_than_its_pool_size_allows(
    client, context, database_url
):
    # A managed PostgreSQL may allow 25 connections in all; with the pools fixed at 10 a
    # process could open 31, and two replicas of two workers 124 (the default limit is 100).
    root = await user_token(context, client, "root", ["admin", "api_keys:manage"])
    keys = [await create_key(client, root, name=f"k{i}") for i in range(3)]
    watcher = await asyncpg.connect(_asyncpg_dsn(database_url), timeout=5)
    count = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    try:
        before = await watcher.fetchval(count)
        peak = before
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, await watcher.fetchval(count))
                await asyncio.sleep(0.005)

        watching = asyncio.create_task(watch())
        answers = await asyncio.gather(
            *(client.get("/admin/users", headers=bearer(root)) for _ in range(40)),
            *(exchange(client, keys[i % 3]["api_key"]) for i in range(30)),
            *(client.get("/me", headers=bearer(root)) for _ in range(20)),
        )
        stop.set()
        await watching
    finally:
        await watcher.close()
    assert [answer.status_code for answer in answers] == [200] * len(answers)
    assert peak > before  # the load did open connections
    assert peak - before <= CEILING, (before, peak)
