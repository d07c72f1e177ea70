"""Database faults answer 503 quickly: never a 500, never invalid_client or invalid_grant."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from keyservice import migrations
from keyservice.auth.throttle import MemoryThrottle
from keyservice.context import AppContext
from keyservice.main import _is_db_outage, create_app
from tests.admin.support import admin_request, admin_token
from tests.conftest import (
    BACKENDS,
    POSTGRES_URL,
    _pg_admin,
    client_for,
    create_postgres_database,
    drop_postgres_database,
    make_settings,
    refused_port,
)
from tests.factories import create_key, login, user_token

# Every way asyncpg and SQLAlchemy have shown a dead or restarting server to us.
OUTAGES: list[BaseException] = [
    ConnectionRefusedError(111, "Connect call failed"),
    OSError("Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 5432)"),
    TimeoutError(),
    socket.gaierror(-2, "Name or service not known"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.InvalidCatalogNameError('database "x" does not exist'),
    asyncpg.exceptions.InvalidPasswordError('password authentication failed for user "ks"'),
    asyncpg.exceptions.InterfaceError("cannot call Connection.fetch(): connection is closed"),
    PoolTimeout("QueuePool limit of size 10 overflow 10 reached"),
    OperationalError("SELECT 1", {}, Exception("database is locked")),
    DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
]


def _wrapped(exc: BaseException) -> BaseException:
    """Wrap as SQLAlchemy does: InterfaceError(orig=adapter error) from the driver error."""
    adapter_error = Exception(str(exc))
    adapter_error.__cause__ = exc
    wrapper = InterfaceError("SELECT 1", {}, adapter_error)
    wrapper.__cause__ = adapter_error
    return wrapper


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__)
def test_outage_errors_are_recognised_bare_and_wrapped(exc):
    assert _is_db_outage(exc)
    assert _is_db_outage(_wrapped(exc))


@pytest.mark.parametrize(
    "exc",
    [
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        FileNotFoundError(2, "No such file"),
        ValueError("bug"),
        asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bugs_are_not_outages(exc):
    assert not _is_db_outage(exc)


TOKEN_REQUESTS = [
    {"grant_type": "client_credentials", "client_id": "kc_" + "A" * 16, "client_secret": "x"},
    {"grant_type": "client_credentials", "api_key": "ksk_" + "A" * 16 + "_" + "B" * 49},
    {"grant_type": "refresh_token", "refresh_token": "ksr_" + "A" * 49},
    {"grant_type": "password", "username": "u", "password": "p"},
]


@pytest.mark.parametrize(
    "kind", ["refused", "hung", "refused-memory-throttle"], ids=lambda kind: kind
)
async def test_unreachable_database_answers_503_fast(kind, tmp_path, silent_port):
    port = silent_port if kind == "hung" else refused_port()
    base = POSTGRES_URL.rsplit("@", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}@127.0.0.1:{port}/nowhere"
    ctx = AppContext(make_settings(url, tmp_path))
    if kind == "refused-memory-throttle":
        # Without the database throttle in front, the first database work is the key
        # lookup, the user lookup, or (for a malformed refresh token) the audit row that
        # refuse() writes: each must surface as 503, not as the refusal it was about to be.
        ctx.throttle = MemoryThrottle(client_limit=10, ip_limit=100, window_seconds=60)
    app = create_app(context=ctx)  # no lifespan: it would need the database
    try:
        async with client_for(app) as http:
            # A hung server costs the connect timeout per request: one request shows it.
            for form in TOKEN_REQUESTS if kind != "hung" else TOKEN_REQUESTS[:1]:
                started = time.monotonic()
                response = await http.post("/token", data=form)
                assert time.monotonic() - started < 8, "must fail fast, not hang"
                assert response.status_code == 503, (form["grant_type"], response.text)
                assert response.json()["error"] == "temporarily_unavailable"
                assert response.headers["retry-after"] == "1"
                assert response.headers["cache-control"] == "no-store"
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await ctx.database.dispose()


@pytest.mark.parametrize("database_url", [b for b in BACKENDS if b == "postgresql"], indirect=True)
async def test_connections_killed_under_the_app_recover_without_errors(client, context):
    """Like a PostgreSQL restart seen from the pool: every server connection dies at once."""
    token = await user_token(context, client, "ruth", ["api_keys:manage"])
    key = await create_key(client, token, name="k")
    first = await client.post(
        "/token", data={"grant_type": "client_credentials", "api_key": key["api_key"]}
    )
    assert first.status_code == 200
    refresh = first.json()["refresh_token"]
    async with context.database.engine.connect() as connection:
        await connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await asyncio.sleep(0.2)
    statuses = []
    for _ in range(5):
        response = await client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
        )
        statuses.append(response.status_code)
        if response.status_code == 200:
            refresh = response.json()["refresh_token"]
        else:
            assert response.status_code == 503, response.text
    assert statuses.count(200) >= 4, statuses  # pre-ping replaced the dead connections
    assert (await client.get("/readyz")).status_code == 200
    assert (await login(client, "ruth"))["access_token"]


METADATA = "/.well-known/oauth-authorization-server"


@pytest.fixture
def doomed_database(database_url) -> Iterator[str]:
    """A migrated PostgreSQL database of the test's own, for it to drop under the app."""
    url = create_postgres_database("ks_doomed")
    try:
        migrations.upgrade(url)
        yield url
    finally:
        drop_postgres_database(url)  # IF EXISTS


async def _drop(url: str) -> None:
    await _pg_admin(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.mark.postgresql_only
async def test_a_dropped_database_is_an_outage_and_discovery_keeps_answering(
    doomed_database, tmp_path, caplog
):
    ctx = AppContext(make_settings(doomed_database, tmp_path))
    app = create_app(context=ctx)
    try:
        async with app.router.lifespan_context(app), client_for(app) as http:
            admin = await admin_token(ctx, http)
            await admin_request(http, admin, "POST", "/admin/scopes", 201, json={"name": "b:w"})
            before = (await http.get(METADATA)).json()
            assert "b:w" in before["scopes_supported"]
            await _drop(doomed_database)
            caplog.set_level(logging.WARNING, logger="keyservice")
            # The first request may meet a pooled connection the drop closed; the later
            # ones connect afresh and hear "database does not exist" (3D000).
            for form in TOKEN_REQUESTS:
                response = await http.post("/token", data=form)
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "temporarily_unavailable"
            await asyncio.sleep(0.3)  # the copy is stale (TTL 0.2 s): its reload fails
            for _ in range(2):
                response = await http.get(METADATA)
                assert response.status_code == 200, response.text
                assert response.json() == before
            assert (await http.get("/.well-known/jwks.json")).status_code == 200
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        await ctx.database.dispose()


@pytest.mark.postgresql_only
async def test_metadata_without_a_copy_answers_503_while_the_database_is_gone(
    doomed_database, tmp_path
):
    await _drop(doomed_database)
    ctx = AppContext(make_settings(doomed_database, tmp_path))
    app = create_app(context=ctx)  # no lifespan: it would need the database
    try:
        async with client_for(app) as http:
            response = await http.get(METADATA)
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "service_unavailable"
            assert response.headers["retry-after"] == "1"
    finally:
        await ctx.database.dispose()
