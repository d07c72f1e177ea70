"""KEYSERVICE_DATABASE_POOL_SIZE bounds the PostgreSQL connections a process opens."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import pytest
from sqlalchemy import make_url

from keyservice.database import Database
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


class _Forwarder:
    """A loopback TCP relay to the test PostgreSQL that can be cut, as a restart would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.links += [writer, upstream]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer))

    async def cut(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for link in self.links:
            link.transport.abort()


@pytest.mark.postgresql_only
async def test_a_token_path_pool_that_cannot_reconnect_logs_one_line_not_a_trace(
    database_url,
):
    # asyncpg (0.32) logs each failed attempt to restore its pool's floor with the
    # exception's traceback: during a database outage the server's log filled with
    # thirty-line traces, one a second, among the service's one-line warnings.
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    pool_log = logging.getLogger("asyncpg.pool")
    pool_log.addHandler(handler)
    url = make_url(database_url)
    forwarder = _Forwarder(url.port or 5432)
    port = await forwarder.start()
    database = Database(url.set(port=port).render_as_string(hide_password=False))
    try:
        pool = await database.raw_pool()
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT 1") == 1
        await forwarder.cut()
        for _ in range(100):
            if records:
                break
            await asyncio.sleep(0.05)
    finally:
        pool_log.removeHandler(handler)
        await database.dispose()
    assert records, "asyncpg never tried to restore its pool"
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    for record in records:
        line = formatter.format(record)
        assert "\n" not in line and "Traceback" not in line, line
        assert line.startswith("WARNING asyncpg.pool: "), line
        assert line.endswith("; retrying (ConnectionRefusedError)"), line
