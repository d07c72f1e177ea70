"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL, for real.

PostgreSQL: `KEYSERVICE_TEST_POSTGRES_URL` (default postgresql://postgres@127.0.0.1:5432/test)
names a server where the suite may create and drop its own database. If it cannot be
reached the run fails; set KEYSERVICE_TEST_SKIP_POSTGRES=1 to run SQLite only, knowingly.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from passlib.context import CryptContext
from sqlalchemy import text

from keyservice import migrations
from keyservice.config import Settings
from keyservice.context import AppContext
from keyservice.database import Database
from keyservice.main import create_app
from keyservice.security import hashing

POSTGRES_URL = os.environ.get(
    "KEYSERVICE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SKIP_POSTGRES = os.environ.get("KEYSERVICE_TEST_SKIP_POSTGRES") == "1"
BACKENDS = ["sqlite"] if SKIP_POSTGRES else ["sqlite", "postgresql"]
TABLES = [
    "audit_event",
    "refresh_token",
    "revoked_family",
    "api_key",
    "principal",
    "signing_key",
    "throttle_failure",
    "console_spent",
]
TEST_SECRET = "test-secret-" + "x" * 40


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the other backend's variants of tests about one backend's features (not a skip)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("database_url") if callspec is not None else None
        other = {"sqlite": "postgresql_only", "postgresql": "sqlite_only"}.get(backend or "")
        (dropped if other and item.get_closest_marker(other) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# argon2 as the service configures it (64 MiB, 3 passes) takes ~120 ms a hash here, and
# most tests sign in once or more: about a third of the suite's time went to it. In this
# process, tests hash and verify passwords at a cost of 1 MiB and one pass instead; the
# algorithm, the code paths and the pool they run on are the service's. A test about the
# cost itself (memory, hashes slow enough to be seen running) is marked `real_argon2`;
# servers the tests start as processes always use the real cost.
_CHEAP_PASSWORDS = CryptContext(
    schemes=["argon2"],
    deprecated="auto",
    argon2__memory_cost=1024,
    argon2__rounds=1,
    argon2__parallelism=1,
)
_CHEAP_DUMMY = _CHEAP_PASSWORDS.hash(secrets.token_urlsafe(16))


@pytest.fixture(autouse=True)
def password_hash_cost(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("real_argon2") is None:
        monkeypatch.setattr(hashing, "_PASSWORDS", _CHEAP_PASSWORDS)
        monkeypatch.setattr(hashing, "_DUMMY_PASSWORD_HASH", _CHEAP_DUMMY)


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _pg_admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _unreachable(exc: Exception) -> str:
    return (
        f"PostgreSQL at {POSTGRES_URL} is unreachable ({type(exc).__name__}: {exc}). "
        "The suite runs every storage test on PostgreSQL too; start it "
        "(make services) or set KEYSERVICE_TEST_SKIP_POSTGRES=1 to run SQLite only."
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, in one line, if PostgreSQL is unreachable; checked before any test (and
    before pytest-xdist starts its workers, where an exit would only read as a crash)."""
    if SKIP_POSTGRES or hasattr(session.config, "workerinput"):
        return
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:
        pytest.exit(_unreachable(exc), returncode=3)


def create_postgres_database(prefix: str = "ks_test") -> str:
    """Create a throwaway database; return its SQLAlchemy URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        # Reachable at the start (pytest_sessionstart), gone since: this test fails.
        pytest.fail(_unreachable(exc), pytrace=False)
    base = POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database per backend, shared by the session (tables emptied per test)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "keyservice.db"
        url = f"sqlite+aiosqlite:///{path}"
        migrations.upgrade(url)
        yield url
        return
    url = create_postgres_database()
    try:
        migrations.upgrade(url)
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


def make_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "data_dir": tmp_path,
        "issuer": "http://keyservice.test",
        "revocation_poll_seconds": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


async def truncate(database: Database) -> None:
    # DELETE, in an order the foreign keys allow, on both backends: on PostgreSQL a
    # TRUNCATE of these tables took ~60 ms against ~4 ms (new files for each table and their
    # flush), paid before every storage test there.
    async with database.engine.begin() as connection:
        for table in TABLES:
            await connection.execute(text(f"DELETE FROM {table}"))
        await connection.execute(text("DELETE FROM scope WHERE NOT builtin"))


async def truncate_url(database_url: str) -> None:
    """`truncate` the database at `database_url`, through an engine of its own."""
    database = Database(database_url)
    try:
        await truncate(database)
    finally:
        await database.dispose()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrization) to change settings."""
    return {}


@pytest.fixture
async def context(
    database_url: str, tmp_path: Path, settings_overrides: dict[str, Any]
) -> AsyncIterator[AppContext]:
    settings = make_settings(database_url, tmp_path, **settings_overrides)
    ctx = AppContext(settings)
    await truncate(ctx.database)
    yield ctx
    await ctx.database.dispose()


@pytest.fixture
async def app(context: AppContext) -> AsyncIterator[Any]:
    application = create_app(context=context)
    async with application.router.lifespan_context(application):
        yield application


def client_for(app: Any, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://keyservice.test")


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


def refused_port() -> int:
    """A loopback TCP port nothing listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback TCP port that accepts connections and never answers (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
